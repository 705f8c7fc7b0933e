"""`selftune-ingest workspace delete` on real servers: every trace of one workspace goes, the other stays.

The workspace to delete holds rows in every table (each record type, quarantine, pushes, keys, a
device code), a batch queued in Redis, a failed one, a spooled one and its first answers in Redis;
the other workspace holds data too, and a batch still queued, which must be untouched.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from redis import Redis
from starlette.testclient import TestClient

from api.app import create_app
from bench import samples
from ops import accounts, cli, erasure
from queueing.rq_compat import ingest_queue, job_metas
from runtime.settings import Settings
from spool.store import Spool, count_workspace
from store.keys import KEY_MIRROR, parse_mirror_value
from tests.support import new_account, push_json, run_burst_worker


def delete_cli(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert cli.main(["--json", "workspace", "delete", *args]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def rows_of(db: psycopg.Connection, workspace_id: str) -> dict[str, int]:
    return erasure.count_rows(db, workspace_id)


def queued_of(redis: Redis, settings: Settings, workspace_id: str) -> list[str]:
    queue = ingest_queue(settings.queues.for_workspace(workspace_id), redis)  # where the api queues its pushes
    return erasure.waiting_batches(redis, queue, workspace_id)


def mirrored(redis: Redis) -> dict[str, str]:
    """Key id -> workspace id of every mirror entry."""
    entries = (parse_mirror_value(v) for v in redis.hvals(KEY_MIRROR))
    return {e[0]: e[1] for e in entries if e is not None}


@pytest.fixture
def two_workspaces(db: psycopg.Connection, cli_env: Settings, use_worker_settings: Any) -> dict[str, Any]:
    """alpha (to delete) and beta, each with written data, a queued batch and first answers; alpha more."""
    keys, ids = {}, {}
    for name in ("alpha", "beta"):
        ids[name] = accounts.create_workspace(db, name)
        key_id, keys[name] = accounts.create_key(db, name)
        accounts.mirror_key(db, Redis.from_url(cli_env.redis_url), key_id)
    with TestClient(create_app(cli_env)) as c:
        for name, n in (("alpha", 1), ("beta", 2)):
            records = samples.one_of_each(n)
            records["prompts"].append({**samples.prompt(n + 100), "prompt_kind": 7})  # quarantined
            assert push_json(c, keys[name], records, f"{name}-1").status_code == 202
        run_burst_worker(cli_env)  # written
        for name, n in (("alpha", 3), ("beta", 4)):  # queued, not written
            assert push_json(c, keys[name], samples.one_of_each(n), f"{name}-2").status_code == 202
    # alpha also has a batch in the api's spool and a device code approved for it.
    spool = Spool(cli_env.spool_path, cli_env.spool_max_bytes)
    assert spool.put(ids["alpha"], "alpha-spooled", "key_x", b"payload", b"{}", 1) is None
    spool.close()
    db.execute(
        "INSERT INTO device_codes (device_code_hash, user_code, client_id, status, workspace_id, interval_s, expires_at)"
        " VALUES ('h1', 'ABCD-EFGH', 'selftune-cli', 'approved', %s, 5, now() + interval '10 minutes')",
        (ids["alpha"],),
    )
    return {"keys": keys, "ids": ids}


def test_delete_removes_every_trace_of_one_workspace_and_leaves_the_other(
    two_workspaces: dict[str, Any], cli_env: Settings, db: psycopg.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    alpha, beta = two_workspaces["ids"]["alpha"], two_workspaces["ids"]["beta"]
    redis = Redis.from_url(cli_env.redis_url)
    before = rows_of(db, alpha)
    assert all(n > 0 for n in before.values()), before  # every table holds some of alpha's rows
    beta_before = rows_of(db, beta)
    beta_queued = queued_of(redis, cli_env, beta)
    assert len(queued_of(redis, cli_env, alpha)) == 1 and len(beta_queued) == 1
    beta_redis = sorted(erasure.workspace_keys(redis, beta))

    dry = delete_cli(capsys, "alpha", "--dry-run")
    assert dry["rows"] == before and dry["queued_batches"] == 1 and dry["spooled_batches"] == 1
    assert dry["redis_keys"] == 2 and dry["mirror_entries"] == 1  # two first answers, one key
    assert rows_of(db, alpha) == before and len(queued_of(redis, cli_env, alpha)) == 1  # a dry run changes nothing

    done = delete_cli(capsys, "alpha", "--yes", "--batch-rows", "1")  # one row per DELETE: the loop is exercised
    assert done["rows"] == before and done["queued_batches"] == 1 and done["spooled_batches"] == 1
    assert done["waited_s"] >= cli_env.key_cache_ttl_s  # the apis' key caches had time to forget the key
    assert all(n == 0 for n in rows_of(db, alpha).values())
    assert queued_of(redis, cli_env, alpha) == [] and count_workspace(cli_env.spool_path, alpha) == 0
    assert erasure.workspace_keys(redis, alpha) == []
    assert alpha not in mirrored(redis).values()

    # beta is untouched: its rows, its queued batch, its first answers, its key.
    assert rows_of(db, beta) == beta_before
    assert queued_of(redis, cli_env, beta) == beta_queued
    assert sorted(erasure.workspace_keys(redis, beta)) == beta_redis
    assert beta in mirrored(redis).values()
    with TestClient(create_app(cli_env)) as c:
        # alpha's key is refused now; beta's still pushes.
        assert push_json(c, two_workspaces["keys"]["alpha"], samples.one_of_each(9), "alpha-3").status_code == 401
        assert push_json(c, two_workspaces["keys"]["beta"], samples.one_of_each(9), "beta-3").status_code == 202
    run_burst_worker(cli_env)  # the queue drains: beta's two batches written, nothing of alpha's
    assert all(n == 0 for n in rows_of(db, alpha).values())
    assert rows_of(db, beta)["pushes"] == beta_before["pushes"] + 2


@dataclass
class HeldWorker:
    """A worker process inside one of a workspace's batches, held there by an uncommitted push row."""

    workspace_id: str
    queue: Any
    worker: subprocess.Popen[bytes]
    blocker: psycopg.Connection

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):  # exited already (the test let it finish)
            os.killpg(self.worker.pid, signal.SIGKILL)  # its own session: the supervisor and its worker
        self.worker.wait(timeout=30)
        self.blocker.close()


