"""RQ workers that do not fork per job, and share RQ's bookkeeping between queued batches (SPEC 5, PERF.md).

`IngestWorker` is RQ's `SimpleWorker`: the job runs in the worker process, so
imports, the msgspec decoders and the Postgres connection are paid once, not
per job. When batches are waiting behind the one it dequeued, it takes up to
WORKER_JOBS_PER_TAKE of them at once (see `IngestWorker.execute_job`).
`run_workers(n)` starts n such processes and waits for them.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import time
from typing import Any

from redis import Redis
from rq import Queue, SimpleWorker
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.timeouts import JobTimeoutException
from rq.utils import now
from rq.worker import WorkerStatus
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from schema import logs, redis_check
from schema.heap import freeze_startup_heap
from schema.queue import INGEST_JOB, IngestJob, MsgpackSerializer
from schema.settings import Settings
from workers import db
from workers.jobs import count_batch, log_batch, write_payload

log = logging.getLogger(__name__)

# How long after its timeout a job whose worker vanished (SIGKILL, lost machine)
# is declared abandoned and retried. RQ's default is 60 s; our jobs are short.
ABANDONED_GRACE_S = 10


# Moves job ids from the queue (KEYS[1]) to its intermediate queue (KEYS[2]), as
# RQ's own dequeue does with one: a worker that dies before it registers them
# leaves them there, and RQ's maintenance puts them back. It takes at most
# ARGV[1], and leaves one waiting job for each other worker of the queue
# (KEYS[3]): a few jobs are spread over idle workers instead of queueing behind
# one of them, and only a backlog is taken in bulk.
_TAKE_MORE = """
local others = math.max(0, redis.call('SCARD', KEYS[3]) - 1)
local n = math.min(tonumber(ARGV[1]), redis.call('LLEN', KEYS[1]) - others)
local ids = {}
for i = 1, n do
  local id = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
  if not id then break end
  ids[i] = id
end
return ids
"""


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

    Abandoned jobs (the worker killed) are noticed within timeout + ABANDONED_GRACE_S.
    """

    jobs_per_take = 1
    _take_script: Any = None

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return int(job.timeout or 180) + ABANDONED_GRACE_S

    @property
    def dequeue_timeout(self) -> int:
        # RQ runs maintenance (which retries abandoned batches) only between
        # waits for a job, and an idle wait lasts up to worker_ttl - 15 s (6+ min).
        # Wait at most one maintenance interval, so a dead worker's batch is
        # retried within about timeout + grace + interval (RQ's own locks can
        # add up to a minute: its scheduler lock, its intermediate queue).
        return max(1, min(super().dequeue_timeout, int(self.maintenance_interval)))

    def execute_job(self, job: Job, queue: Queue) -> None:
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
        if self._take_script is None:
            self._take_script = self.connection.register_script(_TAKE_MORE)
        keys = [queue.key, queue.intermediate_queue_key, WORKERS_BY_QUEUE_KEY % queue.name]
        ids = self._take_script(keys=keys, args=[self.jobs_per_take - 1])
        if not ids:
            return []
        found = []
        for job_id, job in zip(
            ids, self.job_class.fetch_many([i.decode() for i in ids], self.connection, self.serializer), strict=True
        ):
            if job is None:  # deleted while queued: RQ's dequeue skips these too
                self.connection.lrem(queue.intermediate_queue_key, 1, job_id)
                continue
            job.redis_server_version = self.get_redis_server_version()  # type: ignore[no-untyped-call]
            found.append(job)
        return found

    def _perform_together(self, jobs: list[Job], queue: Queue) -> None:
        executions = self._start_all(jobs, queue)
        written: list[tuple[Job, Execution, dict[str, Any], float]] = []
        timeout = max(j.timeout or self.queue_class.DEFAULT_TIMEOUT for j in jobs)
        try:
            with self.death_penalty_class(timeout, JobTimeoutException, job_id=jobs[0].id):
                for job, execution in zip(jobs, executions, strict=True):
                    started, job.started_at = time.perf_counter(), now()  # this batch's own start and end,
                    batch, summary = write_payload(job.args[0])
                    job.ended_at = now()  # so RQ's working times are not those of the whole take
                    written.append((job, execution, summary, time.perf_counter() - started))
                    log_batch(batch, summary)
        except Exception as exc:
            # The failed batch's transaction rolled back. A timeout can leave the
            # connection mid-command: the next batch opens a fresh one.
            db.close()
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
            # Registered as started when the take began: renew it now, or another worker's
            # maintenance could take this batch for abandoned while it runs (RQ's own
            # prepare_job_execution does not renew the started registry).
            with self.connection.pipeline() as pipe:
                execution.heartbeat(job.started_job_registry, self.get_heartbeat_ttl(job), pipe)
                pipe.execute()
            self.perform_job(job, queue, execution)

    def _start_all(self, jobs: list[Job], queue: Queue) -> list[Execution]:
        """Register the jobs as started, as RQ's prepare_execution and prepare_job_execution do, in one pipeline."""
        executions = []
        ttls = [self.get_heartbeat_ttl(job) for job in jobs]
        with self.connection.pipeline() as pipe:
            for job, ttl in zip(jobs, ttls, strict=True):
                execution = Execution.create(job, ttl, pipeline=pipe, worker_name=self.name)
                self.executions[execution.id] = execution
                job.heartbeat(now(), ttl, pipeline=pipe)
                job.prepare_for_execution(self.name, pipeline=pipe)
                pipe.persist(job.key)
                pipe.lrem(queue.intermediate_queue_key, 1, job.id)
                executions.append(execution)
            self.heartbeat(max(ttls), pipeline=pipe)
            self.set_state(WorkerStatus.BUSY, pipeline=pipe)
            pipe.execute()
        return executions

    def _finish_all(self, written: list[tuple[Job, Execution, dict[str, Any], float]]) -> None:
        """Mark written jobs finished, as RQ's handle_job_success does, and count them, in one transaction."""
        if not written:
            return
        with self.connection.pipeline() as pipe:
            for job, execution, summary, seconds in written:
                job._result = summary
                job._status = JobStatus.FINISHED
                result_ttl = job.get_result_ttl(self.default_result_ttl)
                self.increment_successful_job_count(pipeline=pipe)
                self.increment_total_working_time(job.ended_at - job.started_at, pipe)  # type: ignore[operator]
                if result_ttl != 0:
                    job._handle_success(
                        result_ttl,
                        pipeline=pipe,
                        worker_name=self.name,
                        execution_id=execution.id,
                        execution_started_at=execution.created_at,
                        execution_ended_at=job.ended_at,
                    )
                job.cleanup(result_ttl, pipeline=pipe, remove_from_queue=False)
                self.cleanup_execution(job, pipeline=pipe, execution=execution)
                count_batch(pipe, summary, seconds)
            pipe.execute()


