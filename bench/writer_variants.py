"""The workers' writer and its alternatives, alternated round by round on one connection (issue 15).

(Over 300 lines on purpose: the losing writers are kept here whole, beside the harness that
compares them, so that none of them lives in the product.)

    .venv/bin/python -m bench.writer_variants --sizes 100,500 --rounds 5
    .venv/bin/python -m bench.writer_variants --variants python-rows,jsonb,jsonb-pglz --rounds 3

Every variant writes the same fresh `bench.gen` pushes, decoded as a worker receives them
(bench/writer.py's batches), in one process, on one connection, to tables emptied
(TRUNCATE: fresh files) before each variant's round; the variants take turns within each
round, so drift on a shared machine spreads over all of them. Per variant and size it
prints medians over the rounds of rows/s, the client's CPU per row (this process), the
Postgres backend's CPU per row (/proc/<pg_backend_pid()>/stat: this connection's
server process, the whole server-side cost of the write) and WAL bytes per row
(pg_stat_wal, flushed after each round; the bench's own database is the only writer).
It runs on a database of its own, created on the server of --pg-admin-url and dropped
after. Writer variants:

  python-rows  the writer before issue 15: every record decoded to a Struct in one typed
               pass, split into rounds and sorted by key in Python, sent as one binary array
               per column to INSERT ... SELECT FROM unnest(...) (the same merge rules)
  jsonb        the product (workers.jobs.write_batch): each type's array sliced from the
               body, parsed by Postgres with jsonb_to_recordset, all the types in one statement
  jsonb-per-type  the product before 2026-12-07: one statement per type, pipelined, in
               psycopg's conn.transaction() (the json and jsonb-* variants below that change
               statements are this one with theirs)
  jsonb-one-statement  the one statement for all types, in conn.transaction()
  copy-binary  every record decoded to its Struct (one typed pass), sent by COPY in binary
               format (psycopg's C row formatting) into a temporary table per type, merged
               from there by the product's one statement: Postgres parses no JSON but the
               Structs' (raw_source_ref, skill_actions)
  jsonb-split-query  the product before 2026-12-08: its statement with psycopg's `%s`
               placeholders, which psycopg splits at every run (the product's has `$n`)
  json         the same with json_to_recordset over a json parameter
  typed-json   the Structs of python-rows re-encoded by msgspec into one JSON array per type
               (what the product does for records checked one by one)
  jsonb-waits  the product without psycopg's pipeline mode: 5 waits for the server per
               batch (BEGIN, claim, the types, push row, COMMIT), not 3
  jsonb-rebuild-structs  every Struct's JSON (raw_source_ref, skill_actions) rebuilt key by
               key by a subquery, as before 2026-12-07, not kept as sent when it has only the
               Struct's keys and no null
  jsonb-as-sent  the product without the SQL that stores a Struct's JSON as msgspec encodes
               it (raw_source_ref, skill_actions kept as sent): what that normalizing costs

and Postgres-side choices (issue 15 item 2), each on the product writer:

  jsonb-pglz       TOAST compression pglz (Postgres's default) on the long text columns,
                   not the lz4 of migration 0006
  jsonb-ff90       fillfactor 90 on sessions (re-pushes update them: room for HOT updates)
  jsonb-session-indexes  with the (workspace_id, session_id) indexes of prompts and skill
                   invocations that no endpoint reads (dropped by migration 0008)
  jsonb-noround    the product's statement without the rounds' row_number() window: what the
                   window costs Postgres (valid only for a batch whose keys never repeat; the
                   api would have to say so in the queued batch)
  jsonb-donothing  immutable types: INSERT ... ON CONFLICT DO NOTHING, then fill nulls of
                   the conflicting rows with an UPDATE; locks no row a re-push leaves alone.
                   NOT safe as is: a copy inserted concurrently by another worker is not seen
                   by the UPDATE (its snapshot), so its nulls are not filled: a measure only.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import msgspec
import psycopg
from psycopg import sql
from psycopg.adapt import PyFormat
from psycopg.types.json import Json, Jsonb

import workers.tables
from bench import procstat
from bench.gen import WORKSPACES, make_templates
from bench.writer import _Batches
from schema.batches import QueuedBatch
from schema.records import RECORD_TYPES
from schema.validation import decode_valid_records
from store.migrate import migrate
from workers import db, writer
from workers.jobs import write_batch
from workers.tables import TABLES, UPSERTS, Table, as_utc, json_upsert, merge_of
from workers.writer import claim_push, finish_push

WARMUP_BATCHES = 8  # psycopg prepares a statement after 5 executions
# As migration 0001 made them; 0008 dropped them (no read uses them).
UNREAD_INDEXES = {
    "prompts_session": "CREATE INDEX prompts_session ON prompts (workspace_id, session_id)",
    "skill_invocations_session": "CREATE INDEX skill_invocations_session ON skill_invocations (workspace_id, session_id)",
}
RECORD_TABLES = ", ".join(TABLES)


# -- python-rows: the writer before issue 15 ------------------------------------------------------


def _cell(value: Any, sql_type: str) -> Any:
    if value is None:
        return None
    if sql_type == "jsonb":
        return Jsonb(value)
    return as_utc(value) if sql_type == "timestamptz" else value


def _unnest_upsert(table: Table) -> bytes:
    """The table's upsert over one binary array per column (workspace id, then the arrays)."""
    merge = merge_of(table)
    args = sql.SQL(", ").join(
        sql.SQL("{}::{}[]").format(sql.Placeholder(format=PyFormat.BINARY), sql.SQL(c.sql_type)) for c in table.columns
    )
    return (
        sql.SQL(
            "INSERT INTO {table} AS t ({cols}) SELECT {select} FROM unnest({args}) AS u({names})"
            " ON CONFLICT ({target}) DO UPDATE SET {sets} WHERE {where}"
        )
        .format(
            table=sql.Identifier(table.name),
            cols=merge.insert_cols,
            select=merge.select,
            args=args,
            names=sql.SQL(", ").join(sql.Identifier(c.name) for c in table.columns),
            target=merge.target,
            sets=merge.sets,
            where=merge.where,
        )
        .as_bytes(None)
    )


