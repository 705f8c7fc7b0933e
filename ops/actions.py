"""What the ops command line does: queue status, failed batches, replay, quarantine, push lookup.

Replays are idempotent by construction: a replayed batch whose push already
committed is a no-op in the worker (its push row says processed), and
quarantined records go through the same upsert as any record.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from redis import Redis
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry

from queueing import stats
from queueing.queue_state import QueueState, read_snapshot
from queueing.rq_compat import MsgpackSerializer
from runtime.settings import Settings
from schema.batches import dedupe_key, failure_key
from schema.record_checks import DEFAULT_LIMITS, RecordLimits, check_record
from spool.store import SpoolStats, read_stats
from workers.writer import write_records

_RELATIVE = re.compile(r"(\d+)\s*([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An absolute ISO 8601 time, or a relative one ('90s', '30m', '2h', '7d' ago)."""
    match = _RELATIVE.fullmatch(text.strip())
    if match:
        now = now or datetime.now(UTC)
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use ISO 8601, or 30m, 2h, 7d)") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# -- status ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Status:
    queue: QueueState
    quarantined: int | None  # pending quarantined records (None: Postgres unreachable)
    spool: SpoolStats | None = None  # this host's api spool (None: no spool file at SPOOL_PATH)
    retention: list[dict[str, Any]] = field(default_factory=list)  # the last `maintain`, a dict a table

    def as_dict(self) -> dict[str, Any]:
        q = self.queue
        return {
            **q.as_dict(),  # queueing/queue_state.py owns the queue's figures and their names
            "quarantined": self.quarantined,
            "spooled_batches": self.spool.batches if self.spool else 0,
            "spool_bytes": self.spool.bytes if self.spool else 0,
            "spool_oldest_seconds": round(self.spool.oldest_age_s(), 1) if self.spool else 0.0,
            "retention": self.retention,
        }


def status(redis: Redis, conn: psycopg.Connection | None, settings: Settings) -> Status:
    """The queue's snapshot, the pending quarantine (None without Postgres) and this host's spool."""
    quarantined = None
    if conn is not None:
        try:
            row = conn.execute("SELECT count(*) FROM quarantine WHERE replayed_at IS NULL").fetchone()
        except psycopg.OperationalError:  # Postgres went away (status --watch): shown as unreachable
            row = None
        else:
            quarantined = int(row[0]) if row else 0
    retention = stats.parse_retention(redis.hgetall(stats.RETENTION))  # type: ignore[arg-type]
    return Status(
        read_snapshot(redis, settings.queues, time.time()), quarantined, read_stats(settings.spool_path), retention
    )


# -- failed batches ------------------------------------------------------------------------


@dataclass(frozen=True)
class FailedBatch:
    job_id: str
    push_id: str
    workspace_id: str
    failed_at: datetime | None
    attempts: int
    error: str  # first line of the reason

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "push_id": self.push_id,
            "workspace_id": self.workspace_id,
            "failed_at": self.failed_at.isoformat() if self.failed_at else None,
            "attempts": self.attempts,
            "error": self.error,
        }


def failed_registries(redis: Redis, settings: Settings) -> list[FailedJobRegistry]:
    """RQ's failed registry of every queue in use (each shard, the unsharded queue, a stray shard)."""
    names = settings.queues.in_use(q.name for q in Queue.all(connection=redis))
    return [FailedJobRegistry(name, connection=redis, serializer=MsgpackSerializer) for name in names]


def _error_line(job: Job) -> str:
    """The exception line of the job's last traceback ("Type: message")."""
    result = job.latest_result()
    lines = ((result.exc_string if result else None) or "").splitlines()
    frames = [i for i, line in enumerate(lines) if line.startswith("  File ")]
    for line in lines[frames[-1] + 1 if frames else 0 :]:
        if line and not line[0].isspace():
            return line.strip()
    return "(no error recorded: abandoned by its worker?)"


