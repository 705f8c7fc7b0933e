"""Fixtures of the end-to-end tier (and of its faults/ folder): real api and worker processes on the test servers.

The processes get the test database and Redis from the `settings` fixture (so
tables are truncated and Redis flushed before each test), and settings that
make failures quick to observe: short job timeout, quick retries, maintenance
every second, a key cache of one second. A folder changes them by overriding
`stack_env` (faults/ does).

`servers` stops, kills and restarts the test Redis and PostgreSQL for real;
whatever a test took down is running again after it, pass or fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from redis import Redis
from redis.exceptions import RedisError

from runtime.settings import Settings
from tests.conftest import missing_server
from tests.e2e.servers import Servers
from tests.e2e.stack import Api, Stack, running_stack


@pytest.fixture
def stack_env() -> dict[str, str]:
    """Environment of this tier's processes on top of `process_env`'s (none here)."""
    return {}


@pytest.fixture
def stack(settings: Settings, tmp_path: Path, stack_env: dict[str, str]) -> Iterator[Stack]:
    """Starts api and worker processes; stops every one of them at teardown, pass or fail."""
    with running_stack(settings, tmp_path, **stack_env) as processes:
        yield processes


@pytest.fixture
def api(stack: Stack) -> Api:
    return stack.start_api()


@pytest.fixture
def rq_redis(settings: Settings) -> Iterator[Redis]:
    """A Redis client on the test db, to look into RQ's registries (timeouts: Redis may be killed meanwhile)."""
    client = Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
    yield client
    client.close()


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
