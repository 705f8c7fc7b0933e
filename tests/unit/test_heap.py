"""The startup heap is kept out of the cyclic GC's full collections (runtime.heap)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import fakeredis
import pytest
from starlette.testclient import TestClient

from api.app import create_app
from runtime.heap import freeze_startup_heap
from runtime.settings import Settings
from tests.unit.test_push_api import MemoryKeys


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # a test process makes many apps: never keep their garbage


def test_freeze_leaves_full_collections_only_what_is_new(unfrozen: None) -> None:
    assert len(gc.get_objects()) > 10_000  # everything imported: what every full collection walked
    frozen = freeze_startup_heap()
    assert frozen > 10_000
    made_after = [[i] for i in range(100)]
    tracked = gc.get_objects()
    assert len(tracked) < 1_000  # a full collection now walks these, not the whole process
    assert any(obj is made_after[0] for obj in tracked)


def test_api_freezes_its_heap_once_started_in_a_real_process(unfrozen: None) -> None:
    app = create_app(Settings.from_env(), redis=fakeredis.FakeAsyncRedis(), keys=MemoryKeys({}))
    assert app.state.freeze_heap is False  # given settings: a test app never freezes
    app.state.freeze_heap = True  # as create_app() sets it in a real process
    with TestClient(app) as client:
        assert gc.get_freeze_count() > 10_000
        assert client.get("/healthz").status_code == 200
