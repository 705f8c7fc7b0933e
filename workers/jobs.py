"""The RQ job that writes one accepted push to Postgres."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from redis import Redis
from redis.exceptions import RedisError
from rq import get_current_job
from rq.exceptions import AbandonedJobError

from queueing import stats
from runtime.redis_client import redis_client
from runtime.settings import Settings
from schema.batches import QueuedBatch, decode_batch, failure_key
from schema.record_checks import RecordLimits, check_record
from schema.records import RECORD_TYPES
from workers import db
from workers.arrays import body_arrays
from workers.streamed import write_streamed
from workers.writer import (
    REFUSED,
    QuarantineRow,
    claim_push,
    fail_push,
    finish_push,
    upsert_all,
    write_quarantine,
    write_records,
)

log = logging.getLogger(__name__)

_settings: Settings | None = None


def settings() -> Settings:
    global _settings
    if _settings is None:
        _settings = Settings.from_env()
    return _settings


def _valid_positions(batch: QueuedBatch, record_type: str, count: int) -> list[int]:
    """Positions of the `count` accepted records among all of the push's records of this type."""
    taken = {r.index for r in batch.rejected if r.record_type == record_type}
    positions: list[int] = []
    p = 0
    while len(positions) < count:
        if p not in taken:
            positions.append(p)
        p += 1
    return positions


def write_batch(conn: psycopg.Connection, batch: QueuedBatch) -> dict[str, Any]:
    """Write a batch in one transaction; a push already processed is a no-op.

    Returns a summary: accepted and rejected counts by type, or duplicate=True.
    The fast path sends each type in one statement with no savepoints; if
    Postgres refuses some value, the batch is written again carefully: every
    record checked alone, and the refused ones quarantined (see `write_records`).
    """
    try:
        return _write_batch(conn, batch, careful=False)
    except REFUSED as exc:
        log.warning("push %s: Postgres refused a value (%s); writing carefully", batch.push_id, exc)
        return _write_batch(conn, batch, careful=True)


def _write_batch(conn: psycopg.Connection, batch: QueuedBatch, careful: bool) -> dict[str, Any]:
    started = time.perf_counter()
    quarantined = [QuarantineRow(r.record_type, r.index, r.error, r.raw) for r in batch.rejected]
    accepted: dict[str, int] = {}
    with batch_transaction(conn, careful):
        if claim_push(conn, batch):
            return {"push_id": batch.push_id, "duplicate": True}
        if batch.body is not None and not careful:
            # A wholly valid push (the api checked every record): each type's array goes
            # to Postgres as sent, and Postgres parses it (workers/arrays.py).
            accepted = upsert_all(conn, batch.workspace_id, body_arrays(batch.body))
        else:
            raws_by_type = batch.raw_records()
            limits = settings().record_limits
            for record_type in RECORD_TYPES:
                raws = raws_by_type.get(record_type)
                if raws:
                    n = _write_each_checked(conn, batch, record_type, raws, limits, careful, quarantined)
                    if n:
                        accepted[record_type] = n
        write_quarantine(conn, batch.workspace_id, batch.push_id, batch.received_at, quarantined)
        rejected: dict[str, int] = {}
        for q in quarantined:
            rejected[q.record_type] = rejected.get(q.record_type, 0) + 1
        write_ms = (time.perf_counter() - started) * 1000
        finish_push(conn, batch.workspace_id, batch.push_id, accepted, rejected, write_ms)
    return {"push_id": batch.push_id, "accepted": accepted, "rejected": rejected, "write_ms": round(write_ms, 2)}


@contextlib.contextmanager
def batch_transaction(conn: psycopg.Connection, careful: bool) -> Iterator[None]:
    """The batch's one transaction; on the fast path, in psycopg's pipeline mode.

    In pipeline mode statements go without waiting for each one's answer: a batch
    waits for Postgres three times (the claim, the counts, the commit), not once
    per statement. BEGIN and COMMIT are sent as statements of the pipeline rather
    than by `conn.transaction()`, whose syncs cost the client about twice as much
    (~200 against ~110 us a batch, bench/README.md). Not when writing carefully: a
    refusal must be caught at its own savepoint, as it happens.
    """
    if careful:
        with conn.transaction():
            yield
        return
    try:
        with conn.pipeline():
            conn.execute("BEGIN")
            yield
            conn.execute("COMMIT")
    except BaseException:
        if not conn.closed and not conn.broken:
            conn.rollback()  # the connection is in autocommit: this sends ROLLBACK if a transaction is open
        raise


