"""The bench's own redis-server: a free port, data in the run's temp dir, configured as production.

Append-only (everysec), noeviction, an AOF rewrite only past 1 GB, flushed
(and its AOF rewritten, its freed memory purged) between phases, shut down at
the end. Its latency monitor and slowlog record its own stalls, read per phase.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from redis import Redis

from bench.procs import Service, free_port, wait_for
from queueing.shards import QueueLayout

# Every queue the product (QUEUE_SHARDS shards, default 8, and the unsharded queue) or a
# baseline from before sharding (the unsharded "rq:queue:ingest" alone) enqueues to: the
# queue's depth is their sum. (Until 2026-12-07 the bench read the unsharded queue only, so
# from the sharding of 2026-12-07 (aef2139) on, its e2e-saturated phase held no queue flat.)
QUEUE_KEYS = tuple(
    f"rq:queue:{name}" for name in QueueLayout("ingest", int(os.environ.get("QUEUE_SHARDS", "8"))).listened
)
# Redis's own record of its event loop's stalls (a fork, an AOF write, a slow
# command) of this many ms or more: read per phase, to tell them from the api's.
REDIS_STALL_MS = 5


class BenchRedis:
    """A redis-server started by `start()`, stopped by `close()`."""

    def __init__(self, tmp: Path, env: Callable[[], dict[str, str]]) -> None:
        self.tmp = tmp
        self._env = env
        self.port = 0
        self.service: Service | None = None
        self._client: Redis | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.service is not None
        return self.service.pid

    @property
    def client(self) -> Redis:
        assert self._client is not None
        return self._client

    def start(self) -> None:
        if not shutil.which("redis-server"):
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        data = self.tmp / "redis"
        data.mkdir()
        argv = [
            "redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(data),
            "--daemonize", "no", "--appendonly", "yes", "--appendfsync", "everysec",
            "--maxmemory-policy", "noeviction", "--save", "", "--protected-mode", "yes", "--rdbcompression", "no",
            "--auto-aof-rewrite-min-size", "1gb",
            "--latency-monitor-threshold", str(REDIS_STALL_MS),
            "--slowlog-log-slower-than", str(REDIS_STALL_MS * 1000),
        ]  # fmt: skip
        self.service = Service("redis", argv, self._env(), self.tmp, cwd=self.tmp)
        client = Redis.from_url(self.url)
        wait_for("redis to answer PING", client.ping, proc=self.service)
        self._client = client

    def flush(self) -> None:
        """Empty Redis and shrink its append-only file (so phases start alike)."""
        r = self.client
        r.flushall()
        # Hand the freed memory back to the OS now, not in the middle of the next phase.
        with contextlib.suppress(Exception):
            r.execute_command("MEMORY", "PURGE")
        with contextlib.suppress(Exception):
            r.bgrewriteaof()
        wait_for(
            "the AOF rewrite",
            lambda: (
                r.info("persistence").get("aof_rewrite_in_progress") == 0
                and r.info("persistence").get("aof_rewrite_scheduled") == 0
            ),
            timeout=60,
        )

    def reset_stalls(self) -> None:
        self.client.execute_command("LATENCY", "RESET")
        self.client.slowlog_reset()

    def slow_commands(self, n: int = 5) -> list[dict[str, Any]]:
        """Redis's slowest commands since the last reset (SLOWLOG, REDIS_STALL_MS or more): ms and the command's head."""
        out = []
        for e in self.client.slowlog_get(128):
            head = e["command"][:60]
            out.append(
                {
                    "ms": round(e["duration"] / 1000, 1),
                    "at": e["start_time"],
                    "command": head.decode(errors="replace") if isinstance(head, bytes) else str(head),
                }
            )
        return sorted(out, key=lambda x: -x["ms"])[:n]

    def stalls(self) -> dict[str, int]:
        """The longest stall (ms) of Redis's event loop per kind since the last reset (LATENCY LATEST)."""
        latest = self.client.execute_command("LATENCY", "LATEST")
        return {(e[0].decode() if isinstance(e[0], bytes) else str(e[0])): int(e[3]) for e in latest}

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.shutdown(nosave=True)
            self._client.close()
        if self.service is not None:
            self.service.stop()
