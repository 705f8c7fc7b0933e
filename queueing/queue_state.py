"""A snapshot of the queue, every shard of it (queueing/shards.py), read from Redis (SPEC 6).

Used by `/metrics`, the api's back-pressure check and `selftune-ingest
status`, in two round trips, by a sync or an async client alike: a Lua script
(every key it reads declared in KEYS) returns, for each shard's queue, its depth,
registry sizes, head job's id and the stalled jobs' ids, the workers' keys, RQ's suspension flag and
the last minute's rates; then one pipeline reads what those ids name: the enqueue
time of each shard's oldest batch not moving (queued, or started by a worker that died)
and each worker's state and last heartbeat, so a dead worker is not counted. The
script and RQ's keys and fields it reads are `queueing.rq_compat`'s. Totals are summed
over the shards (lag: the largest); each shard's depth and lag stay in `QueueState.shards`.
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
from queueing.shards import QueueLayout

RATE_KINDS = ("accepted_records", "written_records", "written_batches")

# A worker heartbeats at least once per wait for a job (at most WORKER_MAINTENANCE_INTERVAL_S, see
# workers/worker.py) and every few seconds while it writes. One silent for this long is dead, however
# long its hash lives on (RQ keeps an idle worker's hash for 8 minutes after its last heartbeat).
WORKER_ALIVE_S = 30.0


def worker_alive_s(maintenance_interval_s: float) -> float:
    """How long a worker may stay silent and still count as alive (three of its waits, at least 15 s)."""
    return max(15.0, 3.0 * maintenance_interval_s)


@dataclass(frozen=True)
class ShardState:
    """One queue of the layout: its depth and lag (what an operator needs to see one workspace's backlog)."""

    shard: str  # its shard's number, or "unsharded" (queueing/shards.py)
    queue: str
    depth: int
    lag_s: float

    def as_dict(self) -> dict[str, Any]:
        return {"shard": self.shard, "queue": self.queue, "depth": self.depth, "lag_seconds": round(self.lag_s, 1)}


@dataclass(frozen=True)
class QueueState:
    """What ops need to see at a glance, summed over the queue's shards; rates are per second over the last minute."""

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
    shards: tuple[ShardState, ...] = ()  # each queue's depth and lag, in shard order

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
            "shards": [shard.as_dict() for shard in self.shards],
        }


def snapshot_keys(queues: QueueLayout | str) -> list[tuple[str, str, QueueKeys]]:
    """(shard label, queue name, RQ's keys) of every queue the snapshot reads: a layout's `listened`, or one queue."""
    layout = queues if isinstance(queues, QueueLayout) else QueueLayout(queues, 1)
    return [(layout.shard_label(name), name, QueueKeys.for_queue(name)) for name in layout.listened]


def snapshot_args(queues: list[tuple[str, str, QueueKeys]], now: float) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV for SNAPSHOT_SCRIPT."""
    rate_keys = [k for kind in RATE_KINDS for k in stats.window_keys(kind, now)]
    keys = [k for _label, _name, q in queues for k in (q.queue, q.failed, q.scheduled, q.started, q.workers)]
    return [*keys, SUSPENDED_KEY, *rate_keys], [now, len(queues)]


def _queue_jobs(queue: list[Any]) -> list[Any]:
    """The job ids whose enqueue times make a queue's lag: its head, and its stalled jobs."""
    _depth, head, _failed, _scheduled, _started, stalled_ids = queue
    return ([head] if head else []) + list(stalled_ids)


def snapshot_detail_reads(first: list[Any]) -> list[tuple[str, tuple[str, ...]]]:
    """The (key, fields) HMGETs that complete SNAPSHOT_SCRIPT's answer: each queue's head and stalled jobs, the workers."""
    queues, worker_keys, *_ = first
    reads = [(job_key(j), (ENQUEUED_AT,)) for queue in queues for j in _queue_jobs(queue)]
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
    queues: list[tuple[str, str, QueueKeys]],
    first: list[Any],
    details: list[list[Any]],
    now: float,
    alive_s: float = WORKER_ALIVE_S,
) -> QueueState:
    """The QueueState of `queues` from SNAPSHOT_SCRIPT's answer and the answers to its `snapshot_detail_reads`."""
    per_queue, _keys, suspended, rates = first
    shards, at = [], 0
    for (label, name, _q), queue in zip(queues, per_queue, strict=True):
        jobs = details[at : at + len(_queue_jobs(queue))]
        at += len(jobs)
        # A job gone between the two reads (finished) has no time: it is moving, so it adds no lag.
        lag = max([0.0, *(now - rq_timestamp(stamp) for [stamp] in jobs if stamp)])
        shards.append(ShardState(label, name, int(queue[0]), lag))
    workers = [value for pair in details[at:] if pair[0] for value in (pair[0], pair[1] or b"")]
    busy, idle, held = _workers(workers, bool(suspended), now, alive_s)
    per_kind = len(rates) // len(RATE_KINDS)
    counts = {kind: [int(r) for r in rates[i * per_kind : (i + 1) * per_kind]] for i, kind in enumerate(RATE_KINDS)}
    return QueueState(
        depth=sum(s.depth for s in shards),
        lag_s=max([0.0, *(s.lag_s for s in shards)]),
        failed=sum(int(q[2]) for q in per_queue),
        scheduled=sum(int(q[3]) for q in per_queue),
        started=sum(int(q[4]) for q in per_queue),
        workers_busy=busy,
        workers_idle=idle,
        rates={kind: stats.per_second(c, now) for kind, c in counts.items()},
        workers_suspended=held,
        stalled=sum(len(q[5]) for q in per_queue),
        recent_rates={kind: stats.per_second(c, now, stats.RECENT_WINDOW_S) for kind, c in counts.items()},
        shards=tuple(shards),
    )


def read_snapshot(redis: Redis, queues: QueueLayout | str, now: float, alive_s: float = WORKER_ALIVE_S) -> QueueState:
    """The snapshot of a layout's queues (`settings.queues`), or of one queue by name, through a sync client (the ops command line)."""
    plan = snapshot_keys(queues)
    keys, args = snapshot_args(plan, now)
    first = redis.eval(SNAPSHOT_SCRIPT, len(keys), *keys, *args)
    with redis.pipeline(transaction=False) as pipe:
        for key, names in snapshot_detail_reads(first):
            pipe.hmget(key, names)
        details = pipe.execute()
    return parse_snapshot(plan, first, details, now, alive_s)


async def read_snapshot_async(
    redis: AsyncRedis, script: Any, queues: list[tuple[str, str, QueueKeys]], now: float, alive_s: float
) -> QueueState:
    """The snapshot through an asyncio client (the api's queue watch); `script` is SNAPSHOT_SCRIPT registered on it.

    `queues` is `snapshot_keys(...)`, made once by the caller.
    """
    script_keys, args = snapshot_args(queues, now)
    first = await script(keys=script_keys, args=args)
    async with redis.pipeline(transaction=False) as pipe:
        for key, names in snapshot_detail_reads(first):
            pipe.hmget(key, names)
        details = await pipe.execute()
    return parse_snapshot(queues, first, details, now, alive_s)