def make_worker(settings: Settings, connection: Redis | None = None, name: str | None = None) -> IngestWorker:
    """A worker on the ingest queue, speaking the api's job serializer."""
    redis = connection or Redis.from_url(settings.redis_url)
    queue = Queue(settings.queue_name, connection=redis, serializer=MsgpackSerializer, job_class=IngestJob)
    worker = IngestWorker(
        [queue],
        connection=redis,
        serializer=MsgpackSerializer,
        job_class=IngestJob,
        name=name,
        maintenance_interval=settings.worker_maintenance_interval_s,
    )
    worker.jobs_per_take = settings.worker_jobs_per_take
    return worker


def check_redis(redis: Redis, settings: Settings) -> None:
    """Warn (or refuse to start) if Redis could lose queued batches."""
    try:
        config: dict[Any, Any] = {}
        for key in redis_check.CONFIG_KEYS:
            config |= redis.config_get(key)
    except Exception as exc:
        log.warning("could not read Redis config: %s", exc)
        redis_check.check(None, settings.redis_require_durable)
        return
    redis_check.check(config, settings.redis_require_durable)


# A worker must read whatever the api accepted. The api's JSON decoder stops at
# Python's recursion limit (1,000 levels, less the api's own stack), and a
# worker's stack is not the api's: 10,000 leaves room to spare. msgspec's C
# decoder uses little stack per level (15,000 levels read fine on a main thread).
WORKER_RECURSION_LIMIT = 10_000


def raise_recursion_limit() -> None:
    """Let this process decode JSON nested deeper than the api can read (see WORKER_RECURSION_LIMIT)."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), WORKER_RECURSION_LIMIT))


def _work(burst: bool) -> None:
    logs.configure()
    raise_recursion_limit()
    settings = Settings.from_env()
    check_redis(Redis.from_url(settings.redis_url), settings)
    worker = make_worker(settings)
    freeze_startup_heap()
    worker.work(burst=burst, with_scheduler=True, logging_level=os.environ.get("LOG_LEVEL", "INFO"))


RESTART_BACKOFF_S = 2.0  # a worker that died (Redis gone, say) is replaced after this pause


def run_workers(count: int, burst: bool = False) -> int:
    """Run `count` worker processes and keep them running; SIGTERM/SIGINT stop them warmly.

    RQ's worker quits when Redis disappears under it: a child that exits
    unexpectedly is replaced, so a Redis blip never halves capacity silently.
    In burst mode the children end when the queue is empty, and are not replaced.
    A single worker runs in this process: its process manager restarts it.
    """
    if count == 1:
        _work(burst)
        return 0

    def spawn(i: int) -> multiprocessing.Process:
        proc = multiprocessing.Process(target=_work, args=(burst,), name=f"worker-{i}")
        proc.start()
        return proc

    procs = [spawn(i) for i in range(count)]
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.pid and p.is_alive():
                os.kill(p.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while any(p.is_alive() for p in procs) or not (stopping or burst):
        for i, p in enumerate(procs):
            if p.is_alive() or stopping or burst:
                continue
            log.warning("%s exited with code %s; starting a new one", p.name, p.exitcode)
            time.sleep(RESTART_BACKOFF_S)
            if not stopping:
                procs[i] = spawn(i)
        time.sleep(0.5)
    return max((p.exitcode or 0) for p in procs)


if __name__ == "__main__":
    sys.exit(run_workers(int(sys.argv[1]) if len(sys.argv) > 1 else 1))