_UNNEST = {name: _unnest_upsert(t) for name, t in TABLES.items()}


def _rounds(table: Table, records: Sequence[Any]) -> list[list[Any]]:
    """The k-th copy of a key in round k; each round sorted by key."""
    seen: dict[tuple[Any, ...], int] = {}
    rounds: list[list[tuple[tuple[Any, ...], Any]]] = [[]]
    for record in records:
        key = table.key_of(record)
        n = seen.get(key, 0)
        seen[key] = n + 1
        if n == len(rounds):
            rounds.append([])
        rounds[n].append((key, record))
    return [[r for _, r in sorted(one, key=lambda pair: pair[0])] for one in rounds]


def _write_typed(conn: psycopg.Connection, batch: QueuedBatch, write_type: Callable[..., None]) -> int:
    """A wholly valid batch decoded in one typed pass, each type written by `write_type`, in one transaction."""
    assert batch.body is not None
    accepted: dict[str, int] = {}
    started = time.perf_counter()
    with conn.transaction():
        if claim_push(conn, batch):
            return 0
        typed = decode_valid_records(batch.body)
        assert typed is not None
        for record_type, records in typed.items():
            if records:
                write_type(conn, batch.workspace_id, record_type, records)
                accepted[record_type] = len(records)
        finish_push(conn, batch.workspace_id, batch.push_id, accepted, {}, (time.perf_counter() - started) * 1000)
    return sum(accepted.values())


def _python_rows(conn: psycopg.Connection, ws: str, record_type: str, records: list[Any]) -> None:
    table = TABLES[record_type]
    with conn.cursor() as cur:
        for one in _rounds(table, records):
            arrays = [[_cell(getattr(r, c.name), c.sql_type) for r in one] for c in table.columns]
            cur.execute(_UNNEST[record_type], [ws, *arrays])


def _typed_json(conn: psycopg.Connection, ws: str, record_type: str, records: list[Any]) -> None:
    writer.upsert(conn, ws, record_type, writer._ENCODER.encode(records))


# -- jsonb-per-type --------------------------------------------------------------------------------------


def _upsert_each_type(conn: psycopg.Connection, workspace_id: str, arrays: dict[str, bytes]) -> dict[str, int]:
    """The product's upsert_all before 2026-12-07: one statement per type, all sent before any result is read."""
    sent = []
    for record_type, array in arrays.items():
        rows = writer.Jsonb(array, lambda data: data)
        cur = conn.cursor()
        cur.execute(writer.UPSERTS[record_type], (rows, workspace_id, 1))
        sent.append((record_type, rows, cur))
    counts: dict[str, int] = {}
    for record_type, rows, cur in sent:
        with cur:
            found = cur.fetchone()
            assert found is not None
            rounds, counts[record_type] = found[0], int(found[1])
            for n in range(2, (rounds or 0) + 1):
                cur.execute(writer.UPSERTS[record_type], (rows, workspace_id, n))
    return counts


