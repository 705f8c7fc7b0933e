"""The queue path with real Redis and Postgres: api enqueue -> RQ worker (in process) -> tables.

The worker runs in burst mode in the test process, so each test is quick and
deterministic; the end-to-end tier runs real worker processes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from redis import Redis
from rq import Queue
from rq.registry import FailedJobRegistry
from starlette.testclient import TestClient

import workers.jobs
from api.app import create_app
from schema import samples
from schema.queue import MsgpackSerializer
from schema.settings import Settings
from tests.support import count
from workers import accounts, db as worker_db
from workers.worker import make_worker


@pytest.fixture
def api_key(db: psycopg.Connection) -> str:
    accounts.create_workspace(db, "acme")
    return accounts.create_key(db, "acme")[1]


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def use_worker_settings(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Iterator[Any]:
    """Point the job's settings at the test servers; return a setter for variants."""

    def set_settings(s: Settings) -> None:
        monkeypatch.setattr(workers.jobs, "_settings", s)
        worker_db.close()

    set_settings(settings)
    yield set_settings
    worker_db.close()


def push(client: TestClient, key: str, records: dict[str, Any], push_id: str) -> Any:
    return client.post(
        "/v2/push",
        content=json.dumps({"push_id": push_id, "data": records}),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )


def run_worker(settings: Settings) -> None:
    make_worker(settings, connection=Redis.from_url(settings.redis_url)).work(burst=True)


def test_pushed_batch_is_written_by_a_worker(
    client: TestClient, api_key: str, db: psycopg.Connection, settings: Settings, use_worker_settings: Any
) -> None:
    assert push(client, api_key, samples.one_of_each(1), "p1").status_code == 202
    run_worker(settings)
    for table in samples.FACTORIES:
        assert count(db, table) == 1, table
    status, accepted = db.execute("SELECT status, accepted FROM pushes WHERE push_id = 'p1'").fetchone()  # type: ignore[misc]
    assert status == "processed" and accepted == dict.fromkeys(samples.FACTORIES, 1)


def test_a_revoked_key_stops_working_within_the_cache_ttl(
    client: TestClient, api_key: str, db: psycopg.Connection, settings: Settings
) -> None:
    import time

    assert push(client, api_key, {}, "before").status_code == 202
    [key] = accounts.list_keys(db)
    accounts.revoke_key(db, key.key_id)
    time.sleep(settings.key_cache_ttl_s + 0.1)
    resp = push(client, api_key, {}, "after")
    assert resp.status_code == 401 and "revoked" in resp.json()["error"]["message"]


def test_failed_write_is_retried_then_lands_in_the_failed_registry_with_the_push_marked_failed(
    client: TestClient, api_key: str, db: psycopg.Connection, settings: Settings, use_worker_settings: Any
) -> None:
    # Postgres refuses the batch every time: the test holds a lock the worker cannot get in 0.2 s.
    impatient = replace(settings, database_url=settings.database_url + "?options=-c%20lock_timeout%3D200")
    use_worker_settings(impatient)
    retrying = replace(settings, job_retries=2, job_retry_backoff_s=(0,))
    with TestClient(create_app(retrying)) as c:
        assert push(c, api_key, {"sessions": [samples.session(1)]}, "stuck").status_code == 202

    with psycopg.connect(settings.database_url) as locker:
        locker.execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
        run_worker(settings)  # first attempt + 2 retries, all refused
        locker.rollback()

    redis = Redis.from_url(settings.redis_url)
    failed = FailedJobRegistry(settings.queue_name, connection=redis, serializer=MsgpackSerializer)
    [job_id] = failed.get_job_ids()
    job = Queue(settings.queue_name, connection=redis, serializer=MsgpackSerializer).fetch_job(job_id)
    assert job is not None and job.retries_left == 0
    assert "LockNotAvailable" in (job.latest_result().exc_string or "")  # type: ignore[union-attr]
    status, error = db.execute("SELECT status, error FROM pushes WHERE push_id = 'stuck'").fetchone()  # type: ignore[misc]
    assert status == "failed" and error.startswith("LockNotAvailable")
    assert count(db, "sessions") == 0

    # Requeued from the failed registry (what `replay` does), it lands once.
    use_worker_settings(settings)
    failed.requeue(job_id)
    run_worker(settings)
    assert count(db, "sessions") == 1
    assert db.execute("SELECT status, error FROM pushes WHERE push_id = 'stuck'").fetchone() == ("processed", None)
