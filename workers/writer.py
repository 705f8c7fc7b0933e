"""Write one batch to Postgres: records in bulk, quarantined records, the push's row.

Everything here runs inside the caller's transaction (one per batch, SPEC 4):
the records, the quarantine rows and the push row commit together or not at all.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import msgspec
import psycopg
from psycopg.types.json import Jsonb

from workers.tables import TABLES, UPSERTS, column_arrays

log = logging.getLogger(__name__)

# How Postgres refuses a value of one record, not the batch: out of its range
# (DataError), against a table's CHECK (the time ranges of migration 0003), or
# too large for an index (ProgramLimitExceeded: a key of several kilobytes).
REFUSED = (psycopg.DataError, psycopg.errors.CheckViolation, psycopg.errors.ProgramLimitExceeded)


class QuarantineRow(msgspec.Struct):
    record_type: str
    record_index: int
    error: str
    raw: bytes


def _rounds(table_name: str, records: Sequence[Any]) -> list[list[Any]]:
    """Split records so no key appears twice in one statement.

    Postgres refuses an upsert that touches one row twice; the k-th copy of a
    key goes to round k, and each round runs the table's own merge rule in
    arrival order. Almost every batch is a single round. Each round is sorted
    by key, so two workers writing overlapping keys lock rows in the same
    order and do not deadlock.
    """
    table = TABLES[table_name]
    seen: dict[tuple[Any, ...], int] = {}
    rounds: list[list[tuple[tuple[Any, ...], Any]]] = [[]]
    for record in records:
        key = table.key_of(record)
        n = seen.get(key, 0)
        seen[key] = n + 1
        if n == len(rounds):
            rounds.append([])
        rounds[n].append((key, record))
    return [[record for _, record in sorted(r, key=lambda pair: pair[0])] for r in rounds]


def write_records(
    conn: psycopg.Connection,
    workspace_id: str,
    record_type: str,
    records: Sequence[Any],
    raws: Sequence[bytes],
    positions: Sequence[int],
    careful: bool = False,
) -> list[QuarantineRow]:
    """Upsert one type's records in bulk; returns records Postgres itself refused.

    Normally one statement per type, in the caller's transaction: a refusal
    (a value out of Postgres's range, say) raises one of REFUSED and aborts it. The
    caller then writes the batch again `careful`ly: each type in a savepoint,
    and a refused type record by record, so the good records still land and the
    bad ones are quarantined with Postgres's reason.
    """
    table = TABLES[record_type]
    statement = UPSERTS[record_type]
    if not careful:
        with conn.cursor() as cur:
            for batch in _rounds(record_type, records):
                cur.execute(statement, [workspace_id, *column_arrays(table, batch)])
        return []
    try:
        with conn.transaction(), conn.cursor() as cur:
            for batch in _rounds(record_type, records):
                cur.execute(statement, [workspace_id, *column_arrays(table, batch)])
        return []
    except REFUSED as exc:
        log.warning("bulk write of %s refused (%s); writing one by one", record_type, exc.diag.message_primary)

    refused: list[QuarantineRow] = []
    # In key order, as the bulk path locks its rows (_rounds), so that two workers writing
    # overlapping keys never wait on each other in a cycle; equal keys keep arrival order.
    order = sorted(range(len(records)), key=lambda i: table.key_of(records[i]))
    with conn.cursor() as cur:
        for record, raw, position in ((records[i], raws[i], positions[i]) for i in order):
            try:
                with conn.transaction():
                    cur.execute(statement, [workspace_id, *column_arrays(table, [record])])
            except REFUSED as exc:
                reason = f"{record_type}[{position}]: refused by the database: {exc.diag.message_primary}"
                refused.append(QuarantineRow(record_type, position, reason, raw))
    return refused


def write_quarantine(
    conn: psycopg.Connection,
    workspace_id: str,
    push_id: str,
    received_at: Any,
    rows: Sequence[QuarantineRow],
) -> None:
    """Store rejected records verbatim; a retried batch does not store them twice."""
    if not rows:
        return
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO quarantine (workspace_id, push_id, record_type, record_index, error, raw, received_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (workspace_id, push_id, record_type, record_index) DO NOTHING",
            [(workspace_id, push_id, r.record_type, r.record_index, r.error, r.raw, received_at) for r in rows],
        )


def claim_push(conn: psycopg.Connection, batch: Any) -> bool:
    """Insert or lock the push's row; True when the push was processed already (the job is then a no-op).

    That is how a retried or replayed batch that in fact committed is not written
    twice. A concurrent attempt on the same push waits here, on the row's lock, for
    the first one's transaction: it then finds the row 'processed' (a no-op), or
    inserts it afresh if the first rolled back. A new row is inserted as
    'processed', the state it commits with (finish_push fills in its counts in the
    same transaction): no reader sees the row before then.
    """
    row = conn.execute(
        "INSERT INTO pushes (workspace_id, push_id, status, received_at, pushed_at, cli_version, key_id, started_at)"
        " VALUES (%s, %s, 'processed', %s, %s, %s, %s, now())"
        " ON CONFLICT (workspace_id, push_id) DO UPDATE SET attempts = pushes.attempts + 1, started_at = now(),"
        " key_id = coalesce(pushes.key_id, excluded.key_id)"
        " RETURNING status, (xmax = 0) AS inserted",
        (batch.workspace_id, batch.push_id, batch.received_at, batch.pushed_at, batch.cli_version, batch.key_id),
    ).fetchone()
    assert row is not None
    status, inserted = row
    return not inserted and status == "processed"


def finish_push(
    conn: psycopg.Connection,
    workspace_id: str,
    push_id: str,
    accepted: dict[str, int],
    rejected: dict[str, int],
    write_ms: float,
) -> None:
    """Mark the push processed with its counts, in the batch's transaction.

    processed_at is the clock at this statement, just before the commit (now() is the
    transaction's start: started_at's instant, however long the write took).
    """
    conn.execute(
        "UPDATE pushes SET status = 'processed', accepted = %s, rejected = %s, write_ms = %s,"
        " processed_at = clock_timestamp(), error = NULL WHERE workspace_id = %s AND push_id = %s",
        (Jsonb(accepted), Jsonb(rejected), write_ms, workspace_id, push_id),
    )


def fail_push(conn: psycopg.Connection, batch: Any, error: str) -> None:
    """Record, in a transaction of its own, that a push gave up after its last retry."""
    conn.execute(
        "INSERT INTO pushes (workspace_id, push_id, status, received_at, pushed_at, cli_version, key_id, error)"
        " VALUES (%s, %s, 'failed', %s, %s, %s, %s, %s)"
        " ON CONFLICT (workspace_id, push_id) DO UPDATE SET status = 'failed', error = excluded.error,"
        " key_id = coalesce(pushes.key_id, excluded.key_id)"
        " WHERE pushes.status <> 'processed'",
        (batch.workspace_id, batch.push_id, batch.received_at, batch.pushed_at, batch.cli_version, batch.key_id, error),
    )
