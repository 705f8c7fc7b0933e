"""A worker takes several queued batches at once: same outcome as one by one, fewer Redis commands.

Real Redis and Postgres; the worker runs in burst mode in the test process.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from redis import Connection, ConnectionPool, Redis
from rq import Queue, get_current_job
from rq.registry import FailedJobRegistry, StartedJobRegistry
from starlette.testclient import TestClient

from api.app import create_app
from bench import samples
from queueing import stats
from queueing.rq_compat import IngestJob, MsgpackSerializer
from runtime.settings import Settings
from tests.support import Shards, count, push_json, run_burst_worker, with_lock_timeout
from workers import jobs
from workers.worker import HEARTBEAT_TTL_S, IngestWorker, make_worker

PUSHES = 12


class CountingConnection(Connection):
    """A Redis connection that counts its round trips (each send of one command or one pipeline)."""

    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        super().send_packed_command(command, check_health)


def _round_trips_to_drain(settings: Settings) -> int:
    pool = ConnectionPool.from_url(settings.redis_url, connection_class=CountingConnection)
    CountingConnection.sends = 0
    make_worker(settings, connection=Redis(connection_pool=pool)).work(burst=True)
    return CountingConnection.sends


def _queue_and_push(client: TestClient, api_key: str, n: int, prefix: str = "take") -> None:
    for i in range(n):
        assert push_json(client, api_key, {"prompts": [samples.prompt(i)]}, f"{prefix}-{i}").status_code == 202


def test_queued_batches_taken_together_land_once_each_and_rq_sees_them_finished(
    client: TestClient,
    api_key: str,
    db: psycopg.Connection,
    settings: Settings,
    use_worker_settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _queue_and_push(client, api_key, PUSHES)
    redis = Redis.from_url(settings.redis_url)
    before = redis.hgetall(stats.WRITTEN).get(b"prompts", b"0")
    # A finished job's status lives result_ttl (1 s): read what RQ recorded as each take ends.
    ended: dict[str, tuple[str, str | None]] = {}
    finish_all = IngestWorker._finish_all

    def noting_what_rq_sees(worker: IngestWorker, written: list[Any]) -> None:
        finish_all(worker, written)
        for job, *_ in written:
            fresh = IngestJob.fetch(job.id, connection=redis, serializer=MsgpackSerializer)
            result = fresh.latest_result()
            ended[fresh.meta["push_id"]] = (fresh.get_status(), result.type.name if result else None)

    monkeypatch.setattr(IngestWorker, "_finish_all", noting_what_rq_sees)

    run_burst_worker(replace(settings, worker_jobs_per_take=5))

    assert count(db, "prompts") == PUSHES
    statuses = db.execute("SELECT status, count(*) FROM pushes GROUP BY status").fetchall()
    assert statuses == [("processed", PUSHES)]
    shards = Shards(settings, redis)
    assert shards.count == 0
    assert shards.registry_ids(StartedJobRegistry) == []
    assert shards.registry_ids(FailedJobRegistry) == []
    assert sum(redis.llen(q.intermediate_queue_key) for q in shards.queues) == 0
    # What ops read: the written-records counter and RQ's per-worker totals.
    assert int(redis.hget(stats.WRITTEN, "prompts") or 0) - int(before) == PUSHES
    assert ended == {f"take-{i}": ("finished", "SUCCESSFUL") for i in range(PUSHES)}


def test_a_batch_taken_alone_from_the_shards_leaves_no_trace_in_their_intermediate_lists(
    client: TestClient, api_key: str, db: psycopg.Connection, settings: Settings, use_worker_settings: Any
) -> None:
    # A worker on several queues (the shards) moves each job to its queue's intermediate list, as
    # RQ does from one; RQ's own path then takes it off only for a worker on one queue. A job left
    # there is "rescued" by maintenance later: failed or run again although it was written.
    _queue_and_push(client, api_key, 3)
    run_burst_worker(replace(settings, worker_jobs_per_take=1))

    assert db.execute("SELECT count(*) FROM pushes WHERE status = 'processed'").fetchone() == (3,)
    redis = Redis.from_url(settings.redis_url)
    shards = Shards(settings, redis)
    assert len(shards.queues) > 1  # the worker listened on several queues
    assert {
        q.name: redis.llen(q.intermediate_queue_key) for q in shards.queues if redis.llen(q.intermediate_queue_key)
    } == {}


def test_taking_several_batches_at_once_needs_far_fewer_redis_round_trips(
    client: TestClient, api_key: str, db: psycopg.Connection, settings: Settings, use_worker_settings: Any
) -> None:
    # A worker's start and stop cost round trips of their own, more with every shard it listens
    # on (QUEUE_SHARDS): counted on an empty queue, and taken off what draining the batches costs.
    # The first empty run does the maintenance (whose lock then holds for the rest of the test).
    _round_trips_to_drain(settings)
    idle = _round_trips_to_drain(settings)
    spent = {}
    for per_take in (1, 8):
        _queue_and_push(client, api_key, PUSHES, prefix=f"take{per_take}")
        spent[per_take] = _round_trips_to_drain(replace(settings, worker_jobs_per_take=per_take)) - idle
    assert db.execute("SELECT count(*) FROM pushes WHERE status = 'processed'").fetchone() == (2 * PUSHES,)
    assert spent[8] < spent[1] / 3, (spent, idle)


def test_a_batch_that_fails_inside_a_take_is_retried_alone_and_its_neighbours_land(
    api_key: str, db: psycopg.Connection, settings: Settings, use_worker_settings: Any
) -> None:
    # Postgres refuses the sessions batch (the test holds a lock the worker cannot get in 0.2 s);
    # the prompts batches before and after it in the same take are written.
    impatient = with_lock_timeout(settings)
    use_worker_settings(impatient)
    retrying = replace(settings, job_retries=1, job_retry_backoff_s=(0,))
    with TestClient(create_app(retrying)) as c:
        assert push_json(c, api_key, {"prompts": [samples.prompt(1)]}, "before").status_code == 202
        assert push_json(c, api_key, {"sessions": [samples.session(1)]}, "stuck").status_code == 202
        assert push_json(c, api_key, {"prompts": [samples.prompt(2)]}, "after").status_code == 202

    with psycopg.connect(settings.database_url) as locker:
        locker.execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
        run_burst_worker(replace(settings, worker_jobs_per_take=8))
        locker.rollback()

    rows = dict(db.execute("SELECT push_id, status FROM pushes").fetchall())
    assert rows == {"before": "processed", "stuck": "failed", "after": "processed"}
    assert count(db, "prompts") == 2 and count(db, "sessions") == 0
    redis = Redis.from_url(settings.redis_url)
    failed = Shards(settings, redis).holding(FailedJobRegistry)  # the workspace's shard's
    [job_id] = failed.get_job_ids()
    job = IngestJob.fetch(job_id, connection=redis, serializer=MsgpackSerializer)
    assert job.retries_left == 0 and job.meta["push_id"] == "stuck"

    use_worker_settings(settings)
    failed.requeue(job_id)
    run_burst_worker(settings)
    assert count(db, "sessions") == 1
    assert db.execute("SELECT status FROM pushes WHERE push_id = 'stuck'").fetchone() == ("processed",)


def test_a_batch_left_after_a_failure_in_its_take_is_registered_afresh_before_it_runs(
    api_key: str,
    db: psycopg.Connection,
    settings: Settings,
    use_worker_settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Registered as started when the take began, a batch that runs seconds later (after a slow
    # failure before it) must not look expired to another worker's maintenance meanwhile.
    use_worker_settings(with_lock_timeout(settings, ms=1500))
    with TestClient(create_app(replace(settings, job_retries=0))) as c:
        assert push_json(c, api_key, {"sessions": [samples.session(1)]}, "stuck").status_code == 202
        assert push_json(c, api_key, {"prompts": [samples.prompt(1)]}, "after").status_code == 202
    redis = Redis.from_url(settings.redis_url)
    shard = Shards(settings, redis).holding_jobs()  # the workspace's shard
    started = StartedJobRegistry(shard.name, connection=redis, serializer=MsgpackSerializer)
    seen: dict[str, float] = {}
    real = jobs._write_queued

    def noting_its_registration(batch: Any) -> Any:
        job = get_current_job()
        if batch.push_id == "after" and job is not None:  # run one by one, after the take failed
            [expires] = [score for member, score in redis.zscan_iter(started.key) if member.startswith(job.id.encode())]
            seen["left"] = expires - time.time()
        return real(batch)

    monkeypatch.setattr(jobs, "_write_queued", noting_its_registration)
    with psycopg.connect(settings.database_url) as locker:
        locker.execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
        run_burst_worker(replace(settings, worker_jobs_per_take=8))
        locker.rollback()

    assert db.execute("SELECT status FROM pushes WHERE push_id = 'after'").fetchone() == ("processed",)
    ttl = HEARTBEAT_TTL_S  # renewed as it starts, and every few seconds while it runs
    assert seen["left"] > ttl - 1.0, f"{seen['left']:.1f} s left of {ttl} s: registered when the take began"


def test_a_job_of_another_kind_in_a_backlog_runs_on_its_own_and_the_batches_around_it_land(
    client: TestClient,
    api_key: str,
    db: psycopg.Connection,
    settings: Settings,
    use_worker_settings: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _queue_and_push(client, api_key, 3, prefix="before")
    redis = Redis.from_url(settings.redis_url)
    shard = Shards(settings, redis).holding_jobs()  # the workspace's shard: in its backlog
    queue = Queue(shard.name, connection=redis, serializer=MsgpackSerializer, job_class=IngestJob)
    other = queue.enqueue("bench.samples.one_of_each", 3)
    _queue_and_push(client, api_key, 3, prefix="after")

    run_burst_worker(replace(settings, worker_jobs_per_take=8))

    assert db.execute("SELECT count(*) FROM pushes WHERE status = 'processed'").fetchone() == (6,)
    done = IngestJob.fetch(other.id, connection=redis, serializer=MsgpackSerializer)
    assert done.get_status() == "finished"
    assert done.return_value() == samples.one_of_each(3)
    # It was never written as a batch (which would fail, then fall back to RQ's own path).
    assert not [r for r in caplog.records if "failed in a take" in r.getMessage()]
