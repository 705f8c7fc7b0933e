"""The RQ scheduler of a worker pool survives its children's deaths (issue 13): always one, never an orphan.

`selftune-ingest worker -n 2` is a supervisor with two worker children and one
scheduler child (which moves retries whose pause is over back to the queue). Each
child is SIGKILLed in turn, then the supervisor itself: afterwards the pool has
exactly one scheduler again, holding the queue's scheduler lock, no process of
the pool is left without its parent (an orphan, PPID 1), and a job whose first
attempt fails is still retried after its pause. A pool killed outright leaves no
process behind and its lock free, so the next pool schedules at once rather than
after the lock's minute.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

from redis import Redis
from rq import Queue, Retry
from rq.scheduler import RQScheduler

from queueing.rq_compat import IngestJob, MsgpackSerializer
from runtime.settings import Settings
from tests.e2e.faults.procs import alive, children, rq_worker_pids, scheduler_pid, session_strays
from tests.e2e.stack import BIN, Service, Stack

WORKERS = 2
SETTLE_S = 15.0  # a killed child is replaced at once, or RESTART_BACKOFF_S after its start
RETRY_PAUSE_S = 2


def start_pool(stack: Stack) -> Service:
    return stack.start("worker", [str(BIN / "selftune-ingest"), "worker", "-n", str(WORKERS)])


def pool_state(redis: Redis, settings: Settings, pool: Service) -> tuple[int, list[int]] | None:
    """(scheduler pid, worker pids) once the pool is whole: WORKERS workers and one scheduler, all its
    children, the scheduler holding the lock, no other process in the pool's session; else None."""
    kids = children(pool.pid)
    workers = [pid for pid in rq_worker_pids(redis, settings) if pid in kids]
    scheduler = scheduler_pid(redis, settings)
    whole = len(kids) == WORKERS + 1 and len(workers) == WORKERS and scheduler in kids and scheduler not in workers
    if not whole or session_strays(pool.pid):
        return None
    assert scheduler is not None
    return scheduler, sorted(workers)


def orphans_of(pool: Service) -> list[int]:
    """Processes of the pool's session whose parent is gone (PPID 1)."""
    return [p.pid for p in session_strays(pool.pid) if p.ppid == 1]


def retried_job_runs(stack: Stack, redis: Redis, settings: Settings) -> None:
    """A job whose first attempt fails finishes through a retry after RETRY_PAUSE_S: the scheduler works."""
    key = f"attempts:{uuid.uuid4().hex}"
    queue = Queue(settings.queue_name, connection=redis, serializer=MsgpackSerializer, job_class=IngestJob)
    job = queue.enqueue(
        "tests.e2e.faults.retry_jobs.fail_first_attempt", key, retry=Retry(max=1, interval=RETRY_PAUSE_S)
    )
    stack.wait_until(lambda: redis.get(key) == b"1", "the first attempt ran (and failed)")
    stack.wait_until(lambda: job.get_status(refresh=True) == "finished", "the delayed retry ran", timeout=20)
    assert redis.get(key) == b"2"


def replaced(redis: Redis, settings: Settings, pool: Service, victim: int) -> tuple[int, list[int]] | None:
    """The pool's state once it is whole again without `victim`."""
    state = pool_state(redis, settings, pool)
    if state is None or victim == state[0] or victim in state[1]:
        return None
    return state


def test_killed_children_are_replaced_with_one_scheduler_and_no_orphan(
    stack: Stack, settings: Settings, rq_redis: Redis
) -> None:
    pool = start_pool(stack)
    state = stack.wait_until(lambda: pool_state(rq_redis, settings, pool), "the pool is up")
    assert state is not None
    retried_job_runs(stack, rq_redis, settings)

    # The scheduler, then a worker, then the other worker: each replaced, the pool whole again.
    for victim in [state[0], state[1][0], state[1][1]]:
        os.kill(victim, signal.SIGKILL)
        stack.wait_until(lambda: not alive(victim), f"process {victim} died")  # noqa: B023
        stack.wait_until(
            lambda: replaced(rq_redis, settings, pool, victim),  # noqa: B023
            f"the pool replaced process {victim}",
            timeout=SETTLE_S,
        )
        assert orphans_of(pool) == []
        retried_job_runs(stack, rq_redis, settings)
    assert pool.alive()


def test_a_pool_killed_outright_leaves_no_process_and_frees_its_scheduler_lock(
    stack: Stack, settings: Settings, rq_redis: Redis
) -> None:
    pool = start_pool(stack)
    stack.wait_until(lambda: pool_state(rq_redis, settings, pool), "the pool is up")
    lock = RQScheduler.get_locking_key(settings.queue_name)
    assert rq_redis.get(lock) is not None

    pool.kill()  # SIGKILL the supervisor alone: its children die with it
    stack.wait_until(lambda: not session_strays(pool.pid), "every child of the killed pool is gone", timeout=10)
    # Its scheduler stopped on SIGTERM and released the lock: the next pool takes it at once.
    stack.wait_until(lambda: rq_redis.get(lock) is None, "the scheduler lock is released", timeout=10)

    started = time.monotonic()
    second = start_pool(stack)
    stack.wait_until(lambda: pool_state(rq_redis, settings, second), "the next pool is up, with the lock")
    assert time.monotonic() - started < SETTLE_S
    retried_job_runs(stack, rq_redis, settings)
