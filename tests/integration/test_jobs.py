"""The queue path with real Redis and Postgres: api enqueue -> RQ worker (in process) -> tables.

The worker runs in burst mode in the test process, so each test is quick and
deterministic; the end-to-end tier runs real worker processes.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import psycopg
from redis import Redis
from rq import Queue
from rq.registry import FailedJobRegistry
from starlette.testclient import TestClient

from api.app import create_app
from bench import samples
from ops import accounts
from queueing.rq_compat import MsgpackSerializer
from runtime.settings import Settings
from schema.batches import INGEST_JOB
from tests.support import Shards, count, legacy_payload, push_json, run_burst_worker, with_lock_timeout

push = push_json
run_worker = run_burst_worker


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
    impatient = with_lock_timeout(settings)
    use_worker_settings(impatient)
    retrying = replace(settings, job_retries=2, job_retry_backoff_s=(0,))
    with TestClient(create_app(retrying)) as c:
        assert push(c, api_key, {"sessions": [samples.session(1)]}, "stuck").status_code == 202

    with psycopg.connect(settings.database_url) as locker:
        locker.execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
        run_worker(settings)  # first attempt + 2 retries, all refused
        locker.rollback()

    redis = Redis.from_url(settings.redis_url)
    failed = Shards(settings, redis).holding(FailedJobRegistry)  # the workspace's shard's
    [job_id] = failed.get_job_ids()
    job = Queue(failed.name, connection=redis, serializer=MsgpackSerializer).fetch_job(job_id)
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


def _wait_for(what: str, check: Any, timeout_s: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.1)


def test_a_full_redis_spools_the_push_and_the_drainer_queues_it_once_redis_has_room(
    client: TestClient, api_key: str, settings: Settings, db: psycopg.Connection, use_worker_settings: Any
) -> None:
    # When queued batches fill Redis's maxmemory, `noeviction` makes Redis refuse the enqueue
    # script (OOM). The CLI would drop a 503 for good (SPEC 2.5): the api spools the batch,
    # answers 202, and drains it into the queue once Redis has room. Nothing is evicted.
    redis = Redis.from_url(settings.redis_url)
    queue = Shards(settings, redis)  # the batches go to the workspace's shard
    assert push(client, api_key, {"prompts": [samples.prompt(1)]}, "fits").status_code == 202
    policy = redis.config_get("maxmemory-policy")["maxmemory-policy"]
    redis.config_set("maxmemory-policy", "noeviction")
    maxmemory = redis.config_get("maxmemory")["maxmemory"]
    redis.config_set("maxmemory", 1)  # below what Redis already uses: every write is refused
    try:
        resp = push(client, api_key, {"prompts": [samples.prompt(2)]}, "does-not-fit")
        assert resp.status_code == 202, resp.text
        assert push(client, api_key, {"prompts": [samples.prompt(2)]}, "does-not-fit").json()["duplicate"] is True
        assert queue.count == 1
        assert client.app.state.spool.spool.stats().batches == 1  # type: ignore[attr-defined]
    finally:
        redis.config_set("maxmemory", maxmemory)
        redis.config_set("maxmemory-policy", policy)
    _wait_for("the drainer moved the spooled push into the queue", lambda: queue.count == 2)
    assert client.app.state.spool.spool.stats().batches == 0  # type: ignore[attr-defined]
    # In the same queue as the push that fitted, its workspace's shard: a spooled push gets the same fairness.
    assert queue.holding_jobs().count == 2
    run_worker(settings)
    assert count(db, "prompts") == 2
    statuses = db.execute("SELECT push_id, status FROM pushes ORDER BY push_id").fetchall()
    assert statuses == [("does-not-fit", "processed"), ("fits", "processed")]


def test_past_the_memory_headroom_pushes_go_to_the_spool_so_workers_can_still_drain_redis(
    client: TestClient, api_key: str, settings: Settings
) -> None:
    # A full `noeviction` Redis refuses RQ's bookkeeping writes too, so the workers could not
    # drain the queue that filled it: past REDIS_MEMORY_HIGH_PCT the api spools instead.
    import time

    redis = Redis.from_url(settings.redis_url)
    queue = Shards(settings, redis)  # the batch goes to the workspace's shard
    used = int(redis.info("memory")["used_memory"])
    maxmemory = redis.config_get("maxmemory")["maxmemory"]
    redis.config_set("maxmemory", int(used / 0.9))  # ~90 % in use: over the 80 % bound, under the cap
    try:
        time.sleep(1.5)  # the api reads Redis's memory use once a second
        ready = client.get("/readyz")
        resp = push(client, api_key, {"prompts": [samples.prompt(1)]}, "near-full")
        assert resp.status_code == 202, resp.text
        assert queue.count == 0
        assert ready.status_code == 200 and ready.json()["pushes_go_to"] == "spool"
        assert any("maxmemory (REDIS_MEMORY_HIGH_PCT=80)" in d for d in ready.json()["degraded"])
    finally:
        redis.config_set("maxmemory", maxmemory)
    _wait_for("the drainer moved the spooled push into the queue", lambda: queue.count == 1)
    assert push(client, api_key, {"prompts": [samples.prompt(1)]}, "near-full").status_code == 200


def test_a_batch_queued_as_json_by_an_earlier_build_is_written_by_a_worker(
    db: psycopg.Connection, settings: Settings, use_worker_settings: Any
) -> None:
    # Jobs outlive deploys (the queue, the failed registry awaiting replay): a worker reads both forms.
    # Earlier builds queued to QUEUE_NAME itself, the unsharded queue the workers still take from.
    records = {"sessions": [samples.session(1)], "prompts": [samples.prompt(1), samples.prompt(2)]}
    queue = Queue(settings.queue_name, connection=Redis.from_url(settings.redis_url), serializer=MsgpackSerializer)
    queue.enqueue(INGEST_JOB, legacy_payload(records, "p-old", "acme"))
    run_worker(settings)
    assert count(db, "sessions") == 1 and count(db, "prompts") == 2 and count(db, "quarantine") == 1
    status, accepted = db.execute("SELECT status, accepted FROM pushes WHERE push_id = 'p-old'").fetchone()  # type: ignore[misc]
    assert status == "processed" and accepted == {"sessions": 1, "prompts": 2}


def _at_depth(frames: int, fn: Any) -> Any:
    """Call fn with `frames` more frames on the stack (a worker's stack is not the api's)."""
    return fn() if frames == 0 else _at_depth(frames - 1, fn)


def test_a_record_nested_as_deep_as_the_api_reads_is_written_by_a_worker_with_less_stack_to_spare(
    client: TestClient, api_key: str, db: psycopg.Connection, settings: Settings, use_worker_settings: Any
) -> None:
    import sys

    from workers.worker import raise_recursion_limit

    # An unknown field of a valid record, nested just under what the api's decoder follows:
    # the push is wholly valid, so it is queued as its body, and the worker decodes that body.
    record = samples.prompt(1)
    record["future_field"] = "MARK"
    body = json.dumps({"push_id": "p-deep", "data": {"prompts": [record]}}).replace('"MARK"', "[" * 900 + "]" * 900)
    resp = client.post("/v2/push", content=body, headers={"Authorization": f"Bearer {api_key}"})
    assert resp.status_code == 202 and resp.json()["accepted"] == {"prompts": 1}
    limit = sys.getrecursionlimit()
    try:
        raise_recursion_limit()  # as every worker process does when it starts
        _at_depth(300, lambda: run_worker(settings))
    finally:
        sys.setrecursionlimit(limit)
    assert count(db, "prompts") == 1
    assert db.execute("SELECT status FROM pushes WHERE push_id = 'p-deep'").fetchone() == ("processed",)
