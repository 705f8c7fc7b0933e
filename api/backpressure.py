"""Back-pressure that absorbs: say when Redis cannot take a push, so it goes to the local spool instead.

The real CLI drops whatever it is refused for ~15 s (SPEC 2.5), so queue depth
and lag are never a reason to refuse: they are alerts (deploy/alerts.yml).
Memory is. Redis runs `noeviction`: a full Redis refuses the workers' writes
too (RQ's bookkeeping), so they could not drain the queue that filled it.
Past REDIS_MEMORY_HIGH_PCT of `maxmemory`, pushes go to the api's spool
(spool/store.py), and the drainer moves them back once Redis has room.

The queue is watched, not polled per request: a background task reads the
queue snapshot and Redis's memory use once a second, and each push only looks
at the last reading. A push whose enqueue failed (Redis unreachable) marks Redis
down for REDIS_RETRY_S, so the pushes behind it go to the spool at once instead
of each waiting for a connection timeout.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from api.background import BackgroundLoop
from queueing.queue_state import QueueState, read_snapshot_async, snapshot_keys, worker_alive_s
from queueing.rq_compat import SNAPSHOT_SCRIPT
from runtime.settings import Settings

log = logging.getLogger(__name__)

REFRESH_S = 1.0
REDIS_RETRY_S = 1.0  # after a failed enqueue, pushes go straight to the spool this long


class QueueWatch(BackgroundLoop):
    """Keeps a recent queue snapshot and Redis's memory use, and says whether Redis can take a push."""

    task_name = "queue-watch"

    def __init__(self, settings: Settings, redis: Any) -> None:
        self._settings = settings
        self._redis = redis
        self._keys = snapshot_keys(settings.queues)  # every shard, and the unsharded queue
        self._script = redis.register_script(SNAPSHOT_SCRIPT)
        self._alive_s = worker_alive_s(settings.worker_maintenance_interval_s)
        self.latest: QueueState | None = None
        self.memory: tuple[int, int] | None = None  # Redis used_memory, maxmemory (bytes)
        self._down_until = 0.0

    async def refresh(self) -> QueueState:
        now = time.time()
        self.latest = await read_snapshot_async(self._redis, self._script, self._keys, now, self._alive_s)
        if self._settings.redis_memory_high_pct > 0:
            info = await self._redis.info("memory")
            self.memory = (int(info.get("used_memory", 0)), int(info.get("maxmemory", 0)))
        return self.latest

    def mark_down(self) -> None:
        """An enqueue just failed: send pushes to the spool for REDIS_RETRY_S."""
        self._down_until = time.monotonic() + REDIS_RETRY_S

    def mark_up(self) -> None:
        self._down_until = 0.0

    def why_not_redis(self) -> str | None:
        """None if a push may go to Redis now, else why it goes to the spool."""
        if time.monotonic() < self._down_until:
            return "Redis did not answer the last enqueue"
        return self.over_headroom()

    def over_headroom(self) -> str | None:
        """Why Redis should take no more batches (its memory), or None."""
        if self.memory is None or self.memory[1] <= 0:
            return None
        used, cap = self.memory
        if used >= cap * self._settings.redis_memory_high_pct / 100:
            return (
                f"Redis holds {used / 2**20:.0f} MB of its {cap / 2**20:.0f} MB maxmemory"
                f" (REDIS_MEMORY_HIGH_PCT={self._settings.redis_memory_high_pct:g})"
            )
        return None

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # Redis down: the pushes find out themselves, and spool
                log.debug("queue snapshot failed: %s", exc)
            await self.pause(REFRESH_S)
