"""RQ's internals that queueing/rq_compat.py reaches into, checked against the installed RQ.

Each test names what it guards. One failing after an RQ upgrade means
rq_compat.py must be revisited for that RQ before it is deployed: the names,
signatures, key formats and hash fields asserted here are what our enqueue
script, our queue snapshot and our worker's take bookkeeping rely on, and RQ
documents none of them.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import tomllib
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import rq
from packaging.requirements import Requirement
from rq import Queue, SimpleWorker
from rq.executions import Execution
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry, clean_registries
from rq.scheduler import SCHEDULER_KEY_TEMPLATE, RQScheduler
from rq.scripts import release_lock
from rq.serializers import DefaultSerializer, JSONSerializer
from rq.suspension import WORKERS_SUSPENDED
from rq.worker import BaseWorker
from rq.worker_registration import WORKERS_BY_QUEUE_KEY, clean_worker_registry

from api.enqueue import Enqueuer
from queueing import rq_compat
from queueing.queue_state import read_snapshot
from queueing.rq_compat import IngestJob, MsgpackSerializer
from runtime.settings import Settings
from schema.batches import FAILURE_CALLBACK, INGEST_JOB, QueuedBatch, decode_batch, encode_batch, job_description
from workers.worker import make_worker


def params(func: Callable[..., Any]) -> tuple[str, ...]:
    return tuple(inspect.signature(func).parameters)


def test_rq_is_the_tested_major() -> None:
    assert rq_compat.rq_major() == rq_compat.TESTED_RQ_MAJOR, (
        f"RQ {rq.__version__} is installed; queueing/rq_compat.py is written and tested for RQ"
        f" {rq_compat.TESTED_RQ_MAJOR}.x. Check every reach listed in this file against the new RQ first."
    )


def test_pyproject_pins_rq_to_the_tested_major() -> None:
    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    [rq_req] = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "rq"]
    major = rq_compat.TESTED_RQ_MAJOR
    assert f"{major}.0.0" in rq_req.specifier and f"{major}.99" in rq_req.specifier, rq_req
    assert f"{major + 1}.0.0" not in rq_req.specifier and f"{major - 1}.99" not in rq_req.specifier, rq_req


@pytest.mark.parametrize(
    ("func", "expected"),
    [
        (Job._handle_success, ("self", "result_ttl", "pipeline", "worker_name", "execution_id")),
        (Job.prepare_for_execution, ("self", "worker_name", "pipeline")),
        (Job.heartbeat, ("self", "timestamp", "ttl", "pipeline", "xx")),
        (Job.cleanup, ("self", "ttl", "pipeline", "remove_from_queue")),
        (Job.get_result_ttl, ("self", "default_ttl")),
        (Job.fetch_many, ("job_ids", "connection", "serializer")),
        (Job.restore, ("self", "raw_data")),
        (Job.to_dict, ("self", "include_meta", "include_result")),
        (Execution.create, ("job", "ttl", "pipeline", "worker_name")),
        (Execution.heartbeat, ("self", "started_job_registry", "ttl", "pipeline")),
        (BaseWorker.cleanup_execution, ("self", "job", "pipeline", "execution")),
        (BaseWorker.increment_successful_job_count, ("self", "pipeline")),
        (BaseWorker.increment_total_working_time, ("self", "job_execution_time", "pipeline")),
        (BaseWorker.heartbeat, ("self", "timeout", "pipeline")),
        (BaseWorker.set_state, ("self", "state", "pipeline")),
        (BaseWorker.get_redis_server_version, ("self",)),
        (BaseWorker.handle_job_failure, ("self", "job", "queue", "started_job_registry", "exc_string", "execution")),
        (Queue.release_maintenance_lock, ("self",)),
        (IntermediateQueue.get_job_ids, ("self",)),
        (IntermediateQueue.remove, ("self", "job_id")),
        (IntermediateQueue.get_first_seen_key, ("self", "job_id")),
        (IntermediateQueue.get_first_seen, ("self", "job_id")),
        (clean_registries, ("queue", "exception_handlers")),
        (clean_worker_registry, ("queue",)),
        (release_lock, ("connection", "lock_key", "owner_token")),
        (RQScheduler.get_locking_key, ("name",)),
        (
            Queue._fetch_dequeued_job,
            ("connection", "queue_key", "job_id", "job_class", "serializer", "death_penalty_class"),
        ),
        (
            Queue.dequeue_any,
            ("queues", "timeout", "connection", "job_class", "serializer", "death_penalty_class"),
        ),
        (BaseWorker.reorder_queues, ("self", "reference_queue")),
    ],
    ids=lambda v: getattr(v, "__qualname__", None) or "",
)
def test_the_rq_methods_rq_compat_calls_take_the_parameters_it_passes(
    func: Callable[..., Any], expected: tuple[str, ...]
) -> None:
    assert params(func)[: len(expected)] == expected


@pytest.mark.parametrize("name", sorted(rq_compat.WORKER_OVERRIDES))
def test_the_worker_methods_ingest_worker_overrides_are_still_rqs(name: str) -> None:
    inherited = getattr(SimpleWorker, name)
    expected = rq_compat.WORKER_OVERRIDES[name]
    if expected is None:
        assert isinstance(inspect.getattr_static(SimpleWorker, name), property)
    else:
        assert params(inherited) == expected


def test_rqs_key_names_are_the_ones_our_lua_and_keys_use() -> None:
    assert Job.key_for("j1") == "rq:job:j1"  # SNAPSHOT_SCRIPT reads 'rq:job:' .. id
    assert Queue.redis_queues_keys == "rq:queues"
    assert WORKERS_BY_QUEUE_KEY % "ingest" == rq_compat.workers_key("ingest") == "rq:workers:ingest"
    assert WORKERS_SUSPENDED == rq_compat.SUSPENDED_KEY == "rq:suspended"
    assert SCHEDULER_KEY_TEMPLATE % "s1" == rq_compat.scheduler_key("s1") == "rq:scheduler:s1"
    queue = Queue("ingest", connection=fakeredis.FakeRedis())
    assert queue.registry_cleaning_key == "rq:clean_registries:ingest"
    assert queue.intermediate_queue_key == IntermediateQueue.get_intermediate_queue_key(queue.key)


def test_the_private_job_attributes_we_set_are_the_ones_rq_reads() -> None:
    job = Job.create(INGEST_JOB, args=(b"x",), connection=fakeredis.FakeRedis(), serializer=MsgpackSerializer)
    job._status = JobStatus.FINISHED
    assert job.get_status(refresh=False) == JobStatus.FINISHED
    job._result = {"accepted": 1}
    assert MsgpackSerializer.loads(job.to_dict()["result"]) == {"accepted": 1}
    data = job.data
    assert job._data == data  # IngestJob.to_dict_without_data swaps this attribute, not the setter
    worker = SimpleWorker([Queue("ingest", connection=job.connection)], connection=job.connection)
    assert isinstance(worker._exc_handlers, list)
    assert isinstance(worker.executions, dict)
    assert hasattr(worker, "last_cleaned_at")


async def _enqueue(settings: Settings, server: fakeredis.FakeServer, batch: QueuedBatch) -> None:
    enqueuer = Enqueuer(settings, fakeredis.FakeAsyncRedis(server=server))
    assert (
        await enqueuer.enqueue_once("key_1", batch.workspace_id, batch.push_id, encode_batch(batch), b"ok", 3) is None
    )


@pytest.mark.parametrize("compression", ["lz4", "none"])
def test_a_job_hash_written_by_our_enqueue_script_reads_back_through_rqs_own_fetch(compression: str) -> None:
    server = fakeredis.FakeServer()
    redis = fakeredis.FakeRedis(server=server)
    settings = replace(Settings.from_env(), job_data_compression=compression, job_retries=2)
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    batch = QueuedBatch(workspace_id="ws_1", push_id="p1", received_at=at, pushed_at=at, body=b'{"sessions": []}')
    before = time.time()
    asyncio.run(_enqueue(settings, server, batch))

    shard = settings.queues.for_workspace("ws_1")  # the workspace's shard's queue
    queue = Queue(shard, connection=redis, serializer=MsgpackSerializer)
    assert queue in Queue.all(connection=redis)  # RQ's set of queues
    [job_id] = queue.get_job_ids()
    for job_class in (Job, IngestJob):  # RQ's own job class (its CLI, dashboards), and the workers'
        job = job_class.fetch(job_id, connection=redis, serializer=MsgpackSerializer)
        assert job.func_name == INGEST_JOB
        assert decode_batch(job.args[0]) == batch
        assert job.kwargs == {}
        assert job.get_status() == JobStatus.QUEUED
        assert job.origin == shard
        assert job.description == job_description("ws_1", "p1")
        assert job.meta == {"workspace_id": "ws_1", "push_id": "p1"}
        assert job.timeout == settings.job_timeout_s
        assert job.failure_ttl == settings.failed_ttl_s
        assert job.result_ttl == 1
        assert job.retries_left == 2
        assert job.failure_callback is not None
        assert job._failure_callback_name == FAILURE_CALLBACK
        assert job.enqueued_at is not None
        assert before - 1 <= job.enqueued_at.replace(tzinfo=UTC).timestamp() <= time.time() + 1

    state = read_snapshot(redis, settings.queues, time.time() + 5)
    assert state.depth == 1
    assert [(s.queue, s.depth) for s in state.shards if s.depth] == [(shard, 1)]
    assert 4 <= state.lag_s <= 7  # from the job hash's enqueued_at, in RQ's format


def test_a_take_registers_and_finishes_jobs_as_rq_sees_them() -> None:
    redis = fakeredis.FakeRedis()
    settings = replace(Settings.from_env(), worker_jobs_per_take=4)
    queue = rq_compat.ingest_queue(settings.queue_name, redis)
    for i in range(3):
        queue.enqueue(INGEST_JOB, b"{}", job_id=f"job-{i}")
    worker = make_worker(settings, connection=redis)
    worker.register_birth()
    first = IngestJob.fetch(queue.pop_job_id(), connection=redis, serializer=MsgpackSerializer)
    jobs = [first, *rq_compat.take_more(worker, queue, 3)]
    assert [j.id for j in jobs] == ["job-0", "job-1", "job-2"]

    executions = rq_compat.start_jobs(worker, jobs, queue)
    started = StartedJobRegistry(settings.queue_name, connection=redis)
    assert sorted(started.get_job_ids()) == ["job-0", "job-1", "job-2"]
    entries = [e.decode() for e in redis.zrange(started.key, 0, -1)]
    assert sorted(entries) == sorted(f"{j.id}:{e.id}" for j, e in zip(jobs, executions, strict=True))  # "job:exec"
    assert redis.hget(worker.key, "state") == b"busy"  # SNAPSHOT_SCRIPT reads state, last_heartbeat
    assert rq_compat.rq_timestamp(redis.hget(worker.key, "last_heartbeat")) == pytest.approx(time.time(), abs=5)
    assert read_snapshot(redis, settings.queue_name, time.time()).started == 3
    assert len(rq_compat.running_executions(worker)) == 3
    rq_compat.renew_claims(worker, rq_compat.running_executions(worker), 30)

    with redis.pipeline() as pipe:
        for job, execution in zip(jobs, executions, strict=True):
            job.started_at, job.ended_at = datetime.now(UTC), datetime.now(UTC)
            rq_compat.finish_job(worker, pipe, job, execution, {"accepted": 0})
        pipe.execute()
    for job in jobs:
        fetched = Job.fetch(job.id, connection=redis, serializer=MsgpackSerializer)
        assert fetched.get_status() == JobStatus.FINISHED
        assert fetched.return_value() == {"accepted": 0}
    assert started.get_job_ids() == []
    assert redis.hget(worker.key, "successful_job_count") == b"3"


def test_maintenance_runs_rqs_cleaning_under_rqs_lock_and_releases_it() -> None:
    redis = fakeredis.FakeRedis()
    settings = Settings.from_env()
    worker = make_worker(settings, connection=redis)
    rq_compat.clean_registries(worker, lock_s=30, grace_s=10, seen_ttl_s=60)
    assert not redis.exists(worker.queues[0].registry_cleaning_key)
    assert worker.last_cleaned_at is not None


def test_a_dead_schedulers_lock_is_released_as_rqs_scheduler_releases_it() -> None:
    redis = fakeredis.FakeRedis()
    scheduler = RQScheduler(["ingest"], connection=redis, serializer=MsgpackSerializer, name="s1")
    assert scheduler.acquire_locks()  # type: ignore[no-untyped-call]
    lock = RQScheduler.get_locking_key("ingest")
    assert redis.get(lock) == b"s1"
    redis.hset(rq_compat.scheduler_key("s1"), "pid", 1)
    rq_compat.release_scheduler_lock(redis, "ingest", "other")  # not its token: left alone
    assert redis.get(lock) == b"s1"
    rq_compat.release_scheduler_lock(redis, "ingest", "s1")
    assert not redis.exists(lock)
    assert not redis.exists(rq_compat.scheduler_key("s1"))


def test_a_jobs_meta_and_results_read_with_rqs_json_serializer_as_rq_dashboard_json_loads_them() -> None:
    """`rq-dashboard --json` loads jobs with RQ's JSONSerializer: a job's page reads its meta (a 500 with pickle)."""
    server = fakeredis.FakeServer()
    redis = fakeredis.FakeRedis(server=server)
    settings = Settings.from_env()
    at = datetime(2026, 1, 2, tzinfo=UTC)
    asyncio.run(
        _enqueue(settings, server, QueuedBatch(workspace_id="ws_1", push_id="p1", received_at=at, pushed_at=at))
    )
    [job_id] = Queue(settings.queues.for_workspace("ws_1"), connection=redis).get_job_ids()

    seen = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)  # what the dashboard's job page does
    assert seen.get_meta() == {"workspace_id": "ws_1", "push_id": "p1"}
    assert seen.description == job_description("ws_1", "p1")
    with pytest.raises(ValueError, match="unregistered extension code"):  # why pickle (its default) cannot
        DefaultSerializer.loads(MsgpackSerializer._encoder.encode({"workspace_id": "ws_1", "push_id": "p1"}))

    # A finished job's result, as the dashboard's page shows it; the failure callback's meta too.
    worker = make_worker(settings, connection=redis)
    [queue] = [q for q in worker.queues if q.name == settings.queues.for_workspace("ws_1")]
    job = IngestJob.fetch(queue.pop_job_id(), connection=redis, serializer=MsgpackSerializer)
    [execution] = rq_compat.start_jobs(worker, [job], queue)
    job.started_at = job.ended_at = datetime.now(UTC)
    job.meta["failed_attempts"] = 1
    job.save_meta()  # type: ignore[no-untyped-call]
    with redis.pipeline() as pipe:
        rq_compat.finish_job(worker, pipe, job, execution, {"push_id": "p1", "accepted": {"sessions": 0}})
        pipe.execute()
    seen = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    assert seen.return_value() == {"push_id": "p1", "accepted": {"sessions": 0}}
    assert seen.get_meta()["failed_attempts"] == 1


@pytest.mark.parametrize(
    "value",
    [
        {"workspace_id": "ws_1", "n": 1, "nested": {"x": [1, 2.5, None, True]}},  # JSON
        {"raw": b"\x00\xff"},  # bytes: msgpack, read back as bytes
        {"at": datetime(2026, 1, 2, tzinfo=UTC)},  # a datetime: msgpack
        (INGEST_JOB, None, (b"payload",), {}),  # a job's data: msgpack
        123,  # msgpack's one-byte "{"
        "text",
        None,
    ],
)
def test_the_serializer_reads_back_what_it_writes_whichever_form(value: Any) -> None:
    assert MsgpackSerializer.loads(MsgpackSerializer.dumps(value)) == value


def test_the_serializer_still_reads_msgpack_meta_written_before_meta_was_json() -> None:
    assert MsgpackSerializer.loads(MsgpackSerializer._encoder.encode({"push_id": "p1"})) == {"push_id": "p1"}