@contextlib.contextmanager
def _transaction_before(conn: psycopg.Connection, careful: bool) -> Iterator[None]:
    """workers.jobs.batch_transaction before 2026-12-07: pipeline mode, and psycopg's conn.transaction()."""
    with contextlib.nullcontext() if careful else conn.pipeline(), conn.transaction():
        yield


def _per_type(conn: psycopg.Connection, batch: QueuedBatch) -> int:
    import workers.jobs

    with (
        _patched(workers.jobs, "upsert_all", _upsert_each_type),
        _patched(workers.jobs, "batch_transaction", _transaction_before),
    ):
        return _product(conn, batch)


def _one_statement(conn: psycopg.Connection, batch: QueuedBatch) -> int:
    """The product's one statement for all types, in the transaction before 2026-12-07."""
    import workers.jobs

    with _patched(workers.jobs, "batch_transaction", _transaction_before):
        return _product(conn, batch)


# -- jsonb-split-query ---------------------------------------------------------------------------


@functools.cache
def _percent_statement(types: tuple[str, ...]) -> bytes:
    """upsert_together's statement with psycopg's `%s` placeholders, as before 2026-12-08."""
    return json_upsert([TABLES[t] for t in types])


def _split_query(conn: psycopg.Connection, batch: QueuedBatch) -> int:
    # The product's upsert_all on psycopg's own cursor, which splits the query on `%s`.
    with _patched(writer, "upsert_together", _percent_statement), _patched(psycopg, "RawCursor", psycopg.Cursor):
        return _product(conn, batch)


# -- copy-binary ----------------------------------------------------------------------------------


def _copy_table(record_type: str) -> str:
    return f"copy_{record_type}"


def _copy_source(table: Table, statement: bytes) -> bytes:
    """A table's upsert (its CTEs) with rows from the type's temporary table, not from a JSON parameter.

    Postgres parses nothing: COPY's binary format carries each value as its type's
    own binary form. Structs' JSON (raw_source_ref, skill_actions) travels as text
    in a text column, cast here (small values; the rest of the record is not JSON).
    """
    exprs = ", ".join(
        f'"{c.name}"::jsonb AS "{c.name}"' if c.sql_type == "jsonb" else f'"{c.name}"' for c in table.columns
    )
    source = f"(SELECT {exprs}, n FROM {_copy_table(table.record_type)}) AS r".encode()
    replaced, count = re.subn(
        rb"ROWS FROM \(jsonb_to_recordset\(%t::jsonb\) AS \([^()]*\)\) WITH ORDINALITY AS r \([^()]*\)",
        lambda _: source,
        statement,
    )
    assert count == 1, count
    return replaced


@functools.cache
def _copy_statement(types: tuple[str, ...]) -> bytes:
    """upsert_together's one statement for these types, each reading its temporary table (parameters: ws, round)."""
    return workers.tables.statement_of(
        [_copy_source(TABLES[t], workers.tables.cte_bytes(t, n)) for n, t in enumerate(types)]
    )


_COPY_SQL_TYPES = {"jsonb": "text"}  # a Struct's JSON goes as text, cast by the merge (see _copy_source)
_COPY_READY: set[int] = set()


def _copy_tables(conn: psycopg.Connection) -> None:
    """This connection's temporary tables, one per type, emptied at every commit."""
    if id(conn) in _COPY_READY:
        return
    for t in TABLES.values():
        cols = ", ".join(f'"{c.name}" {_COPY_SQL_TYPES.get(c.sql_type, c.sql_type)}' for c in t.columns)
        conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {_copy_table(t.record_type)} ({cols}, n bigint) ON COMMIT DELETE ROWS"
        )
    _COPY_READY.add(id(conn))


_JSON_ENCODE = msgspec.json.Encoder().encode


