"""A snapshot of the queue, read from Redis in one round trip (SPEC 6).

Used by `/metrics`, the api's back-pressure check and `selftune-ingest
status`, in two round trips, by a sync or an async client alike: a Lua script
(every key it reads declared in KEYS) returns queue depth, registry sizes, the
head job's id, the stalled jobs' ids, the workers' keys, RQ's suspension flag and
the last minute's rates; then one pipeline reads what those ids name: the enqueue
time of the oldest batch not moving (queued, or started by a worker that died)
and each worker's state and last heartbeat, so a dead worker is not counted. The
script and RQ's keys and fields it reads are `queueing.rq_compat`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from queueing import stats
from queueing.rq_compat import (
    ENQUEUED_AT,
    SNAPSHOT_SCRIPT,
    SUSPENDED_KEY,
    WORKER_FIELDS,
    QueueKeys,
    job_key,
    rq_timestamp,
)

RATE_KINDS = ("accepted_records", "written_records", "written_batches")

# A worker heartbeats at least once per wait for a job (at most WORKER_MAINTENANCE_INTERVAL_S, see
# workers/worker.py) and every few seconds while it writes. One silent for this long is dead, however
# long its hash lives on (RQ keeps an idle worker's hash for 8 minutes after its last heartbeat).
WORKER_ALIVE_S = 30.0


def worker_alive_s(maintenance_interval_s: float) -> float:
    """How long a worker may stay silent and still count as alive (three of its waits, at least 15 s)."""
    return max(15.0, 3.0 * maintenance_interval_s)


@dataclass(frozen=True)
class QueueState:
    """What ops need to see at a glance; rates are per second over the last minute."""

    depth: int
    lag_s: float  # age of the oldest batch not moving: queued, or started by a worker that died (0: none)
    failed: int
    scheduled: int  # waiting for a retry
    started: int
    workers_busy: int
    workers_idle: int
    rates: dict[str, float] = field(default_factory=dict)
    workers_suspended: int = 0  # `rq suspend`: they take no batch until `rq resume`
    stalled: int = 0  # started batches whose claim lapsed (their worker died); retried by the next maintenance
    recent_rates: dict[str, float] = field(default_factory=dict)  # per second over the last RECENT_WINDOW_S

    def as_dict(self) -> dict[str, Any]:
        """The figures `selftune-ingest status` and the ops page show, by their names there."""
        return {
            "queue_depth": self.depth,
            "lag_seconds": round(self.lag_s, 1),
            "failed": self.failed,
            "retrying": self.scheduled,
            "in_progress": self.started,
            "stalled": self.stalled,
            "workers_busy": self.workers_busy,
            "workers_idle": self.workers_idle,
            "workers_suspended": self.workers_suspended,
            "accepted_records_per_s": round(self.rates.get("accepted_records", 0.0), 1),
            "written_records_per_s": round(self.rates.get("written_records", 0.0), 1),
            "written_batches_per_s": round(self.rates.get("written_batches", 0.0), 2),
        }


def snapshot_args(keys: QueueKeys, now: float) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV for SNAPSHOT_SCRIPT."""
    rate_keys = [k for kind in RATE_KINDS for k in stats.window_keys(kind, now)]
    return [keys.queue, keys.failed, keys.scheduled, keys.started, keys.workers, SUSPENDED_KEY, *rate_keys], [now]


def snapshot_detail_reads(first: list[Any]) -> list[tuple[str, tuple[str, ...]]]:
    """The (key, fields) HMGETs that complete SNAPSHOT_SCRIPT's answer: the head job, the stalled jobs, the workers."""
    _depth, head, _failed, _scheduled, _started, stalled_ids, worker_keys, *_ = first
    jobs = ([head] if head else []) + list(stalled_ids)
    reads = [(job_key(j), (ENQUEUED_AT,)) for j in jobs]
    return reads + [(k.decode() if isinstance(k, bytes) else str(k), WORKER_FIELDS) for k in worker_keys]


def _workers(flat: list[Any], suspended: bool, now: float, alive_s: float) -> tuple[int, int, int]:
    """Busy, idle and suspended workers from (state, last_heartbeat) pairs; silent ones are left out as dead.

    A suspended worker stops heartbeating (RQ's suspension loop only sleeps), so it counts as
    suspended however silent, until RQ's hash of it expires. A busy one finishes its batch first.
    """
    busy = idle = held = 0
    for i in range(0, len(flat), 2):
        state = flat[i].decode() if isinstance(flat[i], bytes) else str(flat[i])
        if state == "suspended" or (suspended and state != "busy"):
            held += 1
        elif flat[i + 1] and now - rq_timestamp(flat[i + 1]) <= alive_s:
            if state == "busy":
                busy += 1
            else:
                idle += 1
    return busy, idle, held


def parse_snapshot(
    first: list[Any], details: list[list[Any]], now: float, alive_s: float = WORKER_ALIVE_S
) -> QueueState:
    """The QueueState from SNAPSHOT_SCRIPT's answer and the answers to its `snapshot_detail_reads`."""
    depth, head, failed, scheduled, started, stalled_ids, _keys, suspended, rates = first
    jobs = details[: (1 if head else 0) + len(stalled_ids)]
    # A job gone between the two reads (finished) has no time: it is moving, so it adds no lag.
    lag = max([0.0, *(now - rq_timestamp(at) for [at] in jobs if at)])
    workers = [value for pair in details[len(jobs) :] if pair[0] for value in (pair[0], pair[1] or b"")]
    stalled = len(stalled_ids)
    busy, idle, held = _workers(workers, bool(suspended), now, alive_s)
    per_kind = len(rates) // len(RATE_KINDS)
    counts = {kind: [int(r) for r in rates[i * per_kind : (i + 1) * per_kind]] for i, kind in enumerate(RATE_KINDS)}
    return QueueState(
        depth=int(depth),
        lag_s=lag,
        failed=int(failed),
        scheduled=int(scheduled),
        started=int(started),
        workers_busy=busy,
        workers_idle=idle,
        rates={kind: stats.per_second(c, now) for kind, c in counts.items()},
        workers_suspended=held,
        stalled=int(stalled),
        recent_rates={kind: stats.per_second(c, now, stats.RECENT_WINDOW_S) for kind, c in counts.items()},
    )


def read_snapshot(redis: Redis, queue_name: str, now: float, alive_s: float = WORKER_ALIVE_S) -> QueueState:
    """The snapshot through a sync client (the ops command line)."""
    keys, args = snapshot_args(QueueKeys.for_queue(queue_name), now)
    first = redis.eval(SNAPSHOT_SCRIPT, len(keys), *keys, *args)
    with redis.pipeline(transaction=False) as pipe:
        for key, names in snapshot_detail_reads(first):
            pipe.hmget(key, names)
        details = pipe.execute()
    return parse_snapshot(first, details, now, alive_s)


async def read_snapshot_async(
    redis: AsyncRedis, script: Any, keys: QueueKeys, now: float, alive_s: float
) -> QueueState:
    """The snapshot through an asyncio client (the api's queue watch); `script` is SNAPSHOT_SCRIPT registered on it."""
    script_keys, args = snapshot_args(keys, now)
    first = await script(keys=script_keys, args=args)
    async with redis.pipeline(transaction=False) as pipe:
        for key, names in snapshot_detail_reads(first):
            pipe.hmget(key, names)
        details = await pipe.execute()
    return parse_snapshot(first, details, now, alive_s)