def _write_each_checked(
    conn: psycopg.Connection,
    batch: QueuedBatch,
    record_type: str,
    raws: list[Any],
    limits: RecordLimits,
    careful: bool,
    quarantined: list[QuarantineRow],
) -> int:
    """Decode one type's records one by one, write the good ones, quarantine the rest; return how many landed."""
    positions = _valid_positions(batch, record_type, len(raws))
    records, good_raws, good_positions = [], [], []
    # The api validated these; decoding again also catches a record the
    # current schema refuses (an api and a worker of different versions).
    for raw, position in zip(raws, positions, strict=True):
        record, error = check_record(record_type, raw, f"{record_type}[{position}]", limits)
        if error is None:
            records.append(record)
            good_raws.append(bytes(raw))
            good_positions.append(position)
        else:
            quarantined.append(QuarantineRow(record_type, position, error, bytes(raw)))
    refused = write_records(conn, batch.workspace_id, record_type, records, good_raws, good_positions, careful)
    quarantined.extend(refused)
    return len(records) - len(refused)


@dataclass(frozen=True)
class Written:
    """One batch written by `write_job`: what the job's result, its log line and the counters say."""

    batch: QueuedBatch
    summary: dict[str, Any]
    seconds: float

    def count(self, pipe: Any) -> None:
        """Add this batch to the shared counters, on the caller's Redis pipeline."""
        count_batch(pipe, self.summary, self.seconds)


def write_job(batch: QueuedBatch) -> Written:
    """Write one queued batch and log it: the one path of a job, taken alone (ingest_batch) or in a take.

    On any failure the worker's Postgres connection is dropped (a timeout, SIGALRM,
    can interrupt a query and leave it mid-command without marking it broken) and
    the error raised: the caller decides between a retry and giving up
    (`give_up_or_retry`); a take hands the batch to RQ's own path for that.
    """
    started = time.perf_counter()
    try:
        summary = _write_queued(batch)
    except BaseException:
        db.close()
        raise
    written = Written(batch, summary, time.perf_counter() - started)
    log_batch(batch, summary)
    return written


def _write_queued(batch: QueuedBatch) -> dict[str, Any]:
    if batch.body_key is not None:  # a streamed push: its body waits in Redis (workers/streamed.py)
        return write_streamed(db.connection(settings()), batch, _body_redis(), settings())
    return write_batch(db.connection(settings()), batch)


def _body_redis() -> Redis:
    """The Redis holding streamed bodies: the job's own connection (a new one outside a job, e.g. a replay)."""
    job = get_current_job()
    if job is not None:
        return job.connection
    return redis_client(settings().redis_url)


def ingest_streamed_batch(payload: bytes) -> dict[str, Any]:
    """RQ job (INGEST_STREAMED_JOB): a push past MAX_BODY_BYTES, split from its body in Redis.

    The same job as ingest_batch, under its own name so that a worker without it
    fails the job (replayable) instead of reading a batch with no records.
    """
    return ingest_batch(payload)


def ingest_batch(payload: bytes) -> dict[str, Any]:
    """RQ job: decode a queued push and write it to Postgres (SPEC 4 and 5).

    Transient failures raise, and RQ retries the job with backoff. On the last
    attempt the push's row is marked failed with the reason (best effort: the
    failure may be that Postgres is down) and the job lands in RQ's failed
    registry, from where `selftune-ingest replay` brings it back.
    """
    batch = decode_batch(payload)
    try:
        written = write_job(batch)
    except BaseException as exc:
        give_up_or_retry(batch, exc)
        raise
    _count(written.count)
    return written.summary


