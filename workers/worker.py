"""RQ workers that do not fork per job, and share RQ's bookkeeping between queued batches (SPEC 5, PERF.md).

`IngestWorker` is RQ's `SimpleWorker`: the job runs in the worker process, so
imports, the msgspec decoders and the Postgres connection are paid once, not
per job. When batches are waiting behind the one it dequeued, it takes up to
WORKER_JOBS_PER_TAKE of them at once (see `IngestWorker.execute_job`). While it
runs batches, a thread renews its claim on them every few seconds, so a batch
whose worker died is retried within seconds, and a live one, however long, never.

`run_workers(n)` supervises n such worker processes and one RQ scheduler process
(it moves retries whose pause is over back to the queue), each of them a child
that dies with the supervisor; a child that exits is replaced.

Why one module of ~440 lines: the worker's take, its claim renewal and its
supervisor share one lifecycle (what a dying child leaves behind is what the
claims and the supervisor clean up); RQ's internals it needs are in
queueing/rq_compat.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
import uuid
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, SimpleWorker
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.executions import Execution
from rq.job import Job
from rq.scheduler import RQScheduler
from rq.timeouts import JobTimeoutException
from rq.utils import now
from rq.worker import DequeueStrategy, WorkerStatus

from queueing import redis_check, rq_compat
from queueing.rq_compat import IngestJob, MsgpackSerializer
from runtime import logs
from runtime.heap import freeze_startup_heap
from runtime.redis_client import redis_client
from runtime.settings import Settings
from runtime.version import VERSION
from schema.batches import INGEST_JOB, decode_batch
from workers.jobs import Written, write_job

log = logging.getLogger(__name__)

# While a worker runs batches, a thread renews its claim on each (RQ's execution and
# started-registry entries) every HEARTBEAT_INTERVAL_S, for HEARTBEAT_TTL_S. A worker
# that dies (SIGKILL, OOM, lost machine) stops renewing: the next maintenance of any
# worker of the queue after the claim lapses retries its batch, within about
# HEARTBEAT_TTL_S + WORKER_MAINTENANCE_INTERVAL_S + the first retry pause of the death.
# (RQ's own claim lasts the job's whole timeout + 60 s, renewed by nothing in a SimpleWorker.)
HEARTBEAT_TTL_S = 12
HEARTBEAT_INTERVAL_S = 4
# A batch still running this long after its own timeout (stuck where RQ's SIGALRM
# cannot stop it) is renewed no more, and so is retried as abandoned.
ABANDONED_GRACE_S = 10
# RQ's maintenance lock lasts 899 s and is left behind by a worker killed while it
# cleans, or by a cleaning that raised: nobody would retry abandoned batches for 15
# minutes. Cleaning takes milliseconds; ours expires after MAINTENANCE_LOCK_S.
MAINTENANCE_LOCK_S = 30
# A job in the queue's intermediate list but not started (its worker died between
# taking it and registering it, a few milliseconds) is retried once two cleanings
# INTERMEDIATE_GRACE_S apart saw it so (RQ waits a minute). A sighting is forgotten
# after INTERMEDIATE_SEEN_TTL_S, so one made of a job then running normally is not
# held against the same job taken again later.
INTERMEDIATE_GRACE_S = 10
INTERMEDIATE_SEEN_TTL_S = 60


class IngestWorker(SimpleWorker):
    """A SimpleWorker that takes several queued batches at once when they are waiting.

    RQ's bookkeeping costs ~15-20 Redis round trips per job whatever its size,
    about as much worker CPU as writing a 100-record batch (bench/README.md).
    Having dequeued a job, the worker moves up to `jobs_per_take - 1` more from
    the queue in one round trip (leaving one for each other worker), registers them all with RQ in one pipeline
    (executions, started registry, job status, exactly the fields RQ's own path
    sets), writes each batch in its own transaction, and marks the written ones
    finished in one pipeline. If a batch fails, it and the ones after it run
    one by one through RQ's own `perform_job`, so retries, the failed registry
    and `replay` behave exactly as for a job taken alone. With an empty queue
    behind it, a job takes RQ's own path unchanged.

    A thread renews the claims on running jobs (see HEARTBEAT_TTL_S), so the jobs
    of a worker that died are retried by the next maintenance after the claims
    lapse, and those of a live one are never taken for abandoned.

    RQ's bookkeeping, driven from here, is `queueing.rq_compat`'s; the RQ methods
    this class overrides are listed in `rq_compat.WORKER_OVERRIDES` (and checked
    against RQ by its test).
    """

    jobs_per_take = 1
    queue_class = rq_compat.IngestQueue  # keeps RQ's move to the intermediate list when dequeuing from several queues
    _heartbeat_thread: threading.Thread | None = None
    _heartbeat_stop: threading.Event | None = None
    _running: tuple[float | None, int] = (None, 0)  # when the job or take now running started, and its timeout

    def work(
        self,
        burst: bool = False,
        logging_level: str | None = None,
        date_format: str = DEFAULT_LOGGING_DATE_FORMAT,
        log_format: str = DEFAULT_LOGGING_FORMAT,
        max_jobs: int | None = None,
        max_idle_time: int | None = None,
        with_scheduler: bool = False,
        dequeue_strategy: DequeueStrategy = DequeueStrategy.ROUND_ROBIN,
    ) -> bool:
        """RQ's work loop, taking from the shards' queues in turn (RQ's round-robin dequeue strategy).

        After a job (and the take behind it, all from the job's own queue), the next dequeue
        starts at the queue after that one: a workspace's backlog in one shard delays another
        shard's batches by one take per busy shard at most, not by the whole backlog.
        """
        return bool(
            super().work(
                burst, logging_level, date_format, log_format, max_jobs, max_idle_time, with_scheduler, dequeue_strategy
            )
        )

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        # RQ sets every claim (execution, started registry, worker key) for this long
        # when a job starts; the heartbeat thread renews it while the job runs.
        return HEARTBEAT_TTL_S

    def _start_heartbeat(self) -> None:
        """Start the thread that renews the claims on running jobs (once per process)."""
        if self._heartbeat_thread is not None and self._heartbeat_thread.is_alive():
            return
        self._heartbeat_stop = threading.Event()
        self._heartbeat_thread = threading.Thread(
            target=self._heartbeat_loop, args=(self._heartbeat_stop,), name="claim-heartbeat", daemon=True
        )
        self._heartbeat_thread.start()

    def _heartbeat_loop(self, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_INTERVAL_S):
            try:
                self.renew_claims()
            except Exception as exc:  # Redis away: try again next time (the claims last 3 intervals)
                log.warning("could not renew the claims on running batches: %s: %s", type(exc).__name__, exc)

    def renew_claims(self) -> int:
        """Renew, for HEARTBEAT_TTL_S, this worker's claims on the jobs it is running; returns how many.

        Runs on the heartbeat thread. `self.executions` (RQ's own index of the worker's running
        executions: one for RQ's path, one per job of a take) is changed by the main thread,
        so it is copied first. A job that ended meanwhile is not claimed again: RQ's execution
        heartbeat only updates registry entries that still exist (ZADD XX); at worst it leaves
        the ended execution's own hash behind, which expires after HEARTBEAT_TTL_S. Past the
        timeout of the job or take now running (+ ABANDONED_GRACE_S), nothing is renewed: a
        job stuck where RQ's alarm cannot stop it lapses, and is retried as abandoned.
        """
        running = rq_compat.running_executions(self)
        if not running or not self._within_timeout():
            return 0
        rq_compat.renew_claims(self, running, HEARTBEAT_TTL_S)
        return len(running)

    def _within_timeout(self) -> bool:
        """Whether the job (or take) running now is within its timeout + ABANDONED_GRACE_S."""
        since, timeout = self._running
        if since is None or timeout < 0:  # not started yet (bookkeeping), or no timeout
            return True
        return time.monotonic() - since < timeout + ABANDONED_GRACE_S

    def _start_clock(self, timeout: int) -> None:
        """Note that a job, or a take, starts under a death penalty of `timeout` s (see _within_timeout)."""
        self._running = (time.monotonic(), timeout)

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        """RQ's bookkeeping before a job runs, always taking the job off its queue's intermediate list.

        RQ removes it only for a worker on one queue (from several, its own dequeue pops
        without the move); ours moves it there from any number of shards
        (`rq_compat.IngestQueue`), so a job left in the list would be "rescued" by the
        next maintenance and failed or run again although it ran.
        """
        super().prepare_job_execution(job, remove_from_intermediate_queue=True)

    def perform_job(self, job: Job, queue: Queue, execution: Execution) -> bool:
        self._start_clock(int(job.timeout or self.queue_class.DEFAULT_TIMEOUT))
        return super().perform_job(job, queue, execution)

    def teardown(self) -> None:
        if self._heartbeat_stop is not None:
            self._heartbeat_stop.set()
        super().teardown()  # type: ignore[no-untyped-call]

    def clean_registries(self) -> None:
        """RQ's `clean_registries`, with a lock that expires after MAINTENANCE_LOCK_S, not 899 s.

        The lock is RQ's own key, so plain RQ workers on the queue still take turns with
        these. It also rescues jobs stuck in the intermediate list after INTERMEDIATE_GRACE_S.
        """
        rq_compat.clean_registries(self, MAINTENANCE_LOCK_S, INTERMEDIATE_GRACE_S, INTERMEDIATE_SEEN_TTL_S)

    @property
    def dequeue_timeout(self) -> int:
        # RQ runs maintenance (which retries abandoned batches) only between
        # waits for a job, and an idle wait lasts up to worker_ttl - 15 s (6+ min).
        # Wait at most one maintenance interval, so a dead worker's batch is
        # retried within about HEARTBEAT_TTL_S + interval.
        return max(1, min(super().dequeue_timeout, int(self.maintenance_interval)))

    def execute_job(self, job: Job, queue: Queue) -> None:
        self._start_heartbeat()
        self._running = (None, 0)  # until its death penalty starts (perform_job, _perform_together)
        more = self._take_more(queue) if self.jobs_per_take > 1 and job.func_name == INGEST_JOB else []
        # Only ingest jobs are written together; anything else on the queue runs RQ's own way.
        batches = [j for j in more if j.func_name == INGEST_JOB]
        others = [j for j in more if j.func_name != INGEST_JOB]
        if batches:
            try:
                self._perform_together([job, *batches], queue)
            finally:
                self.set_state(WorkerStatus.IDLE)
        else:
            super().execute_job(job, queue)
        for other in others:
            super().execute_job(other, queue)

    def _take_more(self, queue: Queue) -> list[Job]:
        """Up to jobs_per_take - 1 more jobs from the queue, moved as RQ's dequeue moves one."""
        return rq_compat.take_more(self, queue, self.jobs_per_take - 1)

    def _perform_together(self, jobs: list[Job], queue: Queue) -> None:
        executions = self._start_all(jobs, queue)
        written: list[tuple[Job, Execution, Written]] = []
        timeout = max(j.timeout or self.queue_class.DEFAULT_TIMEOUT for j in jobs)
        self._start_clock(int(timeout))
        try:
            with self.death_penalty_class(timeout, JobTimeoutException, job_id=jobs[0].id):
                for job, execution in zip(jobs, executions, strict=True):
                    job.started_at = now()  # this batch's own start and end,
                    done = write_job(decode_batch(job.args[0]))
                    job.ended_at = now()  # so RQ's working times are not those of the whole take
                    written.append((job, execution, done))
        except Exception as exc:
            # The failed batch's transaction rolled back (write_job dropped the connection).
            # It and the batches after it run one by one through RQ's own path, where
            # ingest_batch retries or gives up exactly as for a job taken alone.
            log.warning(
                "a take of %d jobs failed after %d were written (%s: %s); the %d left run one by one",
                len(jobs),
                len(written),
                type(exc).__name__,
                exc,
                len(jobs) - len(written),
            )
        self._finish_all(written)
        for job, execution in list(zip(jobs, executions, strict=True))[len(written) :]:
            # Registered as started when the take began, and renewed by the heartbeat thread
            # since: renew it now too, so that it starts with a whole HEARTBEAT_TTL_S ahead
            # (RQ's own prepare_job_execution does not renew the started registry).
            rq_compat.renew_claim(self.connection, job, execution, self.get_heartbeat_ttl(job))
            self.perform_job(job, queue, execution)

    def _start_all(self, jobs: list[Job], queue: Queue) -> list[Execution]:
        """Register the jobs as started, as RQ's prepare_execution and prepare_job_execution do, in one pipeline."""
        return rq_compat.start_jobs(self, jobs, queue)

    def _finish_all(self, written: list[tuple[Job, Execution, Written]]) -> None:
        """Mark written jobs finished, as RQ's handle_job_success does, and count them, in one transaction."""
        if not written:
            return
        with self.connection.pipeline() as pipe:
            for job, execution, done in written:
                rq_compat.finish_job(self, pipe, job, execution, done.summary)
                done.count(pipe)
            pipe.execute()


def worker_queue_names(settings: Settings, redis: Redis) -> list[str]:
    """The queues a worker takes from: every shard, the unsharded queue of older releases, then any
    shard of a larger QUEUE_SHARDS still known to RQ (left behind by lowering it), so none is stranded."""
    return settings.queues.in_use(q.name for q in Queue.all(connection=redis))


def make_worker(settings: Settings, connection: Redis | None = None, name: str | None = None) -> IngestWorker:
    """A worker on every queue of the ingest queue's shards, speaking the api's job serializer.

    It takes from them in turn (`IngestWorker.work`: RQ's round-robin strategy).
    """
    redis = connection or redis_client(settings.redis_url)
    queues = [rq_compat.ingest_queue(name, redis) for name in worker_queue_names(settings, redis)]
    worker = IngestWorker(
        queues,
        connection=redis,
        serializer=MsgpackSerializer,
        job_class=IngestJob,
        queue_class=rq_compat.IngestQueue,
        name=name,
        maintenance_interval=settings.worker_maintenance_interval_s,
    )
    worker.jobs_per_take = settings.worker_jobs_per_take
    return worker


# A worker must read whatever the api accepted. The api's JSON decoder stops at
# Python's recursion limit (1,000 levels, less the api's own stack), and a
# worker's stack is not the api's: 10,000 leaves room to spare. msgspec's C
# decoder uses little stack per level (15,000 levels read fine on a main thread).
WORKER_RECURSION_LIMIT = 10_000


def raise_recursion_limit() -> None:
    """Let this process decode JSON nested deeper than the api can read (see WORKER_RECURSION_LIMIT)."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), WORKER_RECURSION_LIMIT))


# PR_SET_PDEATHSIG (linux/prctl.h): the kernel signals the process when its parent dies.
_PR_SET_PDEATHSIG = 1
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _die_with_parent(sig: int, parent: int) -> None:
    """Have the kernel send `sig` to this process as soon as `parent` (the supervisor) dies.

    Without it a child of a supervisor killed with SIGKILL lives on as an orphan: a
    worker nobody stops, or a scheduler holding the lock no replacement can take.
    Linux only (prctl through ctypes); elsewhere the process manager must kill the group.
    """
    # Not the supervisor's handlers, inherited by fork (blocked across it: see _Child.start).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), sig)


def _work(burst: bool, parent: int) -> None:
    # SIGKILL, as if killed with the supervisor: a worker cannot stop warmly within a
    # bounded time (a batch may run for its whole timeout), and its batch is retried.
    _die_with_parent(signal.SIGKILL, parent)
    logs.configure()
    raise_recursion_limit()
    settings = Settings.from_env()
    redis_check.check(redis_check.read_config(redis_client(settings.redis_url)), settings.redis_require_durable)
    worker = make_worker(settings)
    log.info("worker %s starting (selftune-ingest %s)", worker.name, VERSION, extra={"version": VERSION})
    freeze_startup_heap()
    # The scheduler runs in a process of its own (see run_workers), not forked by a
    # worker: RQ's, the worker's child, would outlive a worker killed with SIGKILL. A
    # burst worker only moves due jobs once, in-process, as RQ does in burst mode.
    worker.work(burst=burst, with_scheduler=burst, logging_level=os.environ.get("LOG_LEVEL", "INFO"))


SCHEDULER_LOCK_POLL_S = 1.0  # how often a scheduler waiting for the lock (another holds it) tries again


def make_scheduler(settings: Settings, name: str, connection: Redis | None = None) -> RQScheduler:
    """RQ's scheduler for every queue of the ingest queue's shards, named `name` (its lock's token)."""
    redis = connection or redis_client(settings.redis_url)
    return RQScheduler(
        worker_queue_names(settings, redis),
        connection=redis,
        serializer=MsgpackSerializer,
        name=name,
        logging_level=os.environ.get("LOG_LEVEL", "INFO"),
    )


def _schedule(name: str, parent: int) -> None:
    """A scheduler process: wait for RQ's scheduler lock, then move due jobs to the queue every second."""
    # SIGTERM: it stops within a second and releases its lock (RQ's handler).
    _die_with_parent(signal.SIGTERM, parent)
    logs.configure()
    scheduler = make_scheduler(Settings.from_env(), name)
    # One scheduler per queue holds the lock (another pool's, on another machine, say):
    # wait for it. RQ's own loop would only try again after 2 minutes.
    while not scheduler.acquire_locks():  # type: ignore[no-untyped-call]
        time.sleep(SCHEDULER_LOCK_POLL_S)
    # In this process, not `start()`, which would fork one more child.
    scheduler.work()  # type: ignore[no-untyped-call]


def release_scheduler(settings: Settings, name: str) -> None:
    """Release the lock of a scheduler that died (if it still holds it) and forget it, as its own stop would."""
    redis = redis_client(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
    try:
        for queue_name in worker_queue_names(settings, redis):
            rq_compat.release_scheduler_lock(redis, queue_name, name)
    except (RedisError, OSError) as exc:
        log.warning("could not release the lock of scheduler %s (it expires within a minute): %s", name, exc)
    finally:
        redis.close()


RESTART_BACKOFF_S = 2.0  # a child that exits sooner than this after its start is replaced this long after it


class _Child:
    """One supervised child process: a worker or the scheduler."""

    def __init__(self, name: str, target: Any, args: tuple[Any, ...]) -> None:
        self.name = name
        self.target = target
        self.args = args
        self.proc: multiprocessing.Process | None = None
        self.started = 0.0

    def start(self) -> None:
        self.proc = multiprocessing.Process(target=self.target, args=self.args, name=self.name)
        # A stop signal arriving while the child is forked waits until the child has its own handlers.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            self.proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self.started = time.monotonic()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.is_alive()

    def signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.pid and self.proc.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signum)


def run_workers(count: int, burst: bool = False) -> int:
    """Run `count` worker processes and one scheduler process, and keep them running.

    Every one of them is a child of this process that dies with it (see
    `_die_with_parent`), and SIGTERM/SIGINT here stop them all warmly. RQ's worker
    quits when Redis disappears under it: a child that exits unexpectedly is
    replaced, at once if it had run for RESTART_BACKOFF_S, so a Redis blip never
    halves capacity silently. A scheduler that died is replaced at once too,
    after its lock is released, so delayed retries keep firing. In burst mode the
    workers end when the queue is empty and are not replaced (no scheduler runs).
    """
    logs.configure()
    settings = Settings.from_env()
    log.info(
        "selftune-ingest %s: %d worker(s)%s", VERSION, count, " (burst)" if burst else "", extra={"version": VERSION}
    )
    me = os.getpid()
    workers = [_Child(f"worker-{i}", _work, (burst, me)) for i in range(count)]
    scheduler_name = uuid.uuid4().hex  # its lock's token: what this pool releases when the scheduler died
    children = list(workers)
    scheduler: _Child | None = None
    if not burst:
        scheduler = _Child("scheduler", _schedule, (scheduler_name, me))
        children.append(scheduler)
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            child.signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        child.start()
    while True:
        if stopping or burst:
            if not any(child.alive() for child in children):
                break
        else:
            for child in children:
                if child.alive() or time.monotonic() - child.started < RESTART_BACKOFF_S:
                    continue
                assert child.proc is not None
                log.warning("%s exited with code %s; starting a new one", child.name, child.proc.exitcode)
                if child is scheduler:
                    release_scheduler(settings, scheduler_name)
                if not stopping:
                    child.start()
        sentinels = [child.proc.sentinel for child in children if child.alive() and child.proc is not None]
        multiprocessing.connection.wait(sentinels, timeout=0.5)  # wakes as soon as a child exits
    return max((child.proc.exitcode or 0) for child in workers if child.proc is not None)


if __name__ == "__main__":
    sys.exit(run_workers(int(sys.argv[1]) if len(sys.argv) > 1 else 1))
