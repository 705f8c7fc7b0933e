"""Fixtures of the integration tier: a key, the app on real servers, the job's settings."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import psycopg
import pytest
from starlette.testclient import TestClient

import workers.jobs
from api.app import create_app
from ops import accounts
from runtime.settings import Settings
from workers import db as worker_db


@pytest.fixture
def api_key(db: psycopg.Connection) -> str:
    """A live key of workspace "acme"."""
    accounts.create_workspace(db, "acme")
    return accounts.create_key(db, "acme")[1]


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The real app (lifespan run) on the test servers."""
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def use_worker_settings(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Iterator[Callable[[Settings], None]]:
    """Point in-process jobs at the test servers; returns a setter for variants."""

    def set_settings(s: Settings) -> None:
        monkeypatch.setattr(workers.jobs, "_settings", s)
        worker_db.close()

    set_settings(settings)
    yield set_settings
    worker_db.close()
