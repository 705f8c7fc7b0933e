"""Where each record type is written, and how a re-push merges (SPEC 4).

Table-driven: one `Table` per record type, its columns derived from the
record's Struct (so the Struct stays the single source of truth), its key, and
its merge rule. The statements are built once, at import, with
`sql.Identifier` for every name.

Merge rules:
- "immutable": first write wins, a later copy only fills values still null.
- "session": field by field, the value from the version with the later
  `normalized_at` wins; null never overwrites (per-field versions are kept in
  `field_versions`, so the result does not depend on arrival order).
- "signal": as immutable, plus monotonic consumption: consumed = stored OR
  incoming; consumed_at and consumed_by_run come from the earliest consumption
  (store/consumption.py, shared with the consume endpoint).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from msgspec import inspect
from psycopg import sql
from psycopg.adapt import PyFormat

from schema.records import RECORD_TYPES
from store.consumption import is_earlier, keep_earliest
from store.partitions import PARTITION_COLUMNS

_SCALAR_SQL_TYPES = {
    inspect.StrType: "text",
    inspect.LiteralType: "text",
    inspect.DateTimeType: "timestamptz",
    inspect.BoolType: "boolean",
    inspect.IntType: "bigint",
    inspect.FloatType: "double precision",
}


def sql_type(info: inspect.Type) -> str:
    """The column type for a Struct field's type: scalars map directly, the rest is jsonb."""
    if isinstance(info, inspect.Metadata):  # Annotated[...] with constraints or schema extras
        return sql_type(info.type)
    if isinstance(info, inspect.UnionType):
        members = [t for t in info.types if not isinstance(t, inspect.NoneType)]
        if len(members) == 1:
            return sql_type(members[0])
        return "jsonb"
    return _SCALAR_SQL_TYPES.get(type(info), "jsonb")


@dataclass(frozen=True)
class Column:
    name: str
    sql_type: str
    # A jsonb column holding a Struct (raw_source_ref) or a list of them (skill_actions): the
    # Struct's fields, and whether it is a list. Stored as msgspec encodes the Struct: its own
    # fields only, nulls omitted (see _stored_json).
    struct_fields: tuple[str, ...] = ()
    struct_list: bool = False


def _struct_shape(info: inspect.Type) -> tuple[tuple[str, ...], bool]:
    """(fields, is_list) for a field typed as a Struct or a list of Structs (optional or not), else ((), False)."""
    if isinstance(info, inspect.Metadata):
        return _struct_shape(info.type)
    if isinstance(info, inspect.UnionType):
        members = [t for t in info.types if not isinstance(t, inspect.NoneType)]
        return _struct_shape(members[0]) if len(members) == 1 else ((), False)
    if isinstance(info, inspect.StructType):
        return tuple(f.encode_name for f in info.fields), False
    if isinstance(info, inspect.ListType) and isinstance(info.item_type, inspect.StructType):
        return tuple(f.encode_name for f in info.item_type.fields), True
    return (), False


@dataclass(frozen=True)
class Table:
    """One record type's table: its columns (Struct order), key and merge rule."""

    record_type: str
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]  # unique per workspace, besides workspace_id
    conflict_target: tuple[str, ...]  # the columns of the unique constraint after workspace_id
    merge: str  # "immutable" | "session" | "signal"

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def key_of(self, record: Any) -> tuple[Any, ...]:
        """The record's key, as Postgres will compare it (timestamps by instant, null prompt as '')."""
        values = []
        for name in self.key:
            value = getattr(record, name)
            if isinstance(value, datetime):
                value = as_utc(value)
            elif value is None:
                value = ""
            values.append(value)
        return tuple(values)


