"""A snapshot of the queue, read from Redis in one round trip (SPEC 6).

Used by `/metrics`, the api's back-pressure check and `selftune-ingest
status`: one Lua script, run by a sync or an async client alike, returns queue
depth, the enqueue time of the oldest queued batch, registry sizes, worker
states and the last minute's rates. The keys are RQ's own, asked of RQ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from rq import Queue
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from schema import stats

# KEYS: queue, failed, scheduled, started, workers set, then the rate buckets.
# ARGV: number of rate kinds, buckets per kind.
SNAPSHOT_SCRIPT = """
local depth = redis.call('LLEN', KEYS[1])
local oldest = false
local head = redis.call('LINDEX', KEYS[1], 0)
if head then oldest = redis.call('HGET', 'rq:job:' .. head, 'enqueued_at') end
local failed = redis.call('ZCARD', KEYS[2])
local scheduled = redis.call('ZCARD', KEYS[3])
local started = redis.call('ZCARD', KEYS[4])
local busy, idle = 0, 0
for _, wkey in ipairs(redis.call('SMEMBERS', KEYS[5])) do
  local state = redis.call('HGET', wkey, 'state')
  if state == 'busy' then busy = busy + 1 elseif state then idle = idle + 1 end
end
local rates = {}
for i = 6, #KEYS do rates[#rates + 1] = tonumber(redis.call('GET', KEYS[i]) or '0') end
return {depth, oldest, failed, scheduled, started, busy, idle, rates}
"""

RATE_KINDS = ("accepted_records", "written_records", "written_batches")


@dataclass(frozen=True)
class QueueState:
    """What ops need to see at a glance; rates are per second over the last minute."""

    depth: int
    lag_s: float  # age of the oldest queued batch (0 when the queue is empty)
    failed: int
    scheduled: int  # waiting for a retry
    started: int
    workers_busy: int
    workers_idle: int
    rates: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class QueueKeys:
    """RQ's keys for one queue."""

    queue: str
    failed: str
    scheduled: str
    started: str
    workers: str

    @classmethod
    def for_queue(cls, name: str) -> QueueKeys:
        conn = Redis()  # never used for I/O: RQ derives key names from it
        return cls(
            queue=Queue(name, connection=conn).key,
            failed=FailedJobRegistry(name, connection=conn).key,
            scheduled=ScheduledJobRegistry(name, connection=conn).key,  # type: ignore[no-untyped-call]
            started=StartedJobRegistry(name, connection=conn).key,
            workers=WORKERS_BY_QUEUE_KEY % name,
        )


def snapshot_args(keys: QueueKeys, now: float) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV for SNAPSHOT_SCRIPT."""
    rate_keys = [k for kind in RATE_KINDS for k in stats.window_keys(kind, now)]
    return [keys.queue, keys.failed, keys.scheduled, keys.started, keys.workers, *rate_keys], []


def parse_snapshot(raw: list[Any], now: float) -> QueueState:
    depth, oldest, failed, scheduled, started, busy, idle, rates = raw
    lag = 0.0
    if oldest:
        text = oldest.decode() if isinstance(oldest, bytes) else str(oldest)
        enqueued = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if enqueued.tzinfo is None:
            enqueued = enqueued.replace(tzinfo=UTC)
        lag = max(0.0, now - enqueued.timestamp())
    per_kind = len(rates) // len(RATE_KINDS)
    totals = {
        kind: sum(int(r) for r in rates[i * per_kind : (i + 1) * per_kind]) / stats.RATE_WINDOW_S
        for i, kind in enumerate(RATE_KINDS)
    }
    return QueueState(int(depth), lag, int(failed), int(scheduled), int(started), int(busy), int(idle), totals)


def read_snapshot(redis: Redis, queue_name: str, now: float) -> QueueState:
    """The snapshot through a sync client (the ops command line)."""
    keys, args = snapshot_args(QueueKeys.for_queue(queue_name), now)
    return parse_snapshot(redis.eval(SNAPSHOT_SCRIPT, len(keys), *keys, *args), now)
