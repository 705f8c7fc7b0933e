"""Fixtures of the unit tier: the app in-process on one fake Redis server (no servers needed).

`settings` here replaces the root one (which needs the test servers); a module
that wants other limits overrides it again.
"""

from __future__ import annotations

from collections.abc import Iterator

import fakeredis
import pytest
from rq import Queue
from starlette.testclient import TestClient

from queueing.rq_compat import MsgpackSerializer
from runtime.settings import Settings
from tests.unit.fuzzing import FuzzTarget, fuzz_settings
from tests.unit.inprocess import WORKSPACE, make_client


@pytest.fixture
def settings() -> Settings:
    """The settings from the environment, as the app reads them."""
    return Settings.from_env()


@pytest.fixture
def server() -> fakeredis.FakeServer:
    """One fake Redis server, shared by the app's client and the test's."""
    return fakeredis.FakeServer()


@pytest.fixture
def client(settings: Settings, server: fakeredis.FakeServer) -> Iterator[TestClient]:
    """The app (lifespan run) on `server`, knowing the keys of tests/unit/inprocess.py."""
    with make_client(settings, fakeredis.FakeAsyncRedis(server=server)) as c:
        yield c


@pytest.fixture
def queue(settings: Settings, server: fakeredis.FakeServer) -> Queue:
    """The queue of WORKSPACE's shard on `server`, to read back what the app enqueued."""
    return Queue(
        settings.queues.for_workspace(WORKSPACE),
        connection=fakeredis.FakeRedis(server=server),
        serializer=MsgpackSerializer,
    )


@pytest.fixture(scope="module")
def target() -> Iterator[FuzzTarget]:
    """The fuzz harness's app, running, shared by a module's tests (hypothesis examples flush Redis, not the app)."""
    fuzz = FuzzTarget(fuzz_settings())
    with fuzz.client:
        yield fuzz
