"""Workers SIGKILLed again and again under sustained load (SPEC 5: a worker killed mid-batch loses nothing).

Each kill is a SIGKILL of the worker process alone, as the OOM killer would deal
it, timed while the victim is busy with a batch when it can be; a replacement is
started at once, as a process manager would. A batch whose worker died is noticed
once its heartbeat lapses (job timeout + grace) and retried; the idempotent write
makes a retry of a batch that had in fact committed a no-op. (A worker killed in
the instant between taking a batch off the queue and starting it leaves the batch
in RQ's intermediate queue, which RQ rescues after a minute: hence the long drain
bound.) No batch may be left in the failed registry: every one was retried.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from redis import Redis
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from schema.settings import Settings
from tests.e2e.stack import Service, Stack
from tests.faults.harness import ApiProcess, Scenario, WorkerPool
from tests.faults.load import Ledger, LoadGenerator, resend_unacked

WORKERS = 2
FIRST_KILL_S = 2.0
BUSY_WAIT_S = 1.5  # how long to wait for the victim to be mid-batch before killing it anyway


def worker_busy(redis: Redis, settings: Settings, pid: int) -> bool:
    """Whether the worker with this pid is executing a job, per its RQ worker hash."""
    for key in redis.smembers(WORKERS_BY_QUEUE_KEY % settings.queue_name):
        pid_field, state = redis.hmget(key, "pid", "state")
        if pid_field is not None and int(pid_field) == pid:
            return state == b"busy"
    return False


def wait_busy(redis: Redis, settings: Settings, victim: Service) -> bool:
    """Wait (up to BUSY_WAIT_S) until the worker is mid-batch; return whether it got there."""
    deadline = time.monotonic() + BUSY_WAIT_S
    while time.monotonic() < deadline:
        if worker_busy(redis, settings, victim.pid):
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
    ledger = Ledger()
    scenario = Scenario("worker SIGKILL", stack, settings, workspace_id, ledger, rq_redis)
    pool = worker_pool(WORKERS)
    load = LoadGenerator(lambda: api.url, keys[:-1], workspace_id, ledger, tag="wkill")
    mid_batch = []

    def kill_workers() -> None:
        for i in range(kills):
            load.sleep_until(FIRST_KILL_S + i * every_s)
            victim = pool.oldest()
            mid_batch.append(wait_busy(rq_redis, settings, victim))
            pool.kill_and_replace(victim)

    load.run_for(load_s, during=kill_workers)
    resend_unacked(api.url, keys[-1], ledger, deadline_s=30)
    scenario.wait_landed()
    figures = scenario.verify(
        f"{kills} worker SIGKILLs ({sum(mid_batch)} mid-batch), {pool.replaced_after_exit} other worker exits",
        load.elapsed_s,
    )

    assert sum(mid_batch) >= 1, "no kill hit a worker mid-batch: the load is too light to show anything"
    # Killing workers never makes the api refuse or fail a push.
    assert figures.acked_in_load == figures.sent, ledger.errors
