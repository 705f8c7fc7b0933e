"""How a worker keeps, and loses, its claim on the batches it runs (workers.worker, issue 13).

Real Redis; the worker's maintenance and heartbeat are called directly in the test process.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job
from rq.registry import StartedJobRegistry
from starlette.testclient import TestClient

from bench import samples
from queueing import rq_compat
from queueing.rq_compat import IngestJob, MsgpackSerializer
from runtime.settings import Settings
from tests.support import Shards, push_json
from workers import worker as worker_module
from workers.worker import ABANDONED_GRACE_S, HEARTBEAT_TTL_S, MAINTENANCE_LOCK_S, IngestWorker, make_worker


def _queued_job(client: TestClient, api_key: str, settings: Settings, push_id: str = "p") -> tuple[Queue, Job]:
    assert push_json(client, api_key, {"sessions": [samples.session(1)]}, push_id).status_code == 202
    redis = Redis.from_url(settings.redis_url)
    queue = Shards(settings, redis).holding_jobs()  # the workspace's shard
    [job_id] = queue.get_job_ids()
    return queue, IngestJob.fetch(job_id, connection=redis, serializer=MsgpackSerializer)


def _claim_expiry(redis: Redis, settings: Settings, job_id: str) -> float:
    keys = [r.key for r in Shards(settings, redis).registries(StartedJobRegistry)]
    [score] = [s for key in keys for member, s in redis.zscan_iter(key) if member.decode().startswith(job_id)]
    return float(score) - time.time()


def test_a_running_job_has_its_claim_renewed_until_past_its_timeout(
    client: TestClient, api_key: str, settings: Settings
) -> None:
    queue, job = _queued_job(client, api_key, settings)
    worker = make_worker(settings)
    worker.prepare_execution(job)  # as RQ registers a job it is about to run
    redis = queue.connection
    assert _claim_expiry(redis, settings, job.id) == pytest.approx(HEARTBEAT_TTL_S, abs=2)

    started = StartedJobRegistry(queue.name, connection=redis, serializer=MsgpackSerializer)
    [member] = [m for m, _ in redis.zscan_iter(started.key)]
    redis.zadd(started.key, {member: time.time() + 1})  # about to lapse
    worker._start_clock(int(job.timeout or 180))
    assert worker.renew_claims() == 1
    assert _claim_expiry(redis, settings, job.id) == pytest.approx(HEARTBEAT_TTL_S, abs=2)

    # Stuck past its timeout + grace (where RQ's alarm cannot reach): left to lapse.
    redis.zadd(started.key, {member: time.time() + 1})
    worker._running = (time.monotonic() - (job.timeout or 180) - ABANDONED_GRACE_S - 1, int(job.timeout or 180))
    assert worker.renew_claims() == 0
    assert _claim_expiry(redis, settings, job.id) < 2


def test_maintenance_holds_its_lock_briefly_and_releases_it_even_when_cleaning_fails(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = make_worker(settings)
    queue = worker.queues[0]
    seen: list[int] = []

    def failing_clean(q: Queue, handlers: Any = None) -> None:
        seen.append(int(q.connection.ttl(q.registry_cleaning_key)))
        raise ConnectionError("Redis went away mid-cleaning")

    monkeypatch.setattr(rq_compat, "rq_clean_registries", failing_clean)  # RQ's, as rq_compat calls it
    with pytest.raises(ConnectionError):
        worker.clean_registries()
    assert 0 < seen[0] <= MAINTENANCE_LOCK_S  # RQ's own: 899 s, left behind by a worker killed meanwhile
    assert not queue.connection.exists(queue.registry_cleaning_key)


def test_a_job_left_in_the_intermediate_list_by_a_dead_worker_is_retried_after_the_grace(
    client: TestClient, api_key: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue, job = _queued_job(client, api_key, settings)
    redis = queue.connection
    # A worker took it off the queue, as RQ's dequeue does, and died before registering it.
    assert redis.lmove(queue.key, queue.intermediate_queue_key, "LEFT", "RIGHT") == job.id.encode()
    monkeypatch.setattr(worker_module, "INTERMEDIATE_GRACE_S", 0.3)
    worker: IngestWorker = make_worker(settings)

    worker.clean_registries()  # first sighting
    assert redis.lrange(queue.intermediate_queue_key, 0, -1) == [job.id.encode()]
    time.sleep(0.5)
    worker.clean_registries()

    assert redis.llen(queue.intermediate_queue_key) == 0
    assert job.id in queue.scheduled_job_registry.get_job_ids(), "retried after its pause (a scheduled retry)"
