"""Workers SIGKILLed mid-batch (SPEC 5: a worker killed mid-batch loses nothing), and how soon their batches land.

Under sustained load, pools (`selftune-ingest worker -n 1`) are SIGKILLed again
and again, timed while their worker is busy with a batch when it can be; the
worker child dies with its pool at once (PR_SET_PDEATHSIG), as if the OOM killer
had dealt it the SIGKILL, and a replacement pool is started at once, as a process
manager would. A worker renews its claim on the batches it runs every few seconds
(workers.worker.HEARTBEAT_TTL_S); a dead worker's claim lapses within seconds and
the next maintenance retries its batches; the idempotent write makes a retry of a
batch that had in fact committed a no-op. (A worker killed between taking a batch
off the queue and starting it leaves it in RQ's intermediate list, rescued after
INTERMEDIATE_GRACE_S.) No batch may be left in the failed registry. The load is a
fleet of clients that behave as the real CLI does (SPEC 2.5,
tests/e2e/faults/cli_client.py): none may give up on a push.

Then, with the production defaults: a batch whose worker is SIGKILLed while it
writes lands within RECOVERY_BOUND_S of the kill (before: job timeout + grace +
maintenance interval, ~150 s), alone or in a take; and batches that run far
longer than a claim lasts, on live workers, are never taken for abandoned.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import psycopg
import pytest
from redis import Redis
from rq.job import Job
from rq.registry import FailedJobRegistry, StartedJobRegistry

from bench import samples
from queueing.rq_compat import IngestJob, MsgpackSerializer
from runtime.settings import Settings
from tests.e2e.faults.cli_client import CliFleet, CliLedger
from tests.e2e.faults.cli_harness import settle
from tests.e2e.faults.harness import ApiProcess, WorkerPool, queue_state
from tests.e2e.faults.procs import children, rq_worker_pids
from tests.e2e.rows import all_processed, expected_ids, ids_in, push_row
from tests.e2e.stack import BIN, Api, Service, Stack
from tests.support import Shards
from workers.worker import HEARTBEAT_TTL_S

WORKERS = 2
FIRST_KILL_S = 2.0
BUSY_WAIT_S = 1.5  # how long to wait for the victim to be mid-batch before killing it anyway


def worker_busy(redis: Redis, settings: Settings, pids: list[int]) -> bool:
    """Whether one of these processes is an RQ worker executing a job, per its RQ worker hash."""
    workers = rq_worker_pids(redis, settings)
    return any(workers.get(pid) == "busy" for pid in pids)


def wait_busy(redis: Redis, settings: Settings, victim: Service) -> bool:
    """Wait (up to BUSY_WAIT_S) until the pool's worker is mid-batch; return whether it got there."""
    deadline = time.monotonic() + BUSY_WAIT_S
    pids = children(victim.pid)  # the pool's worker (and its scheduler, never busy)
    while time.monotonic() < deadline:
        if worker_busy(redis, settings, pids):
            return True
        time.sleep(0.002)
    return False