def _copy_binary(conn: psycopg.Connection, batch: QueuedBatch) -> int:
    """Each record decoded to its Struct (one typed pass), sent by binary COPY, merged by one statement."""
    assert batch.body is not None
    _copy_tables(conn)
    started = time.perf_counter()
    accepted: dict[str, int] = {}
    with conn.transaction():
        if claim_push(conn, batch):
            return 0
        typed = decode_valid_records(batch.body)
        assert typed is not None
        types = tuple(t for t in RECORD_TYPES if typed.get(t))
        with conn.cursor() as cur:
            for record_type in types:
                table = TABLES[record_type]
                names = ", ".join(f'"{c.name}"' for c in table.columns)
                as_json = [i for i, c in enumerate(table.columns) if c.sql_type == "jsonb"]
                with cur.copy(f"COPY {_copy_table(record_type)} ({names}, n) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types([_COPY_SQL_TYPES.get(c.sql_type, c.sql_type) for c in table.columns] + ["bigint"])
                    for n, record in enumerate(typed[record_type], 1):
                        row = list(msgspec.structs.astuple(record))
                        for i in as_json:
                            if row[i] is not None:
                                row[i] = _JSON_ENCODE(row[i]).decode()
                        row.append(n)
                        copy.write_row(row)
            params: list[Any] = []
            for _ in reversed(types):
                params += (batch.workspace_id, 1)
            found = cur.execute(_copy_statement(types), params, prepare=True).fetchone()
            assert found is not None
            for i, record_type in enumerate(types):
                rounds, accepted[record_type] = found[2 * i], int(found[2 * i + 1])
                for k in range(2, (rounds or 0) + 1):
                    cur.execute(_copy_statement((record_type,)), (batch.workspace_id, k))
        finish_push(conn, batch.workspace_id, batch.push_id, accepted, {}, (time.perf_counter() - started) * 1000)
    return sum(accepted.values())


# -- jsonb-donothing ---------------------------------------------------------------------------------


def _do_nothing_upsert(table: Table) -> bytes:
    """Immutable types: insert what is new, then fill the nulls of rows that were there (see the module doc).

    Parameters: rows, workspace, round, as json_upsert's (the UPDATE reads the last two as $2 and $3).
    """
    product = json_upsert(table).decode()
    if table.merge != "immutable":
        return product.encode()
    merge = merge_of(table)
    updatable = [c.name for c in table.columns if c.name not in table.key]
    fills = sql.SQL(", ").join(sql.SQL("{c} = coalesce(t.{c}, u.{c})").format(c=sql.Identifier(n)) for n in updatable)
    needs = sql.SQL(" OR ").join(
        sql.SQL("(t.{c} IS NULL AND u.{c} IS NOT NULL)").format(c=sql.Identifier(n)) for n in updatable
    )
    # The unique key's columns (prompt_key for execution_facts' null prompt), so the join uses its index.
    same_key = sql.SQL(" AND ").join(
        sql.SQL("t.{c} = u.{k}").format(c=sql.Identifier(c), k=sql.Identifier(k))
        if c == k
        else sql.SQL("t.{c} = coalesce(u.{k}, '')").format(c=sql.Identifier(c), k=sql.Identifier(k))
        for c, k in zip(table.conflict_target, table.key, strict=True)
    )
    tail = sql.SQL(
        " ON CONFLICT ({target}) DO NOTHING), filled AS (UPDATE {table} AS t SET {fills} FROM u0 AS u"
        " WHERE t.workspace_id = $2 AND u.copy = $3 AND {same_key} AND ({needs}))"
        " SELECT max(copy), count(*) FROM u0"
    ).format(target=merge.target, table=sql.Identifier(table.name), fills=fills, same_key=same_key, needs=needs)
    return (product[: product.index(" ON CONFLICT")] + tail.as_string(None)).encode()


_DO_NOTHING = {name: _do_nothing_upsert(t) for name, t in TABLES.items()}


@contextlib.contextmanager
def _patched(module: Any, name: str, value: Any) -> Iterator[None]:
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, saved)


# -- the variants ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    name: str
    write: Callable[[psycopg.Connection, QueuedBatch], int]
    setup: tuple[str, ...] = ()  # DDL run on the emptied tables before the round
    teardown: tuple[str, ...] = ()  # ... and after it


def _product(conn: psycopg.Connection, batch: QueuedBatch) -> int:
    summary = write_batch(conn, batch)
    return sum(summary.get("accepted", {}).values())


