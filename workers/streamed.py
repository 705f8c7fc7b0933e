"""Write a streamed push (one past MAX_BODY_BYTES) from its body in Redis, with bounded memory.

The body waits under its own Redis key (schema.batches.body_key). The worker reads
it in chunks (GETRANGE), finds each record with the scanner (schema/scan.py),
checks each alone as the api did, and writes the good ones in sub-batches with
the usual writers, all in the batch's one transaction, the push row committing
with them (SPEC 4). A record over MAX_RECORD_BYTES is quarantined verbatim,
unread: its bytes are streamed from Redis into a COPY, chunk by chunk, so memory
holds one chunk, one sub-batch and one record of at most MAX_RECORD_BYTES,
whatever the body's size. The body key is deleted once the transaction commits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import psycopg
from redis import Redis

from runtime.settings import Settings
from schema.batches import QueuedBatch
from schema.record_checks import check_alone, oversized_error
from schema.scan import PushScanner, Record
from workers.writer import REFUSED, QuarantineRow, claim_push, finish_push, write_quarantine, write_records

log = logging.getLogger(__name__)

READ_CHUNK_BYTES = 1 << 20  # GETRANGE size
SUB_BATCH_RECORDS = 1000  # records written per statement round
SUB_BATCH_BYTES = 8 << 20  # ...or fewer, when they add up to this many bytes


class MissingBody(RuntimeError):
    """The body key is gone (expired, or deleted by hand): the batch cannot be written."""


def body_chunks(redis: Redis, key: str, size: int, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """The bytes [start, end) of the body at `key`, READ_CHUNK_BYTES at a time."""
    end = size if end is None else end
    for offset in range(start, end, READ_CHUNK_BYTES):
        chunk: bytes = redis.getrange(key, offset, min(end, offset + READ_CHUNK_BYTES) - 1)  # type: ignore[assignment]
        if len(chunk) != min(end, offset + READ_CHUNK_BYTES) - offset:
            raise MissingBody(f"the body at {key} is shorter than its {size} bytes (expired or deleted)")
        yield chunk


def write_streamed(conn: psycopg.Connection, batch: QueuedBatch, redis: Redis, settings: Settings) -> dict[str, Any]:
    """Write a streamed push in one transaction (a push already processed is a no-op); delete its body after.

    As write_batch: if Postgres refuses some value, the batch is written again carefully.
    """
    assert batch.body_key is not None
    try:
        summary = _write(conn, batch, redis, settings, careful=False)
    except REFUSED as exc:
        log.warning("push %s: Postgres refused a value (%s); writing carefully", batch.push_id, exc)
        summary = _write(conn, batch, redis, settings, careful=True)
    redis.delete(batch.body_key)  # committed (or processed before): nobody needs the body again
    return summary


class _SubBatch:
    """Good records waiting to be written, by type, with their bytes and positions (for the careful path)."""

    def __init__(self) -> None:
        self.by_type: dict[str, tuple[list[Any], list[bytes], list[int]]] = {}
        self.records = 0
        self.bytes = 0

    def add(self, record_type: str, record: Any, raw: bytes, position: int) -> None:
        records, raws, positions = self.by_type.setdefault(record_type, ([], [], []))
        records.append(record)
        raws.append(raw)
        positions.append(position)
        self.records += 1
        self.bytes += len(raw)

    def full(self) -> bool:
        return self.records >= SUB_BATCH_RECORDS or self.bytes >= SUB_BATCH_BYTES


def _write(
    conn: psycopg.Connection, batch: QueuedBatch, redis: Redis, settings: Settings, careful: bool
) -> dict[str, Any]:
    started = time.perf_counter()
    assert batch.body_key is not None
    limits = settings.record_limits
    accepted: dict[str, int] = {}
    quarantined: list[QuarantineRow] = []
    oversized: list[tuple[Record, int, str]] = []  # (record, position, error)
    positions: dict[str, int] = {}
    pending = _SubBatch()

    def flush() -> None:
        nonlocal pending
        for record_type, (records, raws, where) in pending.by_type.items():
            refused = write_records(conn, batch.workspace_id, record_type, records, raws, where, careful)
            quarantined.extend(refused)
            if len(records) > len(refused):
                accepted[record_type] = accepted.get(record_type, 0) + len(records) - len(refused)
        pending = _SubBatch()

    def take(found: list[Record]) -> None:
        for r in found:
            position = positions.get(r.record_type, 0)
            positions[r.record_type] = position + 1
            path = f"{r.record_type}[{position}]"
            if r.raw is None:
                oversized.append((r, position, oversized_error(path, r.size, settings.max_record_bytes)))
                continue
            record, kept, error = check_alone(r.record_type, r.raw, path, limits)
            if error is None:
                pending.add(r.record_type, record, bytes(kept), position)
            else:
                quarantined.append(QuarantineRow(r.record_type, position, error, r.raw))
            if pending.full():
                flush()

    with conn.transaction():
        if claim_push(conn, batch):
            return {"push_id": batch.push_id, "duplicate": True}
        size = int(redis.strlen(batch.body_key))
        if size == 0 or size != batch.body_bytes:
            raise MissingBody(f"the body at {batch.body_key} holds {size} of its {batch.body_bytes} bytes")
        scanner = PushScanner(keep_records=True, max_record_bytes=settings.max_record_bytes)
        for chunk in body_chunks(redis, batch.body_key, size):
            take(scanner.feed(chunk))
        take(scanner.finish())
        flush()
        write_quarantine(conn, batch.workspace_id, batch.push_id, batch.received_at, quarantined)
        for r, position, error in oversized:
            _quarantine_streamed(conn, batch, redis, size, r, position, error)
        rejected: dict[str, int] = {}
        for record_type in [q.record_type for q in quarantined] + [r.record_type for r, _, _ in oversized]:
            rejected[record_type] = rejected.get(record_type, 0) + 1
        write_ms = (time.perf_counter() - started) * 1000
        finish_push(conn, batch.workspace_id, batch.push_id, accepted, rejected, write_ms)
    return {"push_id": batch.push_id, "accepted": accepted, "rejected": rejected, "write_ms": round(write_ms, 2)}


def _copy_text(value: str) -> str:
    """A value as COPY's text format reads it (backslash, tab and line breaks escaped)."""
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _quarantine_streamed(
    conn: psycopg.Connection, batch: QueuedBatch, redis: Redis, size: int, r: Record, position: int, error: str
) -> None:
    """Store one oversized record verbatim, its bytes streamed from Redis into a COPY (never whole in memory)."""
    assert batch.body_key is not None
    key = (batch.workspace_id, batch.push_id, r.record_type, position)
    exists = conn.execute(
        "SELECT 1 FROM quarantine WHERE workspace_id = %s AND push_id = %s AND record_type = %s AND record_index = %s",
        key,
    ).fetchone()
    if exists:  # as write_quarantine's ON CONFLICT DO NOTHING
        return
    head = [batch.workspace_id, batch.push_id, r.record_type, str(position), error, batch.received_at.isoformat()]
    with (
        conn.cursor() as cur,
        cur.copy(
            "COPY quarantine (workspace_id, push_id, record_type, record_index, error, received_at, raw) FROM STDIN"
        ) as copy,
    ):
        # bytea in hex: "\x" then two digits a byte; the backslash doubled for COPY's text format.
        copy.write(("\t".join(_copy_text(v) for v in head) + "\t\\\\x").encode())
        for chunk in body_chunks(redis, batch.body_key, size, r.start, r.end):
            copy.write(chunk.hex().encode())
        copy.write(b"\n")
