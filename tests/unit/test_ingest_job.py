"""IngestJob: RQ's job, minus the rewrite of a batch's data every time the job is saved."""

from __future__ import annotations

import fakeredis
from rq import Queue

from queueing.rq_compat import IngestJob, MsgpackSerializer
from schema.batches import INGEST_JOB


def _queue() -> Queue:
    return Queue("ingest", connection=fakeredis.FakeRedis(), serializer=MsgpackSerializer, job_class=IngestJob)


def test_a_loaded_job_saves_its_state_but_leaves_the_stored_data_alone() -> None:
    queue = _queue()
    payload = b'{"push_id": "p1"}' * 1000
    job = queue.enqueue(INGEST_JOB, payload)
    redis = queue.connection
    stored = redis.hget(job.key, "data")
    redis.hset(job.key, "data", b"as the api stored it")  # a marker a rewrite would replace

    loaded = IngestJob.fetch(job.id, connection=redis, serializer=MsgpackSerializer)
    loaded.set_status("finished")
    loaded.description = "push p1, done"
    loaded.save()

    assert redis.hget(job.key, "data") == b"as the api stored it"
    assert redis.hget(job.key, "status") == b"finished"
    assert redis.hget(job.key, "description") == b"push p1, done"
    redis.hset(job.key, "data", stored)
    assert IngestJob.fetch(job.id, connection=redis, serializer=MsgpackSerializer).args == (payload,)


def test_a_new_job_is_saved_whole_and_reads_back() -> None:
    queue = _queue()
    job = queue.enqueue(INGEST_JOB, b"batch bytes")
    assert queue.connection.hget(job.key, "data")  # written at enqueue, as RQ does
    assert queue.fetch_job(job.id).args == (b"batch bytes",)