@pytest.mark.parametrize(
    ("load_s", "kills", "every_s"),
    [pytest.param(12.0, 5, 1.8, id="5-kills"), pytest.param(60.0, 30, 1.8, id="30-kills", marks=pytest.mark.slow)],
)
def test_workers_sigkilled_repeatedly_under_load(
    stack: Stack,
    settings: Settings,
    workspace: tuple[str, list[str]],
    rq_redis: Redis,
    worker_pool: Callable[[int], WorkerPool],
    load_s: float,
    kills: int,
    every_s: float,
) -> None:
    workspace_id, keys = workspace
    api = ApiProcess.start(stack)
    ledger = CliLedger()
    pool = worker_pool(WORKERS)
    load = CliFleet(lambda: api.url, keys[:-1], workspace_id, ledger, tag="wkill")
    mid_batch = []

    def kill_workers() -> None:
        for i in range(kills):
            load.sleep_until(FIRST_KILL_S + i * every_s)
            victim = pool.oldest()
            mid_batch.append(wait_busy(rq_redis, settings, victim))
            pool.kill_and_replace(victim)

    load.run_for(load_s, during=kill_workers)
    figures = settle(
        f"{kills} worker SIGKILLs", stack, settings, workspace_id, ledger, rq_redis,
        notes=f"{sum(mid_batch)} mid-batch, {pool.replaced_after_exit} other worker exits",
    )  # fmt: skip

    assert sum(mid_batch) >= 1, "no kill hit a worker mid-batch: the load is too light to show anything"
    # Killing workers never makes the api refuse or fail a push, even once.
    assert figures.acknowledged == figures.pushes > 0 and set(ledger.attempts) == {"202"}, figures
    assert queue_state(rq_redis, settings).failed == 0, "a batch was left in the failed registry"


# The production defaults that bound recovery (runtime/settings.py), which the `stack`
# fixture shortens for the other scenarios: job timeout, retry pauses, maintenance
# interval (unset below, so the workers use their default).
PRODUCTION = {"JOB_TIMEOUT_S": "120", "JOB_RETRIES": "5", "JOB_RETRY_BACKOFF_S": "1,5,30,120,600"}
JOB_RETRIES = 5
RECOVERY_BOUND_S = 30.0  # from the SIGKILL of a batch's worker until the batch is committed
LIVE_HOLD_S = 2 * HEARTBEAT_TTL_S + 2  # how long live workers are held mid-batch: claims renewed twice over


def pool(stack: Stack, n: int) -> Service:
    return stack.start("worker", [str(BIN / "selftune-ingest"), "worker", "-n", str(n)], **PRODUCTION)


def batch(n: int) -> dict[str, list[dict[str, object]]]:
    """A small batch with a session in it (so it waits while the sessions table is locked)."""
    return {"sessions": [samples.session(n)], "prompts": [samples.prompt(n)]}


def started_jobs(redis: Redis, settings: Settings) -> list[str]:
    """Ids of the jobs in every shard's started registry (read without RQ's cleanup)."""
    return [j for r in Shards(settings, redis).registries(StartedJobRegistry) for j in r.get_job_ids(cleanup=False)]


def waiting_for_sessions(db: psycopg.Connection) -> bool:
    row = db.execute("SELECT 1 FROM pg_locks WHERE relation = 'sessions'::regclass AND NOT granted").fetchone()
    return row is not None


def fetch_job(redis: Redis, job_id: str) -> Job:
    return IngestJob.fetch(job_id, connection=redis, serializer=MsgpackSerializer)


