"""The last hour of the queue, for the plots of the ops page: one sample every SAMPLE_S, kept in Redis.

Every api process runs this loop, and one of them takes each sample: the first
to claim the interval's lock (SET NX EX, as the key mirror does). So the history
is shared, survives an api restart, and does not grow with the number of apis.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec
from redis.exceptions import RedisError

from api.background import BackgroundLoop
from api.backpressure import QueueWatch

log = logging.getLogger(__name__)

HISTORY_KEY = "selftune:ops:history"  # sorted set: one encoded Sample per member, scored by its unix time
HISTORY_LOCK = "selftune:ops:history:lock"  # + ":<interval number>": whoever sets it takes that sample
SAMPLE_S = 10
KEEP_S = 3600


class Sample(msgspec.Struct, frozen=True):
    """The queue at one instant; rates are per second over the last 10 s (queueing/stats.py RECENT_WINDOW_S)."""

    t: float  # unix time
    accepted_per_s: float
    written_per_s: float
    lag_s: float
    depth: int


_decode = msgspec.json.Decoder(Sample).decode


class OpsHistory(BackgroundLoop):
    """Takes a sample each SAMPLE_S when no other api has taken it, and forgets those older than KEEP_S."""

    task_name = "ops-history"

    def __init__(self, redis: Any, watch: QueueWatch) -> None:
        self._redis = redis
        self._watch = watch

    async def sample_once(self, now: float | None = None) -> bool:
        """Take this interval's sample unless another api did; whether this one did."""
        now = time.time() if now is None else now
        lock = f"{HISTORY_LOCK}:{int(now // SAMPLE_S)}"
        if not await self._redis.set(lock, "1", nx=True, ex=3 * SAMPLE_S):
            return False
        state = await self._watch.refresh()
        sample = Sample(
            t=round(now, 3),
            accepted_per_s=round(state.recent_rates.get("accepted_records", 0.0), 2),
            written_per_s=round(state.recent_rates.get("written_records", 0.0), 2),
            lag_s=round(state.lag_s, 1),
            depth=state.depth,
        )
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(HISTORY_KEY, {msgspec.json.encode(sample): now})
            pipe.zremrangebyscore(HISTORY_KEY, "-inf", now - KEEP_S)
            await pipe.execute()
        return True

    async def _run(self) -> None:
        while True:
            try:
                await self.sample_once()
            except (RedisError, OSError) as exc:  # Redis down: a gap in the plots, which is the truth
                log.debug("ops history sample failed: %s", exc)
            await self.pause(SAMPLE_S - time.time() % SAMPLE_S + 0.05)  # at the start of the next interval


async def read_history(redis: Any, now: float | None = None) -> list[Sample]:
    """The samples of the last KEEP_S seconds, oldest first."""
    now = time.time() if now is None else now
    return [_decode(raw) for raw in await redis.zrangebyscore(HISTORY_KEY, now - KEEP_S, "+inf")]
