"""Fixtures shared by every tier.

Servers: integration and end-to-end tests use the real Redis and PostgreSQL
started by `scripts/services.sh up test` (ports 56379 and 55432; override with
TEST_REDIS_URL and TEST_DATABASE_URL). Without them a test is skipped locally,
and fails loudly under CI=true: CI must never pass by skipping.

Each test gets a clean database (every table truncated) and a flushed Redis db.
Shared here: `account` (a workspace with a live key) and its `api_key`; each
tier's conftest adds the tier's own way in (tests/README.md).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import replace

import psycopg
import pytest
from redis import Redis

from runtime.settings import Settings
from store.migrate import migrate
from tests.support import Account, new_account

IN_CI = os.environ.get("CI", "").lower() == "true"
ADMIN_URL = os.environ.get("TEST_ADMIN_DATABASE_URL", "postgresql://postgres@127.0.0.1:55432/postgres")
DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:55432/selftune_test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:56379/1")

# Every table the migrations made, read from the catalogue (so a new table is reset too), but the
# migrations' own bookkeeping: the database stays migrated.
_ALL_TABLES = """
SELECT string_agg(format('%I.%I', n.nspname, c.relname), ', ')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND c.relname <> 'schema_migrations'
"""


@pytest.fixture(autouse=True)
def _spool_of_its_own(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's apis (in-process or started) spool to a file of the test's own, never the dev spool."""
    monkeypatch.setenv("SPOOL_PATH", str(tmp_path_factory.mktemp("spool") / "api-spool.sqlite3"))


def missing_server(what: str, exc: Exception) -> None:
    message = f"{what} is not reachable ({exc}); start it with 'scripts/services.sh up test' or run 'make test'"
    if IN_CI:
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def database_url() -> str:
    """A migrated test database (created once per run)."""
    try:
        with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3) as admin:
            name = psycopg.conninfo.conninfo_to_dict(DATABASE_URL)["dbname"]
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        missing_server("PostgreSQL", exc)
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        migrate(conn)
    return DATABASE_URL


@pytest.fixture
def empty_database_url(database_url: str) -> Iterator[str]:
    """A database of its own, not migrated, dropped after the test."""
    name = f"fresh_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield DATABASE_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    """A connection to the test database, emptied before the test."""
    with psycopg.connect(database_url, autocommit=True, options="-c timezone=UTC") as conn:
        row = conn.execute(_ALL_TABLES).fetchone()
        assert row is not None and row[0], "the test database has no tables: did the migrations run?"
        conn.execute(f"TRUNCATE {row[0]}")
        yield conn


@pytest.fixture
def account(db: psycopg.Connection) -> Account:
    """A workspace named "acme" and a live API key for it."""
    return new_account(db, "acme")


@pytest.fixture
def api_key(account: Account) -> str:
    """The live key of `account`, for tests that need only the key."""
    return account.key


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A flushed Redis database, flushed again after the test."""
    client = Redis.from_url(REDIS_URL)
    try:
        client.flushdb()
    except Exception as exc:
        missing_server("Redis", exc)
    yield REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture
def settings(db: psycopg.Connection, redis_url: str) -> Settings:
    """Settings pointing at the test servers, with quick retries."""
    return replace(
        Settings.from_env(),
        database_url=DATABASE_URL,
        redis_url=redis_url,
        job_retries=2,
        job_retry_backoff_s=(1,),
        key_cache_ttl_s=0.5,
    )