def give_up_or_retry(batch: QueuedBatch, exc: BaseException) -> None:
    """After a failed attempt: count it in the job's meta; on the last one mark the push failed for good."""
    job = get_current_job()
    if job is not None:
        _count_attempt(job)
    if job is None or not job.should_retry:
        _record_failure(batch, exc, job.connection if job is not None else None)
        _count(lambda pipe: pipe.hincrby(stats.BATCHES, "failed", 1))


def log_batch(batch: QueuedBatch, summary: dict[str, Any]) -> None:
    """One structured line per written batch."""
    log.info(
        "batch written",
        extra={
            "push_id": batch.push_id,
            "workspace_id": batch.workspace_id,
            "outcome": "duplicate" if summary.get("duplicate") else "processed",
            "accepted": summary.get("accepted"),
            "rejected": summary.get("rejected"),
            "write_ms": summary.get("write_ms"),
        },
    )


def _count_attempt(job: Any) -> None:
    """Remember a failed attempt in the job's meta (ops show it in `failed list`)."""
    try:
        job.meta["failed_attempts"] = int(job.meta.get("failed_attempts", 0)) + 1
        job.save_meta()
    except Exception as exc:
        log.warning("could not count the failed attempt: %s", exc)


def count_batch(pipe: Any, summary: dict[str, Any], seconds: float) -> None:
    """Add one written batch to the shared counters (see queueing/stats.py)."""
    if summary.get("duplicate"):
        pipe.hincrby(stats.BATCHES, "duplicate", 1)
        return
    pipe.hincrby(stats.BATCHES, "processed", 1)
    for record_type, n in summary["accepted"].items():
        pipe.hincrby(stats.WRITTEN, record_type, n)
    for record_type, n in summary["rejected"].items():
        pipe.hincrby(stats.QUARANTINED, record_type, n)
    pipe.hincrby(stats.WRITE_SECONDS, stats.bucket_label(seconds), 1)
    pipe.hincrbyfloat(stats.WRITE_SECONDS, "sum", seconds)
    pipe.hincrby(stats.WRITE_SECONDS, "count", 1)
    for kind, n in (("written_records", sum(summary["accepted"].values())), ("written_batches", 1)):
        key = stats.rate_key(kind)
        pipe.incrby(key, n)
        pipe.expire(key, stats.RATE_TTL_S)


def _count(add: Any) -> None:
    """Run counter updates on the worker's Redis connection; counters never fail a job."""
    job = get_current_job()
    if job is None:
        return
    try:
        with job.connection.pipeline(transaction=False) as pipe:
            add(pipe)
            pipe.execute()
    except Exception as exc:
        log.warning("could not update counters: %s", exc)


def on_batch_failure(job: Any, connection: Any, exc_type: type, exc_value: BaseException, traceback: Any) -> None:
    """RQ's failure callback (FAILURE_CALLBACK): a batch abandoned on its last attempt is marked failed.

    A batch that fails inside ingest_batch marks its push row there. One whose
    worker was killed never gets back there: RQ fails it later, in the cleanup of
    its started registry, and calls this; without it the push would read
    "queued" forever while the batch waits in the failed registry.
    """
    if not issubclass(exc_type, AbandonedJobError) or job.retries_left:
        return  # handled by ingest_batch, or retried
    _record_failure(decode_batch(job.args[0]), AbandonedJobError("its worker died during the last attempt"), connection)


def _record_failure(batch: QueuedBatch, exc: BaseException, redis: Any) -> None:
    """Mark a push failed for good: in Redis (read while it has no row) and in its Postgres row."""
    reason = f"{type(exc).__name__}: {exc}".strip()
    if redis is not None:
        try:
            redis.set(failure_key(batch.workspace_id, batch.push_id), reason[:2000], ex=settings().failed_ttl_s)
        except (RedisError, OSError) as second:  # Redis is down too: the push row below still says it
            log.warning("could not note push %s failed in Redis: %s", batch.push_id, second)
    try:
        conn = db.connection(settings())
        with conn.transaction():
            fail_push(conn, batch, reason[:2000])
    except Exception as second:  # Postgres is likely what failed: RQ's failed registry still has it
        # An interrupted query (RQ's callback alarm) can leave the connection mid-command
        # without marking it broken: the next batch opens a fresh one.
        db.close()
        log.warning("could not mark push %s failed: %s", batch.push_id, second)
