"""Fixtures of the fault scenarios: the e2e tier's stack and servers (tests/e2e/conftest.py), under load.

The processes keep keys cached longer, and the per-key rate limit is off: these
tests are about faults, and a 429 would only blur the count. Each scenario prints
a one-line summary, and all of them are repeated at the end of the pytest run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import psycopg
import pytest

from ops.accounts import create_key
from tests.e2e.faults.cli_harness import CLI_TABLE, HEADER
from tests.e2e.faults.harness import WorkerPool
from tests.e2e.stack import Stack
from tests.support import Account

LOAD_THREADS = 3  # concurrent clients, one key each (as separate CLIs)


@pytest.fixture
def stack_env() -> dict[str, str]:
    """The e2e stack, keys cached 5 s (through a short Postgres outage) and no rate limit."""
    return {"KEY_CACHE_TTL_S": "5", "RATE_LIMIT_PUSHES_PER_S": "0"}


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
def workspace(db: psycopg.Connection, account: Account) -> tuple[str, list[str]]:
    """The account's workspace and LOAD_THREADS + 1 live keys (the CLI fleets use all but the last)."""
    more = [create_key(db, account.workspace_id)[1] for _ in range(LOAD_THREADS)]
    return account.workspace_id, [account.key, *more]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if CLI_TABLE:
        terminalreporter.section("fault scenarios with the CLI's retry policy (SPEC 2.5)")
        terminalreporter.write_line(HEADER)
        terminalreporter.write_line("|---|---|---|---|---|---|")
        for figures in CLI_TABLE:
            terminalreporter.write_line(figures.row())
