"""RQ workers that do not fork per job (SPEC 5, PERF.md).

`IngestWorker` is RQ's `SimpleWorker`: the job runs in the worker process, so
imports, the msgspec decoders and the Postgres connection are paid once, not
per job. `run_workers(n)` starts n such processes and waits for them.
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
from rq.job import Job

from schema import logs, redis_check
from schema.queue import IngestJob, MsgpackSerializer
from schema.settings import Settings

log = logging.getLogger(__name__)

# How long after its timeout a job whose worker vanished (SIGKILL, lost machine)
# is declared abandoned and retried. RQ's default is 60 s; our jobs are short.
ABANDONED_GRACE_S = 10


class IngestWorker(SimpleWorker):
    """A SimpleWorker whose abandoned jobs are noticed within timeout + ABANDONED_GRACE_S."""

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


def make_worker(settings: Settings, connection: Redis | None = None, name: str | None = None) -> IngestWorker:
    """A worker on the ingest queue, speaking the api's job serializer."""
    redis = connection or Redis.from_url(settings.redis_url)
    queue = Queue(settings.queue_name, connection=redis, serializer=MsgpackSerializer, job_class=IngestJob)
    return IngestWorker(
        [queue],
        connection=redis,
        serializer=MsgpackSerializer,
        job_class=IngestJob,
        name=name,
        maintenance_interval=settings.worker_maintenance_interval_s,
    )


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


def _work(burst: bool) -> None:
    logs.configure()
    settings = Settings.from_env()
    check_redis(Redis.from_url(settings.redis_url), settings)
    worker = make_worker(settings)
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
