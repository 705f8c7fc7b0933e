"""RQ's own command line on the service's queue, against the real Redis, as README ("RQ's own tools") gives it.

`rq info`, `rq requeue` and `rq suspend`/`resume` run as processes, with the
`--serializer` an operator passes, on a batch that really failed (Postgres
refused it), so they keep working as RQ and the job format change.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
from redis import Redis
from rq import Queue
from rq.registry import FailedJobRegistry
from starlette.testclient import TestClient

from api.app import create_app
from bench import samples
from queueing.queue_state import read_snapshot
from queueing.rq_compat import MsgpackSerializer
from runtime.settings import Settings
from tests.support import Shards, count, push_json, run_burst_worker, with_lock_timeout

ROOT = Path(__file__).resolve().parents[2]
RQ = Path(sys.executable).with_name("rq")  # the rq command the venv installs with RQ
SERIALIZER = "queueing.rq_compat.MsgpackSerializer"


def rq_cli(*args: str, settings: Settings) -> str:
    """Run `rq ARGS --url REDIS_URL` from the repository root (where the serializer's module is importable)."""
    done = subprocess.run(
        [str(RQ), *args, "--url", settings.redis_url], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"rq {' '.join(args)} exited {done.returncode}: {done.stderr}"
    return done.stdout


def _a_failed_batch(api_key: str, settings: Settings, use_worker_settings: Any) -> tuple[str, str]:
    """Push one batch and have Postgres refuse it, without retries: it lands in RQ's failed registry.

    Returns its job id and its queue (the workspace's shard)."""
    use_worker_settings(with_lock_timeout(settings))
    with TestClient(create_app(replace(settings, job_retries=0))) as c:
        assert push_json(c, api_key, {"sessions": [samples.session(1)]}, "refused").status_code == 202
    with psycopg.connect(settings.database_url) as locker:
        locker.execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
        run_burst_worker(settings)
        locker.rollback()
    failed = Shards(settings, Redis.from_url(settings.redis_url)).holding(FailedJobRegistry)
    [job_id] = failed.get_job_ids()
    return job_id, failed.name


def test_rq_info_and_rq_requeue_all_work_on_a_failed_batch(
    api_key: str, db: psycopg.Connection, settings: Settings, use_worker_settings: Any
) -> None:
    job_id, shard = _a_failed_batch(api_key, settings, use_worker_settings)

    info = rq_cli("info", "--serializer", SERIALIZER, settings=settings)
    assert shard in info and "1 queues" in info, info  # RQ lists the queues that were enqueued to

    out = rq_cli("requeue", "--all", "--queue", shard, "--serializer", SERIALIZER, settings=settings)
    assert "Requeueing 1 jobs" in out, out
    redis = Redis.from_url(settings.redis_url)
    assert FailedJobRegistry(shard, connection=redis).get_job_ids() == []
    assert Queue(shard, connection=redis, serializer=MsgpackSerializer).get_job_ids() == [job_id]

    use_worker_settings(settings)
    run_burst_worker(settings)  # Postgres takes it now
    assert count(db, "sessions") == 1
    assert db.execute("SELECT status FROM pushes WHERE push_id = 'refused'").fetchone() == ("processed",)


def test_rq_suspend_and_resume_are_seen_by_the_queue_snapshot(settings: Settings) -> None:
    redis = Redis.from_url(settings.redis_url)
    rq_cli("suspend", settings=settings)
    try:
        assert redis.exists("rq:suspended")
        worker_key = "rq:worker:w1"
        redis.hset(worker_key, mapping={"state": "idle", "last_heartbeat": "2026-01-01T00:00:00.000000Z"})
        redis.sadd(f"rq:workers:{settings.queues.shard_names[0]}", worker_key)
        assert read_snapshot(redis, settings.queues, 0.0).workers_suspended == 1
    finally:
        rq_cli("resume", settings=settings)
    assert not redis.exists("rq:suspended")