def hold_a_worker(db: psycopg.Connection, settings: Settings, push_id: str) -> HeldWorker:
    """Workspace alpha pushes `push_id`; a worker takes it and waits on the push row this test holds uncommitted."""
    account = new_account(db, "alpha")
    alpha, key = account.workspace_id, account.key
    with TestClient(create_app(settings)) as c:
        assert push_json(c, key, samples.one_of_each(1), push_id).status_code == 202
    blocker = psycopg.connect(settings.database_url)  # the worker's claim of the push waits for this row
    blocker.execute(
        "INSERT INTO pushes (workspace_id, push_id, status, received_at) VALUES (%s, %s, 'processed', %s)",
        (alpha, push_id, datetime.now(UTC)),
    )
    env = {**os.environ, "DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url}
    worker = subprocess.Popen([sys.executable, "-m", "ops", "worker", "--burst"], env=env, start_new_session=True)
    shard = ingest_queue(settings.queues.for_workspace(alpha), Redis.from_url(settings.redis_url))
    held = HeldWorker(alpha, shard, worker, blocker)
    deadline = time.monotonic() + 30
    while not erasure.running_batches(held.queue.connection, held.queue, alpha):
        if time.monotonic() > deadline:
            held.close()
            raise AssertionError("the worker never took the batch")
        time.sleep(0.05)
    return held


def test_delete_waits_for_a_batch_a_worker_is_writing_then_deletes_its_rows(
    db: psycopg.Connection, cli_env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """A worker holding one of its batches when the delete starts: its rows are deleted once it has written them."""
    held = hold_a_worker(db, cli_env, "late")
    try:
        release = threading.Timer(1.5, held.blocker.rollback)  # the worker then writes the batch
        release.start()
        done = delete_cli(capsys, "alpha", "--yes", "--grace", "0", "--settle", "60")
        release.join()
        assert held.worker.wait(timeout=60) == 0
    finally:
        held.close()
    assert done["running_batches"] == 1 and done["rows"]["prompts"] == 1  # written while the delete waited
    assert all(n == 0 for n in rows_of(db, held.workspace_id).values())
    assert job_metas(held.queue.connection, held.queue.get_job_ids()) == {}


def test_deleting_an_unknown_name_fails_and_changes_nothing(
    db: psycopg.Connection, cli_env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    beta = accounts.create_workspace(db, "beta")
    assert cli.main(["--json", "workspace", "delete", "nope", "--yes"]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "not_found"
    assert rows_of(db, beta)["workspaces"] == 1


def test_delete_asks_first_and_a_no_keeps_everything(
    db: psycopg.Connection, cli_env: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    alpha = accounts.create_workspace(db, "alpha")
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    assert cli.main(["workspace", "delete", "alpha"]) == 1
    assert "nothing deleted" in capsys.readouterr().err
    assert rows_of(db, alpha)["workspaces"] == 1


def test_the_spool_drops_a_workspaces_batches_and_streamed_pushes_and_frees_their_bytes(tmp_path: Any) -> None:
    spool = Spool(tmp_path / "spool.sqlite3", 10_000_000)
    try:
        assert spool.put("ws_a", "p1", "k", b"x" * 100, b"{}", 1) is None
        assert spool.put("ws_b", "p2", "k", b"y" * 100, b"{}", 1) is None
        streamed = spool.begin_streamed("ws_a", "k")  # complete, and one still uploading
        spool.put_streamed_chunk(streamed, 0, b"z" * 500)
        assert spool.finish_streamed(streamed, "p3", b"head", b"{}", 3) is None
        spool.put_streamed_chunk(spool.begin_streamed("ws_a", "k"), 0, b"w" * 50)
        assert count_workspace(spool.path, "ws_a") == 3
        assert spool.drop_workspace("ws_a") == 3
        assert count_workspace(spool.path, "ws_a") == 0
        stats = spool.stats()
        assert (stats.batches, stats.bytes) == (1, 102)  # only ws_b's batch is held, and counted
    finally:
        spool.close()


def test_a_batch_left_by_a_dead_worker_is_dropped_not_retried_later(
    db: psycopg.Connection, cli_env: Settings, capsys: pytest.CaptureFixture[str], use_worker_settings: Any
) -> None:
    """A worker killed inside one of its batches: RQ's maintenance would retry it after the delete; it must not."""
    held = hold_a_worker(db, cli_env, "orphan")
    held.close()  # SIGKILLed inside the batch
    # Its claim lapses (as it would once its TTL ran out, nobody renewing it).
    redis, queue = held.queue.connection, held.queue
    registry = queue.started_job_registry
    redis.zadd(registry.key, dict.fromkeys(redis.zrange(registry.key, 0, -1), time.time() - 1))

    done = delete_cli(capsys, "alpha", "--yes", "--grace", "0", "--settle", "5")
    assert done["queued_batches"] == 1 and done["running_batches"] == 0 and done["still_running"] == 0
    registry.cleanup()  # RQ's maintenance: a lapsed claim is retried, unless its job is gone
    assert queue.get_job_ids() == [] and registry.get_job_ids(cleanup=False) == []
    run_burst_worker(cli_env)
    assert all(n == 0 for n in rows_of(db, held.workspace_id).values())
