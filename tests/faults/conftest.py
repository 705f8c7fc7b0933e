"""Fixtures of the fault tier: real api and worker processes, and control of the real servers.

Like the e2e tier, processes get the test database and Redis from the `settings`
fixture (tables truncated, Redis flushed before each test), with settings that
make failures quick to observe. The per-key rate limit is off: these tests are
about faults, and a 429 would only blur the count.

`servers` kills and restarts the test Redis and PostgreSQL for real; whatever a
test took down is running again after it, pass or fail. Each scenario prints a
one-line summary, and all of them are repeated at the end of the pytest run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from redis import Redis
from redis.exceptions import RedisError

from ops.accounts import create_key, create_workspace
from runtime.settings import Settings
from tests.conftest import missing_server
from tests.e2e.stack import Stack, running_stack
from tests.faults.cli_harness import CLI_TABLE, HEADER
from tests.faults.harness import SUMMARIES, WorkerPool
from tests.faults.servers import Servers

LOAD_THREADS = 3  # concurrent clients, one key each (as separate CLIs)


@pytest.fixture
def stack(settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    """Starts api and worker processes; stops every one of them at teardown, pass or fail."""
    with running_stack(settings, tmp_path, KEY_CACHE_TTL_S="5", RATE_LIMIT_PUSHES_PER_S="0") as processes:
        yield processes


@pytest.fixture
def worker_pool(stack: Stack) -> Iterator[Callable[[int], WorkerPool]]:
    """Starts supervised worker pools; stops supervising before `stack` stops the processes."""
    pools: list[WorkerPool] = []

    def start(size: int) -> WorkerPool:
        pools.append(WorkerPool(stack, size))
        return pools[-1]

    try:
        yield start
    finally:
        for pool in pools:
            pool.close()


@pytest.fixture
def servers(database_url: str, redis_url: str) -> Iterator[Servers]:
    """The test Redis and PostgreSQL, to kill and restart; both are up again after the test."""
    try:
        control = Servers()
    except (RedisError, OSError, psycopg.OperationalError) as exc:
        missing_server("the test servers", exc)
    try:
        yield control
    finally:
        control.restore()


@pytest.fixture
def workspace(db: psycopg.Connection) -> tuple[str, list[str]]:
    """A workspace and LOAD_THREADS + 1 live keys (the last one resends after the fault)."""
    workspace_id = create_workspace(db, "faults")
    return workspace_id, [create_key(db, workspace_id)[1] for _ in range(LOAD_THREADS + 1)]


@pytest.fixture
def rq_redis(settings: Settings) -> Iterator[Redis]:
    client = Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
    yield client
    client.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if CLI_TABLE:
        terminalreporter.section("fault scenarios with the CLI's retry policy (SPEC 2.5)")
        terminalreporter.write_line(HEADER)
        terminalreporter.write_line("|---|---|---|---|---|---|")
        for figures in CLI_TABLE:
            terminalreporter.write_line(figures.row())
    if SUMMARIES:
        terminalreporter.section("fault scenarios")
        for line in SUMMARIES:
            terminalreporter.write_line(line)