def as_utc(value: datetime) -> datetime:
    """A naive timestamp is read as UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _table(record_type: str, key: tuple[str, ...], merge: str = "immutable", conflict: tuple[str, ...] = ()) -> Table:
    info = inspect.type_info(RECORD_TYPES[record_type])
    assert isinstance(info, inspect.StructType)
    columns = tuple(Column(f.name, sql_type(f.type), *_struct_shape(f.type)) for f in info.fields)
    conflict = conflict or key
    # A table partitioned by time has its time in every unique key (store/partitions.py): the
    # same record re-pushed carries the same time, so it is still one row however old it is.
    time_column = PARTITION_COLUMNS.get(record_type)
    if time_column is not None and time_column not in key:
        key, conflict = (*key, time_column), (*conflict, time_column)
    return Table(record_type, record_type, columns, key, conflict, merge)


TABLES: dict[str, Table] = {
    t.record_type: t
    for t in (
        _table("sessions", ("session_id",), merge="session"),
        _table("prompts", ("prompt_id",)),
        _table("skill_invocations", ("skill_invocation_id",)),
        # prompt_key is a generated column: coalesce(prompt_id, '').
        _table(
            "execution_facts",
            ("session_id", "occurred_at", "prompt_id"),
            conflict=("session_id", "occurred_at", "prompt_key"),
        ),
        _table("normalization_runs", ("run_id",)),
        _table("evolution_evidence", ("evidence_id",)),
        _table("orchestrate_runs", ("run_id",)),
        _table("grading_results", ("grading_id",)),
        _table("improvement_signals", ("signal_id",), merge="signal"),
    )
}

# -- statements -----------------------------------------------------------------------


def _fill_null(col: sql.Composable) -> sql.Composable:
    return sql.SQL("{c} = coalesce(t.{c}, excluded.{c})").format(c=col)


def _null_filled(col: sql.Composable) -> sql.Composable:
    return sql.SQL("(t.{c} IS NULL AND excluded.{c} IS NOT NULL)").format(c=col)


def _session_update(table: Table, fields: list[str]) -> tuple[list[sql.Composable], sql.Composable]:
    """Per-field "later normalized_at wins, null never overwrites", ties broken by value."""
    sets: list[sql.Composable] = []
    versions: list[sql.Composable] = []
    takes: list[sql.Composable] = []
    for name in fields:
        c = sql.Identifier(name)
        stored_version = sql.SQL("(t.field_versions ->> {n})::timestamptz").format(n=sql.Literal(name))
        take = sql.SQL(
            "(excluded.{c} IS NOT NULL AND (t.{c} IS NULL OR excluded.normalized_at > {v}"
            " OR (excluded.normalized_at = {v} AND excluded.{c} > t.{c})))"
        ).format(c=c, v=stored_version)
        takes.append(take)
        sets.append(sql.SQL("{c} = CASE WHEN {take} THEN excluded.{c} ELSE t.{c} END").format(c=c, take=take))
        versions.append(
            sql.SQL("{n}, CASE WHEN {take} THEN excluded.normalized_at ELSE {v} END").format(
                n=sql.Literal(name), take=take, v=stored_version
            )
        )
    sets.append(sql.SQL("normalized_at = greatest(t.normalized_at, excluded.normalized_at)"))
    sets.append(
        sql.SQL("field_versions = jsonb_strip_nulls(jsonb_build_object({}))").format(sql.SQL(", ").join(versions))
    )
    where = sql.SQL(" OR ").join([*takes, sql.SQL("excluded.normalized_at > t.normalized_at")])
    return sets, where


def _signal_update(fields: list[str]) -> tuple[list[sql.Composable], sql.Composable]:
    """Consumption is monotonic; the earliest consumption (and its run) wins (store/consumption.py)."""
    at, run = sql.SQL("excluded.consumed_at"), sql.SQL("excluded.consumed_by_run")
    consumption = ("consumed", "consumed_at", "consumed_by_run")
    plain = [f for f in fields if f not in consumption]
    sets = [_fill_null(sql.Identifier(f)) for f in plain]
    sets.append(sql.SQL("consumed = t.consumed OR excluded.consumed"))
    sets.append(keep_earliest(at, run))
    earlier = is_earlier(at, run)
    where = sql.SQL(" OR ").join(
        [*(_null_filled(sql.Identifier(f)) for f in plain), sql.SQL("(excluded.consumed AND NOT t.consumed)"), earlier]
    )
    return sets, where


@dataclass(frozen=True)
class Merge:
    """The parts of a table's upsert that do not depend on where its rows come from.

    `select` reads the rows from alias `u`, with one placeholder first (the
    workspace id); `sets` and `where` are the merge rule (SPEC 4), the WHERE
    guard skipping rows that would not change, which makes re-pushes cheap.
    """

    insert_cols: sql.Composable
    select: sql.Composable
    target: sql.Composable
    sets: sql.Composable
    where: sql.Composable


def merge_of(table: Table) -> Merge:
    """INSERT ... ON CONFLICT DO UPDATE's parts for a table's merge rule."""
    names = list(table.column_names)
    updatable = [n for n in names if n not in table.key]
    insert_cols = ["workspace_id", *names]
    select_exprs: list[sql.Composable] = [sql.Placeholder(), *(_stored(c) for c in table.columns)]
    if table.merge == "session":
        insert_cols.append("field_versions")
        pairs = sql.SQL(", ").join(
            sql.SQL("{n}, CASE WHEN u.{c} IS NULL THEN NULL ELSE u.normalized_at END").format(
                n=sql.Literal(n), c=sql.Identifier(n)
            )
            for n in updatable
            if n != "normalized_at"
        )
        select_exprs.append(sql.SQL("jsonb_strip_nulls(jsonb_build_object({}))").format(pairs))
        sets, where = _session_update(table, [n for n in updatable if n != "normalized_at"])
    elif table.merge == "signal":
        sets, where = _signal_update(updatable)
    else:
        sets = [_fill_null(sql.Identifier(n)) for n in updatable]
        where = sql.SQL(" OR ").join(_null_filled(sql.Identifier(n)) for n in updatable)
    return Merge(
        insert_cols=sql.SQL(", ").join(sql.Identifier(n) for n in insert_cols),
        select=sql.SQL(", ").join(select_exprs),
        target=sql.SQL(", ").join(sql.Identifier(n) for n in ("workspace_id", *table.conflict_target)),
        sets=sql.SQL(", ").join(sets),
        where=where,
    )


def _stored(column: Column) -> sql.Composable:
    """A column's value as stored, from alias `u`: as sent, or a Struct's JSON as msgspec would encode it."""
    c = sql.SQL("u.{}").format(sql.Identifier(column.name))
    if not column.struct_fields:
        return c
    if not column.struct_list:
        return _stored_json(c, column.struct_fields)
    each = _stored_json(sql.SQL("a.value"), column.struct_fields)
    return sql.SQL(
        "CASE WHEN {c} IS NULL THEN NULL ELSE (SELECT coalesce(jsonb_agg({each} ORDER BY a.n), '[]')"
        " FROM jsonb_array_elements({c}) WITH ORDINALITY AS a (value, n)) END"
    ).format(c=c, each=each)


def _stored_json(value: sql.Composable, fields: tuple[str, ...]) -> sql.Composable:
    """A JSON object of a Struct as msgspec encodes the decoded Struct: unknown keys and null values dropped.

    The writer hands Postgres the records as the client sent them (a whole body) or
    as msgspec re-encoded them (records checked one by one): both store the same.
    Most objects as sent are already so (only the Struct's keys, no null): two
    operators in C tell, and the object is stored as it is; rebuilding it key by
    key (a subquery per record) cost Postgres ~15 % of its whole write
    (bench/writer_variants.py, jsonb-rebuild-structs).
    """
    return sql.SQL(
        "CASE WHEN {v} IS NULL THEN NULL"
        " WHEN {v} - ARRAY[{fields}] = '{{}}'::jsonb AND NOT {v} @? 'strict $.* ? (@ == null)' THEN {v}"
        " ELSE {rebuilt} END"
    ).format(v=value, fields=sql.SQL(", ").join(sql.Literal(f) for f in fields), rebuilt=rebuilt_json(value, fields))


def rebuilt_json(value: sql.Composable, fields: tuple[str, ...]) -> sql.Composable:
    """The object rebuilt with only `fields`' keys of non-null value (a subquery run per record)."""
    return sql.SQL(
        "(SELECT coalesce(jsonb_object_agg(e.key, e.value), '{{}}')"
        " FROM jsonb_each({v}) AS e WHERE e.key IN ({fields}) AND e.value <> 'null'::jsonb)"
    ).format(v=value, fields=sql.SQL(", ").join(sql.Literal(f) for f in fields))


def key_exprs(table: Table, alias: str) -> list[sql.Composable]:
    """The key as Postgres compares it (null prompt as ''), text in code point order as Table.key_of sorts it."""
    exprs: list[sql.Composable] = []
    types = {c.name: c.sql_type for c in table.columns}
    for name in table.key:
        col = sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(name))
        if types[name] == "text":
            col = sql.SQL("coalesce({}, '') COLLATE \"C\"").format(col)
        exprs.append(col)
    return exprs


