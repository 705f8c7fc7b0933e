"""Fixtures of the end-to-end tier: a real api and real workers on the test servers.

The processes get the test database and Redis from the `settings` fixture (so
tables are truncated and Redis flushed before each test), and settings that
make failures quick to observe: short job timeout, quick retries, maintenance
every second, a key cache of one second.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from redis import Redis

from ops.accounts import create_key, create_workspace
from runtime.settings import Settings
from tests.conftest import ADMIN_URL
from tests.e2e.stack import Account, Api, PostgresServer, Stack, running_stack


@pytest.fixture
def stack(settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    """Starts api and worker processes; stops every one of them at teardown, pass or fail."""
    with running_stack(settings, tmp_path) as processes:
        yield processes


@pytest.fixture
def api(stack: Stack) -> Api:
    return stack.start_api()


@pytest.fixture
def account(db: psycopg.Connection) -> Account:
    """A workspace and a live API key for it."""
    workspace_id = create_workspace(db, "e2e")
    _, key = create_key(db, workspace_id)
    return Account(workspace_id, key)


@pytest.fixture
def rq_redis(settings: Settings) -> Iterator[Redis]:
    """A Redis client on the test db, to look into RQ's registries."""
    client = Redis.from_url(settings.redis_url)
    yield client
    client.close()


@pytest.fixture
def postgres_server(database_url: str, redis_url: str) -> Iterator[PostgresServer]:
    """Control of the test PostgreSQL; it is running again after the test, whatever happened."""
    server = PostgresServer(ADMIN_URL, redis_url)
    if not (server.data_dir / "PG_VERSION").exists():
        pytest.fail(f"no PostgreSQL data directory at {server.data_dir}", pytrace=False)
    try:
        yield server
    finally:
        if server.stopped:
            server.start()
