"""scripts/services.sh leaves other people's Redis alone (issue 16, deploy files).

`up` refuses a Redis on its port that is not this checkout's and could lose or
evict queued batches; `down` stops only the Redis whose pidfile is under this
checkout's data directory. Each test runs its own throwaway redis-server on a
free port, with the script's data directory in tmp_path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis import Redis

from tests.conftest import missing_server
from tests.e2e.stack import REPO, free_port

SCRIPT = REPO / "scripts" / "services.sh"


@pytest.fixture
def foreign_redis(tmp_path: Path) -> Iterator[Callable[..., int]]:
    """Start a redis-server that is not the script's; returns its port."""
    if shutil.which("redis-server") is None:
        missing_server("redis-server", FileNotFoundError("redis-server"))
    started: list[subprocess.Popen[bytes]] = []

    def start(*options: str) -> int:
        port = free_port()
        started.append(
            subprocess.Popen(
                ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", *options],
                cwd=tmp_path,
                stdout=subprocess.DEVNULL,
            )
        )
        client = Redis(port=port)
        for _ in range(50):
            try:
                client.ping()
                return port
            except OSError:
                time.sleep(0.1)
        raise AssertionError("the throwaway redis-server did not start")

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(10)


def _services(action: str, port: int, data: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATA_DIR": str(data), "REDIS_PORT": str(port), "PG_PORT": str(free_port())}
    return subprocess.run(
        [str(SCRIPT), action, "dev"], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_up_refuses_a_redis_that_may_lose_batches(foreign_redis: Callable[..., int], tmp_path: Path) -> None:
    for options in (("--appendonly", "no"), ("--appendonly", "yes", "--maxmemory-policy", "allkeys-lru")):
        port = foreign_redis(*options)
        done = _services("up", port, tmp_path / "data")
        assert done.returncode == 1, done
        assert f"127.0.0.1:{port}" in done.stderr and "noeviction" in done.stderr
        assert not (tmp_path / "data" / "postgres").exists(), "nothing else starts"


def test_down_leaves_a_redis_this_checkout_did_not_start(foreign_redis: Callable[..., int], tmp_path: Path) -> None:
    port = foreign_redis("--appendonly", "yes")
    done = _services("down", port, tmp_path / "data")
    assert done.returncode == 0, done
    assert "not this checkout's" in done.stdout
    assert Redis(port=port).ping()