def _with_statements(
    statements: dict[str, bytes], wrapper: type[Json] | type[Jsonb] = Json
) -> Callable[[psycopg.Connection, QueuedBatch], int]:
    def write(conn: psycopg.Connection, batch: QueuedBatch) -> int:
        # For json_to_recordset, a json parameter, not jsonb (which Postgres would parse into jsonb first).
        # A statement per type, as before 2026-12-07: compare these with jsonb-per-type.
        with _patched(writer, "UPSERTS", {**UPSERTS, **statements}), _patched(writer, "Jsonb", wrapper):
            return _per_type(conn, batch)

    return write


def _waits(conn: psycopg.Connection, batch: QueuedBatch) -> int:
    """The product without psycopg's pipeline mode: each statement waits for its answer."""
    import workers.jobs

    with _patched(workers.jobs, "batch_transaction", lambda conn, _careful: conn.transaction()):
        return _product(conn, batch)


def _as_sent(table: Table) -> Table:
    """The table with its Structs' JSON stored as sent (unknown keys and nulls kept): what normalizing costs."""
    return replace(table, columns=tuple(replace(c, struct_fields=(), struct_list=False) for c in table.columns))


def _rebuilding_structs() -> dict[str, bytes]:
    """The upserts before 2026-12-07: every Struct's JSON rebuilt key by key, none stored as sent."""

    def always_rebuilt(value: sql.Composable, fields: tuple[str, ...]) -> sql.Composable:
        return sql.SQL("CASE WHEN {v} IS NULL THEN NULL ELSE {rebuilt} END").format(
            v=value, rebuilt=workers.tables.rebuilt_json(value, fields)
        )

    with _patched(workers.tables, "_stored_json", always_rebuilt):
        return {n: json_upsert(t) for n, t in TABLES.items()}


def _without_rounds(statement: bytes) -> bytes:
    """The upsert with every record in round 1 (no window over the key): a key repeated in the batch then fails."""
    cut = re.sub(rb"row_number\(\) OVER \(PARTITION BY .*? ORDER BY r\.n\) AS copy", b"1 AS copy", statement)
    assert cut != statement, "the upsert's shape changed: update _without_rounds"
    return cut


def _compression(conn: psycopg.Connection) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """pglz for the columns migration 0006 gave lz4, and back."""
    rows = conn.execute(
        "SELECT attrelid::regclass::text, attname FROM pg_attribute WHERE attcompression = 'l' AND attnum > 0"
    ).fetchall()
    return tuple(f"ALTER TABLE {t} ALTER COLUMN {c} SET COMPRESSION pglz" for t, c in rows), tuple(
        f"ALTER TABLE {t} ALTER COLUMN {c} SET COMPRESSION lz4" for t, c in rows
    )


def _index_ddl() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """CREATE (before the variant) and DROP (after) statements for UNREAD_INDEXES."""
    return tuple(UNREAD_INDEXES.values()), tuple(f"DROP INDEX {name}" for name in UNREAD_INDEXES)


def variants(conn: psycopg.Connection) -> dict[str, Variant]:
    create, drop = _index_ddl()
    pglz, lz4 = _compression(conn)
    json_statements = {n: json_upsert(t, "json_to_recordset", "json") for n, t in TABLES.items()}
    as_sent = {n: json_upsert(_as_sent(t)) for n, t in TABLES.items()}
    no_round = {n: _without_rounds(UPSERTS[n]) for n in TABLES}
    return {
        v.name: v
        for v in (
            Variant("python-rows", lambda c, b: _write_typed(c, b, _python_rows)),
            Variant("jsonb", _product),
            Variant("jsonb-per-type", _per_type),
            Variant("jsonb-one-statement", _one_statement),
            Variant("jsonb-split-query", _split_query),
            Variant("copy-binary", _copy_binary),
            Variant("json", _with_statements(json_statements)),
            Variant("jsonb-noround", _with_statements(no_round, Jsonb)),
            Variant("typed-json", lambda c, b: _write_typed(c, b, _typed_json)),
            Variant("jsonb-as-sent", _with_statements(as_sent, Jsonb)),
            Variant("jsonb-rebuild-structs", _with_statements(_rebuilding_structs(), Jsonb)),
            Variant("jsonb-waits", _waits),
            Variant("jsonb-pglz", _product, pglz, lz4),
            Variant(
                "jsonb-ff90",
                _product,
                ("ALTER TABLE sessions SET (fillfactor = 90)",),
                ("ALTER TABLE sessions RESET (fillfactor)",),
            ),
            Variant("jsonb-session-indexes", _product, create, drop),
            Variant("jsonb-donothing", _with_statements(_DO_NOTHING, Jsonb)),
        )
    }


