"""Back-pressure: refuse pushes (503 + Retry-After) while the workers are too far behind.

The queue is watched, not polled per request: a background task reads the
queue snapshot (and Redis's memory use) once a second, and each push only
looks at the last one. The depth bound is also enforced exactly, inside the
enqueue script. Nothing is ever buffered in memory: refusing is the only
back-pressure.

Memory matters because Redis runs `noeviction`: a full Redis refuses the
workers' writes too (RQ's bookkeeping), so they could not drain the queue
that filled it. Pushes are refused well before that (REDIS_MEMORY_HIGH_PCT).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

from schema.queue_state import SNAPSHOT_SCRIPT, QueueKeys, QueueState, parse_snapshot, snapshot_args
from schema.settings import Settings

log = logging.getLogger(__name__)

REFRESH_S = 1.0
STOP_WAIT_S = 5.0  # at most one snapshot (a few Redis round trips) is in flight when asked to stop
MIN_RETRY_AFTER_S = 1
MAX_RETRY_AFTER_S = 300
RETRY_AFTER_WHEN_STALLED_S = 30  # no drain measured: workers down or starting


def retry_after_s(excess_batches: float, drain_batches_per_s: float) -> int:
    """Seconds until the workers have drained `excess_batches` at the measured rate."""
    if drain_batches_per_s <= 0:
        return RETRY_AFTER_WHEN_STALLED_S
    return max(MIN_RETRY_AFTER_S, min(MAX_RETRY_AFTER_S, math.ceil(excess_batches / drain_batches_per_s)))


class QueueWatch:
    """Keeps a recent queue snapshot and says whether to refuse pushes."""

    def __init__(self, settings: Settings, redis: Any) -> None:
        self._settings = settings
        self._redis = redis
        self._keys = QueueKeys.for_queue(settings.queue_name)
        self._script = redis.register_script(SNAPSHOT_SCRIPT)
        self.latest: QueueState | None = None
        self.memory: tuple[int, int] | None = None  # Redis used_memory, maxmemory (bytes)
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> QueueState:
        now = time.time()
        keys, args = snapshot_args(self._keys, now)
        self.latest = parse_snapshot(await self._script(keys=keys, args=args), now)
        if self._settings.redis_memory_high_pct > 0:
            info = await self._redis.info("memory")
            self.memory = (int(info.get("used_memory", 0)), int(info.get("maxmemory", 0)))
        return self.latest

    def refusal(self) -> tuple[str, int] | None:
        """(reason, Retry-After seconds) if pushes should be refused now."""
        s, limits = self.latest, self._settings
        if s is None:
            return None
        drain = s.rates.get("written_batches", 0.0)
        if s.depth >= limits.max_queue_depth:
            excess = s.depth - 0.9 * limits.max_queue_depth
            return f"the queue holds {s.depth} batches (MAX_QUEUE_DEPTH={limits.max_queue_depth})", retry_after_s(
                excess, drain
            )
        if s.lag_s >= limits.max_queue_lag_s:
            return (
                f"the oldest queued batch is {s.lag_s:.0f} s old (MAX_QUEUE_LAG_S={limits.max_queue_lag_s:g})",
                retry_after_s(s.depth * 0.1, drain),
            )
        if self.memory is not None and self.memory[1] > 0:
            used, cap = self.memory
            if used >= cap * limits.redis_memory_high_pct / 100:
                return (
                    f"Redis holds {used / 2**20:.0f} MB of its {cap / 2**20:.0f} MB maxmemory"
                    f" (REDIS_MEMORY_HIGH_PCT={limits.redis_memory_high_pct:g})",
                    retry_after_s(s.depth * 0.1, drain),
                )
        return None

    async def _run(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # Redis down: pushes will get their own 503 from the enqueue
                log.debug("queue snapshot failed: %s", exc)
            # stop() cancels this task, but Python 3.11 can lose that cancellation:
            # asyncio.wait_for, which the Redis client waits with, returns the inner
            # result instead when it is ready at the same moment (bpo-42130, fixed in
            # 3.12). Measured: about half the cancellations landing in a command that
            # Redis answers with an error (an error reply, LOADING, ...). So the request
            # is read here too, or the loop would run on and shutdown wait forever.
            if task.cancelling():
                raise asyncio.CancelledError
            await asyncio.sleep(REFRESH_S)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="queue-watch")

    async def stop(self) -> None:
        """Stop the background task; returns within STOP_WAIT_S whatever the task does."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        # asyncio.wait, not `await task`: shutdown must end even if the task never does.
        done, _ = await asyncio.wait({task}, timeout=STOP_WAIT_S)
        if not done:
            log.warning("queue watch did not stop within %s s; left behind", STOP_WAIT_S)