def failed_batches(
    redis: Redis,
    settings: Settings,
    *,
    push_ids: Iterable[str] = (),
    workspace: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[FailedBatch]:
    """Batches in RQ's failed registry, oldest failure first, filtered as asked."""
    wanted = set(push_ids)
    # The registry's score is the failure's time + the job's failure TTL, whatever failed it: a
    # batch abandoned by a killed worker has no ended_at of its last attempt (RQ fails it in cleanup).
    expiries: dict[str, float] = {}
    for registry in failed_registries(redis, settings):
        scored: list[tuple[bytes, float]] = redis.zrange(registry.key, 0, -1, withscores=True)  # type: ignore[assignment]
        expiries.update((job_id.decode(), score) for job_id, score in scored)
    jobs = Job.fetch_many(list(expiries), connection=redis, serializer=MsgpackSerializer)
    found = []
    for job in jobs:
        if job is None:
            continue
        meta = job.get_meta(refresh=False)
        ttl = job.failure_ttl if job.failure_ttl is not None else settings.failed_ttl_s
        failed_at = datetime.fromtimestamp(expiries[job.id] - ttl, UTC) if ttl >= 0 else None
        if wanted and meta.get("push_id") not in wanted:
            continue
        if workspace and meta.get("workspace_id") != workspace:
            continue
        if since and (failed_at is None or failed_at < since):
            continue
        if until and (failed_at is None or failed_at > until):
            continue
        attempts = int(meta.get("failed_attempts", 1))
        found.append(
            FailedBatch(
                job.id, meta.get("push_id", "?"), meta.get("workspace_id", "?"), failed_at, attempts, _error_line(job)
            )
        )
    return sorted(found, key=lambda f: f.failed_at or datetime.min.replace(tzinfo=UTC))


def push_statuses(conn: psycopg.Connection | None, batches: list[FailedBatch]) -> dict[tuple[str, str], str]:
    """Postgres's word on each batch's push (processed means a replay will be a no-op)."""
    if conn is None or not batches:
        return {}
    rows = conn.execute(
        "SELECT workspace_id, push_id, status FROM pushes"
        " WHERE (workspace_id, push_id) IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
        ([b.workspace_id for b in batches], [b.push_id for b in batches]),
    )
    return {(w, p): s for w, p, s in rows}


def replay(
    redis: Redis,
    settings: Settings,
    batches: list[FailedBatch],
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Requeue failed batches with their retries restored; return how many were requeued.

    Each goes to the tail of its workspace's shard (QUEUE_SHARDS), not of one queue for all:
    a replay of one workspace's thousands of batches delays only its own shard.
    """
    done = 0
    for i, batch in enumerate(batches, 1):
        job = Job.fetch(batch.job_id, connection=redis, serializer=MsgpackSerializer)
        job.retries_left = settings.job_retries or None
        job.retry_intervals = settings.retry_pauses_s
        registry = FailedJobRegistry(job.origin, connection=redis, serializer=MsgpackSerializer)
        # RQ requeues a job to its origin: its shard now (from the unsharded queue, or after QUEUE_SHARDS changed).
        workspace_id = job.get_meta(refresh=False).get("workspace_id")
        if workspace_id:
            job.origin = settings.queues.for_workspace(workspace_id)
        registry.requeue(job)
        redis.delete(failure_key(batch.workspace_id, batch.push_id))  # queued again, no longer failed
        done += 1
        if progress:
            progress(i, len(batches))
    return done


# -- quarantine -----------------------------------------------------------------------------


# By workspace and id: under Citus (README, "Distributing by workspace") an update that names the
# workspace runs on its shard alone.
_SET_ERROR = "UPDATE quarantine SET error = %s WHERE workspace_id = %s AND quarantine_id = %s"


@dataclass(frozen=True)
class QuarantineReplay:
    written: int
    still_invalid: int


def quarantine_rows(
    conn: psycopg.Connection, workspace: str | None = None, push_id: str | None = None, limit: int = 1000
) -> list[tuple[Any, ...]]:
    """Pending quarantined records: (id, workspace, push, type, index, error, raw, quarantined_at)."""
    return conn.execute(
        "SELECT quarantine_id, workspace_id, push_id, record_type, record_index, error, raw, quarantined_at"
        " FROM quarantine WHERE replayed_at IS NULL"
        " AND (%(ws)s::text IS NULL OR workspace_id = %(ws)s) AND (%(push)s::text IS NULL OR push_id = %(push)s)"
        " ORDER BY quarantine_id LIMIT %(limit)s",
        {"ws": workspace, "push": push_id, "limit": limit},
    ).fetchall()


def replay_quarantine(
    conn: psycopg.Connection,
    workspace: str | None = None,
    push_id: str | None = None,
    dry_run: bool = False,
    limits: RecordLimits = DEFAULT_LIMITS,
) -> QuarantineReplay:
    """Re-validate quarantined records against the current schema; write those that now pass.

    Each record's outcome commits with its write: a record written is marked
    replayed in the same transaction; one still invalid keeps its row with the
    new reason.
    """
    written = invalid = 0
    for qid, ws, _push, record_type, index, _error, raw, _at in quarantine_rows(conn, workspace, push_id, 1_000_000):
        record, error = check_record(record_type, bytes(raw), f"{record_type}[{index}]", limits)
        if error is not None:
            invalid += 1
            if not dry_run:
                conn.execute(_SET_ERROR, (error, ws, qid))
            continue
        if dry_run:
            written += 1
            continue
        with conn.transaction():
            refused = write_records(conn, ws, record_type, [record], [bytes(raw)], [index], careful=True)
            if refused:
                conn.execute(_SET_ERROR, (refused[0].error, ws, qid))
                invalid += 1
            else:
                conn.execute(
                    "UPDATE quarantine SET replayed_at = now() WHERE workspace_id = %s AND quarantine_id = %s",
                    (ws, qid),
                )
                written += 1
    return QuarantineReplay(written, invalid)


# -- one push -----------------------------------------------------------------------------------


def show_push(
    redis: Redis, conn: psycopg.Connection, settings: Settings, push_id: str, workspace: str | None
) -> list[dict[str, Any]]:
    """Everything known of a push id: its row(s) in Postgres, its first answer in Redis, a failed job."""
    rows = conn.execute(
        "SELECT workspace_id, status, received_at, pushed_at, cli_version, accepted, rejected, attempts,"
        " started_at, processed_at, write_ms, error FROM pushes"
        " WHERE push_id = %s AND (%s::text IS NULL OR workspace_id = %s)",
        (push_id, workspace, workspace),
    ).fetchall()
    found: dict[str, dict[str, Any]] = {}
    for ws, st, received, pushed, cli, accepted, rejected, attempts, started, processed, write_ms, error in rows:
        found[ws] = {
            "push_id": push_id,
            "workspace_id": ws,
            "status": st,
            "received_at": received,
            "pushed_at": pushed,
            "cli_version": cli,
            "accepted": accepted,
            "rejected": rejected,
            "attempts": attempts,
            "started_at": started,
            "processed_at": processed,
            "write_ms": write_ms,
            "error": error,
        }
    for batch in failed_batches(redis, settings, push_ids=[push_id], workspace=workspace):
        entry = found.setdefault(batch.workspace_id, {"push_id": push_id, "workspace_id": batch.workspace_id})
        entry["failed_job"] = batch.as_dict()
        entry.setdefault("status", "failed")
    if workspace and workspace not in found and redis.exists(dedupe_key(workspace, push_id)):
        found[workspace] = {"push_id": push_id, "workspace_id": workspace, "status": "queued"}
    return list(found.values())