def _upsert_ctes(table: Table, n: int, recordset: str, json_type: str) -> sql.Composed:
    """The two CTEs of one table's upsert: `u<n>` (its rows, with each key's copy number), `written<n>` (the upsert).

    Placeholders, in order: the array (text), the workspace id, the round.
    """
    defs = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.sql_type)) for c in table.columns
    )
    names = sql.SQL(", ").join(sql.Identifier(c.name) for c in table.columns)
    merge = merge_of(table)
    return sql.SQL(
        "{u} AS (SELECT r.*, row_number() OVER (PARTITION BY {partition} ORDER BY r.n) AS copy"
        " FROM ROWS FROM ({recordset}({rows}::{json_type}) AS ({defs})) WITH ORDINALITY AS r ({names}, n)),"
        " {written} AS (INSERT INTO {table} AS t ({cols}) SELECT {select} FROM {u} AS u WHERE u.copy = %s"
        " ORDER BY {order} ON CONFLICT ({target}) DO UPDATE SET {sets} WHERE {where})"
    ).format(
        u=sql.Identifier(f"u{n}"),
        written=sql.Identifier(f"written{n}"),
        partition=sql.SQL(", ").join(key_exprs(table, "r")),
        recordset=sql.SQL(recordset),
        rows=sql.Placeholder(format=PyFormat.TEXT),
        json_type=sql.SQL(json_type),
        defs=defs,
        names=names,
        table=sql.Identifier(table.name),
        cols=merge.insert_cols,
        select=merge.select,
        order=sql.SQL(", ").join(key_exprs(table, "u")),
        target=merge.target,
        sets=merge.sets,
        where=merge.where,
    )


