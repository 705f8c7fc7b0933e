"""The queue watch's background task always stops when the api shuts down.

The CI run of session 4 hung for 90 minutes in a lifespan shutdown: the watch
was cancelled while a Redis command was in flight, the cancellation was lost
(Python 3.11's asyncio.wait_for hands back the command's error instead when both
are ready at once, bpo-42130), and the loop ran on while shutdown waited for it.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from starlette.testclient import TestClient

from api import background
from api.app import create_app
from api.backpressure import QueueWatch
from runtime.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
# A bound that only matters when the code under test hangs; a passing test takes milliseconds.
HANG_S = 10.0


class AbsorbingRedis(fakeredis.FakeAsyncRedis):
    """A client that answers a command it was cancelled in, as the Redis clients do at times on Python 3.11."""

    in_flight_s = 0.05
    absorb = 1  # cancellations absorbed (answering anyway); later ones are raised
    stuck = False  # absorb every cancellation and never answer, until cleared

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        while True:
            try:
                await asyncio.sleep(self.in_flight_s)
            except asyncio.CancelledError:
                if self.absorb <= 0 and not self.stuck:
                    raise
                self.absorb -= 1
            if not self.stuck:
                return await super().execute_command(*args, **options)


def settings() -> Settings:
    return Settings.from_env()


async def start_and_stop(redis: AbsorbingRedis) -> tuple[asyncio.Task[None], bool]:
    """Start a watch, stop it while its first command is in flight: (its task, whether stop() returned)."""
    watch = QueueWatch(settings(), redis)
    watch.start()
    task = watch._task
    assert task is not None
    await asyncio.sleep(redis.in_flight_s / 5)
    stopping = asyncio.create_task(watch.stop())
    done, _ = await asyncio.wait({stopping}, timeout=HANG_S)
    redis.stuck = False  # lets a stuck task end, so that asyncio.run can close its loop
    await asyncio.wait({task}, timeout=HANG_S)
    return task, bool(done)


def test_stop_ends_the_watch_though_the_client_absorbs_the_cancellation(caplog: pytest.LogCaptureFixture) -> None:
    task, returned = asyncio.run(start_and_stop(AbsorbingRedis(server=fakeredis.FakeServer())))
    assert returned, "stop() returned"
    assert task.cancelled(), "the watch ended as cancelled"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], "it ended by itself, not left behind"


def test_stop_returns_even_if_the_watch_never_ends(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(background, "STOP_WAIT_S", 0.2)
    redis = AbsorbingRedis(server=fakeredis.FakeServer())
    redis.stuck = True
    _, returned = asyncio.run(start_and_stop(redis))
    assert returned, "stop() returned"
    assert "queue-watch did not stop within 0.2 s; left behind" in caplog.text


def cycle_lifespans(cycles: int) -> None:
    """Start the app and shut it down `cycles` times, each shutdown a little later after startup.

    The delays sweep the first 3 ms, where the watch's first snapshot is in flight.
    """
    server = fakeredis.FakeServer()
    for i in range(cycles):
        with TestClient(create_app(settings(), redis=fakeredis.FakeAsyncRedis(server=server), keys=None)):
            threading.Event().wait(0.003 * i / cycles)


def test_the_app_shuts_down_however_its_lifespan_is_timed() -> None:
    """Without the fix, this hung in each of 5 runs (fakeredis answers the watch's INFO with
    an error, and a cancellation landing then came back as that error 4 times in 5).

    In a child process: a hung shutdown leaves a thread that would keep this one from exiting.
    """
    code = "from tests.unit.test_backpressure import cycle_lifespans; cycle_lifespans(150)"
    try:
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("an api shutdown hung")
