"""How many queued batches a worker takes at once (fakeredis with Lua: no servers)."""

from __future__ import annotations

from dataclasses import replace

import fakeredis
import pytest
from rq import Queue

from queueing.rq_compat import IngestJob, MsgpackSerializer
from runtime.settings import Settings
from schema.batches import INGEST_JOB
from workers.worker import make_worker


@pytest.mark.parametrize(
    ("queued", "other_workers", "per_take", "taken"),
    [
        (0, 0, 8, 0),  # nothing behind the job it dequeued
        (20, 0, 8, 7),  # a lone worker takes up to per_take - 1 more
        (20, 3, 8, 7),  # a backlog is taken in bulk
        (5, 3, 8, 2),  # one job is left for each other worker
        (3, 3, 8, 0),  # ... so a few jobs are spread over idle workers
        (20, 0, 1, 0),  # WORKER_JOBS_PER_TAKE=1: RQ's own one-by-one path
    ],
)
def test_a_worker_takes_a_backlog_but_leaves_one_job_for_each_other_worker(
    queued: int, other_workers: int, per_take: int, taken: int
) -> None:
    redis = fakeredis.FakeRedis()
    settings = replace(Settings.from_env(), worker_jobs_per_take=per_take)
    queue = Queue(settings.queue_name, connection=redis, serializer=MsgpackSerializer, job_class=IngestJob)
    for i in range(queued):
        queue.enqueue(INGEST_JOB, b"{}", job_id=f"job-{i}")
    worker = make_worker(settings, connection=redis)
    redis.sadd(f"rq:workers:{queue.name}", worker.key, *[f"rq:worker:other-{i}" for i in range(other_workers)])

    more = worker._take_more(queue) if per_take > 1 else []

    assert [j.id for j in more] == [f"job-{i}" for i in range(taken)]
    assert queue.count == queued - taken
    assert redis.lrange(queue.intermediate_queue_key, 0, -1) == [f"job-{i}".encode() for i in range(taken)]
