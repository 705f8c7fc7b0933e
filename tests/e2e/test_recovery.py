"""Failures a real deployment meets: Postgres going away, a worker killed mid-batch.

In both, a batch the api accepted (202) must land exactly once, without anyone
replaying it by hand.
"""

from __future__ import annotations

import re
import time
from typing import cast

import psycopg
from redis import Redis
from rq.job import Job
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from bench import samples
from queueing.rq_compat import MsgpackSerializer
from runtime.settings import Settings
from tests.e2e.rows import all_processed, expected_ids, ids_in, push_row
from tests.e2e.servers import Servers
from tests.e2e.stack import Api, Stack
from tests.support import Account, Shards

JOB_RETRIES = 3  # as the `stack` fixture configures the api
# An abandoned job is noticed once its heartbeat lapses (job timeout 5 s + 10 s grace)
# and a worker runs maintenance (every second); then it is retried after the 1 s backoff.
ABANDONED_JOB_WAIT_S = 60


def find_job(redis: Redis, push_id: str) -> Job | None:
    """The RQ job carrying a push, if there is one."""
    for key in redis.scan_iter(match="rq:job:*"):
        job_id = key.decode().removeprefix("rq:job:")
        if re.fullmatch(r"[0-9a-f]{32}", job_id):
            job = Job.fetch(job_id, connection=redis, serializer=MsgpackSerializer)
            if job.meta.get("push_id") == push_id:
                return job
    return None


def rq_state(redis: Redis, settings: Settings) -> str:
    """Where RQ has the batches, over every shard's queue (read without triggering RQ's own cleanup)."""
    shards = Shards(settings, redis)
    started = shards.registries(StartedJobRegistry)
    entries = [e for r in started for e in cast(list[tuple[bytes, float]], redis.zrange(r.key, 0, -1, withscores=True))]
    expiries = [f"{score - time.time():+.0f} s" for _, score in entries]
    scheduled = sum(redis.zcard(r.key) for r in shards.registries(ScheduledJobRegistry))
    failed = sum(redis.zcard(r.key) for r in shards.registries(FailedJobRegistry))
    return (
        f"RQ: {shards.count} queued; started registry entries expiring in {expiries}"
        f" (negative: abandoned, waiting for a worker's maintenance); {scheduled} scheduled; {failed} failed"
    )


def test_postgres_stopped_job_retried_then_lands(
    stack: Stack,
    account: Account,
    db: psycopg.Connection,
    settings: Settings,
    rq_redis: Redis,
    servers: Servers,
) -> None:
    # The api checks keys in Postgres: a long key cache lets it accept pushes during the outage.
    api = stack.start_api(KEY_CACHE_TTL_S="300")
    stack.start_worker()
    workspace = account.workspace_id
    before = {"sessions": [samples.session(0)]}
    warm = api.push(account.key, {"push_id": "before-outage", "data": before})
    assert warm.status_code == 202, warm.text
    stack.wait_until(lambda: all_processed(db, workspace, ["before-outage"]), "the push before the outage landed")

    records = samples.one_of_each(1)
    try:
        servers.stop_postgres()
        response = api.push(account.key, {"push_id": "during-outage", "data": records})
        assert response.status_code == 202, response.text

        def failed_once() -> Job | None:
            job = find_job(rq_redis, "during-outage")
            return job if job is not None and job.retries_left is not None and job.retries_left < JOB_RETRIES else None

        stack.wait_until(failed_once, "the job failed with Postgres down and was set to be retried")
    finally:
        servers.start()

    # The db fixture's connection died with the server.
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        stack.wait_until(
            lambda: all_processed(conn, workspace, ["during-outage"]),
            "the retried job landed once Postgres was back",
            explain=lambda: rq_state(rq_redis, settings),
        )
        for table in samples.FACTORIES:
            assert ids_in(conn, table, workspace) == expected_ids(table, before, records), table
        assert push_row(conn, workspace, "during-outage") == ("processed", dict.fromkeys(samples.FACTORIES, 1), {})


def test_worker_sigkilled_mid_batch_lands_exactly_once(
    stack: Stack, api: Api, account: Account, db: psycopg.Connection, settings: Settings, rq_redis: Redis
) -> None:
    worker = stack.start_worker()
    records = {"sessions": [samples.session(n) for n in range(3)], "prompts": [samples.prompt(n) for n in range(3)]}
    workspace = account.workspace_id
    started = Shards(settings, rq_redis).registries(StartedJobRegistry)  # the workspace's shard's is the one

    # Hold the sessions table so the worker blocks inside its transaction, mid-batch.
    with psycopg.connect(settings.database_url) as blocker:
        blocker.execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
        response = api.push(account.key, {"push_id": "killed-mid-batch", "data": records})
        assert response.status_code == 202, response.text
        stack.wait_until(lambda: any(r.get_job_ids(cleanup=False) for r in started), "the worker started the job")
        stack.wait_until(
            lambda: db.execute(
                "SELECT 1 FROM pg_locks WHERE relation = 'sessions'::regclass AND NOT granted"
            ).fetchone(),
            "the worker waits for the sessions table inside its transaction",
        )
        worker.kill()
        blocker.rollback()

    assert db.execute("SELECT count(*) FROM pushes").fetchone() == (0,), "the killed attempt committed something"

    stack.start_worker()
    stack.wait_until(
        lambda: all_processed(db, workspace, ["killed-mid-batch"]),
        "a new worker retried the abandoned batch and it landed",
        timeout=ABANDONED_JOB_WAIT_S,
        explain=lambda: rq_state(rq_redis, settings),
    )
    for table in ("sessions", "prompts"):
        assert ids_in(db, table, workspace) == expected_ids(table, records), table
    assert push_row(db, workspace, "killed-mid-batch") == ("processed", {"sessions": 3, "prompts": 3}, {})
