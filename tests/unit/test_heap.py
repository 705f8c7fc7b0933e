"""The startup heap is kept out of the cyclic GC's full collections (runtime.heap)."""

from __future__ import annotations

import gc
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import fakeredis
import pytest
from starlette.testclient import TestClient

from api.app import create_app
from runtime.heap import freeze_startup_heap
from runtime.settings import Settings
from tests.unit.inprocess import MemoryKeys

REPO = Path(__file__).resolve().parents[2]


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


# Run in a process of its own: create_app() without settings is how uvicorn's factory calls it in
# production, and it configures the process's logging, which must not leak into this test run.
REAL_PROCESS = """
import gc
import fakeredis
from starlette.testclient import TestClient
from api.app import create_app
from tests.unit.inprocess import MemoryKeys
app = create_app(redis=fakeredis.FakeAsyncRedis(), keys=MemoryKeys({}))
assert gc.get_freeze_count() == 0, "frozen before startup"
with TestClient(app) as client:
    assert client.get("/healthz").status_code == 200
    print("frozen", gc.get_freeze_count())
"""


def test_api_freezes_its_heap_once_started_in_a_real_process() -> None:
    done = subprocess.run(
        [sys.executable, "-c", REAL_PROCESS], capture_output=True, text=True, timeout=120, cwd=REPO, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    frozen = re.search(r"^frozen (\d+)$", done.stdout, re.MULTILINE)
    assert frozen is not None, done.stdout
    assert int(frozen[1]) > 10_000


def test_an_app_given_its_settings_never_freezes_its_heap(unfrozen: None) -> None:
    app = create_app(Settings.from_env(), redis=fakeredis.FakeAsyncRedis(), keys=MemoryKeys({}))
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        assert gc.get_freeze_count() == 0  # a test process makes many apps: never keep their garbage
