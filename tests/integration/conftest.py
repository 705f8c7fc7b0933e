"""Fixtures of the integration tier: the app on real servers, the job's settings (the key: tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from starlette.testclient import TestClient

import workers.jobs
from api.app import create_app
from runtime.settings import Settings
from workers import db as worker_db


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The real app (lifespan run) on the test servers."""
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Settings:
    """The command line reads its settings from the environment, as in production (jobs retry at once, twice)."""
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("KEY_CACHE_TTL_S", str(settings.key_cache_ttl_s))
    monkeypatch.setenv("JOB_RETRIES", "2")
    monkeypatch.setenv("JOB_RETRY_BACKOFF_S", "0")
    return settings


@pytest.fixture
def use_worker_settings(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Iterator[Callable[[Settings], None]]:
    """Point in-process jobs at the test servers; returns a setter for variants."""

    def set_settings(s: Settings) -> None:
        monkeypatch.setattr(workers.jobs, "_settings", s)
        worker_db.close()

    set_settings(settings)
    yield set_settings
    worker_db.close()