def json_upsert(
    tables: Table | Sequence[Table], recordset: str = "jsonb_to_recordset", json_type: str = "jsonb"
) -> bytes:
    """One statement upserting each of `tables`' rows, which Postgres reads from one JSON array of records per table.

    Parameters, per table **in the reverse of the order given** (see below): the
    array (text), the workspace id, the round. No key is written twice by one
    statement (Postgres refuses it): the k-th copy of a key in an array goes to
    round k, so each round runs the merge rule in arrival order. Returns, per table
    in the order given, (rounds, records in its array): almost every batch is one
    round, and the caller runs rounds 2.. (one table at a time) only if needed.

    Rows are written in key order within a table, and table after table in the
    order given, so two workers writing overlapping keys lock them in the same
    order and never deadlock. The statement's SELECT reads no INSERT's output (a
    RETURNING row each would cost Postgres more), and Postgres then runs the
    INSERTs after it, in the reverse of the order of their CTEs: so the CTEs are
    listed last table first. `test_json_writer` checks the order with triggers.
    """
    if isinstance(tables, Table):
        tables = (tables,)
    return statement_of([_upsert_ctes(t, n, recordset, json_type).as_bytes(None) for n, t in enumerate(tables)])


def statement_of(ctes: Sequence[bytes]) -> bytes:
    """json_upsert's statement from its tables' CTEs (rendered, in the order given): listed in reverse, then the counts."""
    results = b", ".join(_results(n).as_bytes(None) for n in range(len(ctes)))
    return b"WITH " + b", ".join(reversed(ctes)) + b" SELECT " + results


def _results(n: int) -> sql.Composed:
    """Table n's (rounds, records in its array)."""
    return sql.SQL("(SELECT max(copy) FROM {u}), (SELECT count(*) FROM {u})").format(u=sql.Identifier(f"u{n}"))


def native_placeholders(statement: bytes) -> bytes:
    """The statement with Postgres's own `$1, $2, ...` for psycopg's `%s`/`%t`/`%b`, in order (for a RawCursor).

    psycopg splits a query on its placeholders at every execution unless the query
    is short enough for its cache (4 KB); a statement for all nine types is ~65 KB,
    and splitting it cost the client ~75 us a batch. The rule is psycopg's own: a
    `%` followed by s, t or b is a placeholder anywhere, and these statements hold
    no other `%` (asserted).
    """
    count = 0

    def numbered(_: re.Match[bytes]) -> bytes:
        nonlocal count
        count += 1
        return b"$%d" % count

    native = re.sub(rb"%[stb]", numbered, statement)
    assert b"%" not in native, "a % that is not a placeholder"
    return native


# Rendered to bytes once: composing a statement of this size costs ~1.5 ms of
# CPU, more than Postgres takes to write a 100-row batch.
UPSERTS: dict[str, bytes] = {name: json_upsert(t) for name, t in TABLES.items()}


@functools.cache
def upsert_together(record_types: tuple[str, ...]) -> bytes:
    """json_upsert of these types' tables (given in RECORD_TYPES order, as every writer goes), with `$n` placeholders.

    Built on first use from parts rendered once (composing a whole statement
    anew takes ~1.5 ms per type); a fleet's pushes use a few dozen of the 2**9 - 1
    sets of types. Run it on a psycopg RawCursor (see native_placeholders).
    """
    assert list(record_types) == [t for t in RECORD_TYPES if t in record_types], record_types
    return native_placeholders(statement_of([cte_bytes(t, n) for n, t in enumerate(record_types)]))


@functools.cache
def cte_bytes(record_type: str, n: int) -> bytes:
    """The type's CTEs (_upsert_ctes) as table n of a statement, rendered once."""
    return _upsert_ctes(TABLES[record_type], n, "jsonb_to_recordset", "jsonb").as_bytes(None)