# -- measuring ------------------------------------------------------------------------------------------


def _wal_bytes(conn: psycopg.Connection) -> int:
    """pg_stat_wal's bytes, this backend's own pending counts flushed first."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT 1")  # the flush happens as the backend goes idle after a statement
    row = conn.execute("SELECT wal_bytes FROM pg_stat_wal").fetchone()
    assert row is not None
    return int(row[0])


def one_round(conn: psycopg.Connection, backend: int, variant: Variant, batches: list[QueuedBatch]) -> dict[str, float]:
    """Write the batches with one variant on emptied tables; rows/s and costs per row."""
    conn.execute(f"TRUNCATE {RECORD_TABLES}, pushes, quarantine")
    for ddl in variant.setup:
        conn.execute(ddl)
    try:
        for batch in batches[:WARMUP_BATCHES]:  # psycopg prepares its statements
            variant.write(conn, batch)
        timed = batches[WARMUP_BATCHES:]
        wal0, server0, client0, t0 = (
            _wal_bytes(conn),
            procstat.cpu_seconds(backend, False),
            time.process_time(),
            time.perf_counter(),
        )
        rows = sum(variant.write(conn, batch) for batch in timed)
        seconds, client, server = (
            time.perf_counter() - t0,
            time.process_time() - client0,
            procstat.cpu_seconds(backend, False) - server0,
        )
        wal = _wal_bytes(conn) - wal0
    finally:
        for ddl in variant.teardown:
            conn.execute(ddl)
    return {
        "rows_per_s": rows / seconds,
        "client_us_per_row": client / rows * 1e6,
        "postgres_us_per_row": server / rows * 1e6,
        "wal_bytes_per_row": wal / rows,
    }


def batches_for(size: int, records: int, phase: int) -> list[QueuedBatch]:
    """Fresh pushes as a worker receives them: `records` of them timed, after WARMUP_BATCHES more."""
    source = _Batches(make_templates(size), [f"ws_{i}" for i in range(WORKSPACES)])
    return [source.get(phase, n) for n in range(WARMUP_BATCHES + max(1, records // size))]


@contextlib.contextmanager
def scratch_database(admin_url: str) -> Iterator[str]:
    """A migrated database of its own on the admin URL's server, dropped after."""
    name = f"writer_variants_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = psycopg.conninfo.make_conninfo(admin_url, dbname=name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            migrate(conn)
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--pg-admin-url",
        default=os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="a server on this machine (its backend's CPU is read from /proc)",
    )
    p.add_argument("--sizes", default="100,500", help="records per push")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--records", type=int, default=20_000, help="records timed per variant and round")
    p.add_argument(
        "--variants",
        default="python-rows,jsonb,jsonb-waits,json,typed-json,jsonb-as-sent,jsonb-pglz,jsonb-ff90,jsonb-session-indexes,jsonb-donothing",
    )
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    with scratch_database(args.pg_admin_url) as url:
        conn = db.connect(url)
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        backend = int(row[0])
        chosen = [variants(conn)[name] for name in args.variants.split(",")]
        results: dict[tuple[int, str], list[dict[str, float]]] = {}
        for size in sizes:
            for r in range(args.rounds):
                for i, variant in enumerate(chosen):
                    # Fresh records for every variant and round (phases never share tokens).
                    batches = batches_for(size, args.records, phase=(r * len(chosen) + i) % 250)
                    results.setdefault((size, variant.name), []).append(one_round(conn, backend, variant, batches))
                print(f"size {size}: round {r + 1}/{args.rounds} done", file=sys.stderr)
        conn.close()
    print(f"{'size':>5} {'variant':<16} {'rows/s':>9} {'client us/row':>14} {'postgres us/row':>16} {'WAL B/row':>10}")
    for (size, name), rounds in results.items():
        med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        print(
            f"{size:>5} {name:<16} {med['rows_per_s']:>9.0f} {med['client_us_per_row']:>14.1f}"
            f" {med['postgres_us_per_row']:>16.1f} {med['wal_bytes_per_row']:>10.0f}"
        )
    print(f"medians of {args.rounds} rounds, {args.records} records per variant and round")
    return 0


if __name__ == "__main__":
    sys.exit(main())
