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

from schema.records import RECORD_TYPES
from workers.tables import TABLES, UPSERTS, upsert_together

log = logging.getLogger(__name__)

# How Postgres refuses a value of one record, not the batch: out of its range or not of
# its type (DataError), against a table's CHECK (the time ranges of migration 0003) or
# NOT NULL (a field the api's schema, newer than this worker's, no longer requires),
# or too large for an index (ProgramLimitExceeded: a key of several kilobytes).
REFUSED = (
    psycopg.DataError,
    psycopg.errors.CheckViolation,
    psycopg.errors.NotNullViolation,
    psycopg.errors.ProgramLimitExceeded,
)


class QuarantineRow(msgspec.Struct):
    record_type: str
    record_index: int
    error: str
    raw: bytes


def _as_is(data: bytes) -> bytes:
    """psycopg's JSON dump for bytes that already are JSON (no re-encoding)."""
    return data


def upsert(conn: psycopg.Connection, workspace_id: str, record_type: str, array: bytes) -> int:
    """Write one type's records, given as one JSON array, in the caller's transaction; return how many."""
    return upsert_all(conn, workspace_id, {record_type: array})[record_type]


def upsert_all(conn: psycopg.Connection, workspace_id: str, arrays: dict[str, bytes]) -> dict[str, int]:
    """Write each type's records, given as one JSON array per type, in the caller's transaction; count them by type.

    Postgres parses the records (workers/tables.py, json_upsert), so no record
    becomes a Python object here. One statement for all the types, prepared at
    once: a statement costs the client ~45 us, and every set of types is a
    statement of its own, which Postgres would otherwise plan afresh for its first
    five runs on each connection; with Postgres's own placeholders, which psycopg
    does not parse. One more per copy and type if a key repeats in
    an array (round). A refused value raises one of REFUSED and aborts the
    transaction.
    """
    types = tuple(t for t in RECORD_TYPES if t in arrays)
    if not types:
        return {}
    rows = {t: Jsonb(arrays[t], _as_is) for t in types}
    params: list[Any] = []
    for record_type in reversed(types):  # json_upsert's order of parameters
        params += (rows[record_type], workspace_id, 1)
    with psycopg.RawCursor(conn) as cur:  # the statement has $n placeholders: psycopg need not split it
        found = cur.execute(upsert_together(types), params, prepare=True).fetchone()
    assert found is not None
    counts: dict[str, int] = {}
    for i, record_type in enumerate(types):
        rounds, counts[record_type] = found[2 * i], int(found[2 * i + 1])
        for n in range(2, (rounds or 0) + 1):
            conn.execute(UPSERTS[record_type], (rows[record_type], workspace_id, n))
    return counts


_ENCODER = msgspec.json.Encoder()


def write_records(
    conn: psycopg.Connection,
    workspace_id: str,
    record_type: str,
    records: Sequence[Any],
    raws: Sequence[bytes],
    positions: Sequence[int],
    careful: bool = False,
) -> list[QuarantineRow]:
    """Upsert one type's decoded records (Structs); returns the records Postgres itself refused.

    Not `careful`: one `upsert` of them all, in the caller's transaction; a
    refusal (a value out of Postgres's range, say) raises one of REFUSED and
    aborts it, and the caller writes the batch again carefully. `careful`: in a
    savepoint, and if Postgres refuses, record by record, each in its own, so
    the good records still land and the bad ones are quarantined with
    Postgres's reason (`raws` and `positions` say what to keep and where).
    """
    if not careful:
        upsert(conn, workspace_id, record_type, _ENCODER.encode(records))
        return []
    try:
        with conn.transaction():
            upsert(conn, workspace_id, record_type, _ENCODER.encode(records))
        return []
    except REFUSED as exc:
        log.warning("bulk write of %s refused (%s); writing one by one", record_type, exc.diag.message_primary)

    refused: list[QuarantineRow] = []
    # In key order, as the bulk statement writes its rows (ORDER BY the key, in code point
    # order as key_of sorts), so that two workers writing overlapping keys never wait on
    # each other in a cycle; equal keys keep arrival order.
    table = TABLES[record_type]
    order = sorted(range(len(records)), key=lambda i: table.key_of(records[i]))
    for i in order:
        try:
            with conn.transaction():
                upsert(conn, workspace_id, record_type, _ENCODER.encode([records[i]]))
        except REFUSED as exc:
            reason = f"{record_type}[{positions[i]}]: refused by the database: {exc.diag.message_primary}"
            refused.append(QuarantineRow(record_type, positions[i], reason, raws[i]))
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