@pytest.mark.parametrize(("workers", "batches"), [pytest.param(2, 1, id="alone"), pytest.param(1, 6, id="take")])
def test_batch_of_a_worker_sigkilled_mid_write_lands_within_the_bound(
    stack: Stack,
    settings: Settings,
    workspace: tuple[str, list[str]],
    db: psycopg.Connection,
    rq_redis: Redis,
    workers: int,
    batches: int,
) -> None:
    del stack.env["WORKER_MAINTENANCE_INTERVAL_S"]  # the default, as shipped
    workspace_id, keys = workspace
    api: Api = stack.start_api(**PRODUCTION)
    records = [batch(n) for n in range(batches)]
    push_ids = [f"killed-{n}" for n in range(batches)]

    # Hold the sessions table so the batch waits inside its transaction, mid-write.
    with psycopg.connect(settings.database_url) as blocker:
        blocker.execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
        for push_id, body in zip(push_ids, records, strict=True):
            response = api.push(keys[0], {"push_id": push_id, "data": body})
            assert response.status_code == 202, response.text
        workers_pool = pool(stack, workers)  # started after the pushes: a take of all of them when batches > 1
        stack.wait_until(lambda: len(started_jobs(rq_redis, settings)) == batches, f"{batches} batches started")
        stack.wait_until(lambda: waiting_for_sessions(db), "the worker waits for the sessions table, mid-batch")
        [victim] = [pid for pid, state in rq_worker_pids(rq_redis, settings).items() if state == "busy"]
        assert victim in children(workers_pool.pid)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        blocker.rollback()
    assert db.execute("SELECT count(*) FROM pushes").fetchone() == (0,), "the killed attempt committed something"

    stack.wait_until(
        lambda: all_processed(db, workspace_id, push_ids),
        "the batches of the killed worker are retried and land",
        timeout=3 * RECOVERY_BOUND_S,
    )
    recovery_s = time.monotonic() - killed_at
    print(f"\n{batches} batch(es) of a SIGKILLed worker landed {recovery_s:.1f} s after the kill")
    assert recovery_s < RECOVERY_BOUND_S, f"landed {recovery_s:.1f} s after the kill"
    for table in ("sessions", "prompts"):
        assert ids_in(db, table, workspace_id) == expected_ids(table, *records), table
    for push_id, body in zip(push_ids, records, strict=True):
        assert push_row(db, workspace_id, push_id) == ("processed", {t: len(r) for t, r in body.items()}, {})
    failed = Shards(settings, rq_redis).registries(FailedJobRegistry)
    assert [j for r in failed for j in r.get_job_ids(cleanup=False)] == []


def test_batches_running_longer_than_a_claim_on_live_workers_are_never_retried(
    stack: Stack,
    settings: Settings,
    workspace: tuple[str, list[str]],
    db: psycopg.Connection,
    rq_redis: Redis,
) -> None:
    # Another worker runs maintenance every second all along: it would retry any batch whose claim lapsed.
    workspace_id, keys = workspace
    api: Api = stack.start_api(**PRODUCTION)
    records = [batch(n) for n in range(5)]
    push_ids = [f"slow-{n}" for n in range(5)]

    with psycopg.connect(settings.database_url) as blocker:
        blocker.execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
        for push_id, body in list(zip(push_ids, records, strict=True))[:4]:
            assert api.push(keys[0], {"push_id": push_id, "data": body}).status_code == 202
        pool(stack, 1)  # takes the four at once
        stack.wait_until(lambda: len(started_jobs(rq_redis, settings)) == 4, "a take of four batches started")
        assert api.push(keys[0], {"push_id": push_ids[4], "data": records[4]}).status_code == 202
        pool(stack, 1)  # runs the fifth alone, RQ's own way
        stack.wait_until(lambda: len(started_jobs(rq_redis, settings)) == 5, "the fifth batch started")
        job_ids = started_jobs(rq_redis, settings)
        pool(stack, 1)  # idle: runs the maintenance
        stack.wait_until(lambda: len(rq_worker_pids(rq_redis, settings)) == 3, "three workers registered")

        held_until = time.monotonic() + LIVE_HOLD_S
        while time.monotonic() < held_until:
            still = started_jobs(rq_redis, settings)
            statuses = {job_id: fetch_job(rq_redis, job_id).get_status() for job_id in job_ids}
            assert sorted(still) == sorted(job_ids), f"a live batch lost its claim: {still} of {job_ids}"
            assert set(statuses.values()) == {"started"}, statuses
            time.sleep(0.5)
        blocker.rollback()

    stack.wait_until(lambda: all_processed(db, workspace_id, push_ids), "the held batches land")
    for job_id in job_ids:
        job = fetch_job(rq_redis, job_id)
        assert job.get_status() == "finished"
        assert job.retries_left == JOB_RETRIES, f"job {job_id} was retried: {job.retries_left} retries left"
    for table in ("sessions", "prompts"):
        assert ids_in(db, table, workspace_id) == expected_ids(table, *records), table
    assert stack.wait_until(lambda: not started_jobs(rq_redis, settings), "the started registry is empty")
