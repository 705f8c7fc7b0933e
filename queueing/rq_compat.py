"""Every reach into RQ's internals, in one place (STYLE 13).

RQ's documented API (`Queue`, `Job.fetch`, the registries, `Retry`, `Callback`,
`get_current_job`, a worker's `work`) is used wherever it is needed. What RQ
does not document is used here only, behind the functions below:

- its storage format: the job hash the api writes itself (`job_write`), the
  fields and keys the queue snapshot reads (`SNAPSHOT_SCRIPT`, `QueueKeys`,
  `job_key`, `WORKER_FIELDS`), how it stores a job's data (`MsgpackSerializer`, `IngestJob`);
- the bookkeeping of a worker that takes several jobs at once (`take_more`,
  `start_jobs`, `finish_job`), renews its claims (`renew_claims`) and cleans the
  registries with its own lock (`clean_registries`): private attributes and
  methods of RQ's jobs and workers (`job._result`, `job._status`,
  `job._handle_success`, `worker._exc_handlers`, `worker.executions`);
- its scheduler's lock (`release_scheduler_lock`: `rq.scripts.release_lock`);
- its dequeue from several queues (`IngestQueue.dequeue_any`, which moves a job to its
  queue's intermediate list as RQ's one-queue dequeue does, and hands it to RQ's private
  `Queue._fetch_dequeued_job`), and the worker's round-robin order it follows
  (`BaseWorker._ordered_queues`, rotated by RQ's `reorder_queues`).

tests/unit/test_rq_compat.py checks each of them against the installed RQ (its
major is TESTED_RQ_MAJOR, the one pyproject.toml pins), and fails loudly on an
RQ that moved or changed one.

Why one module of ~640 lines: it is the one place that may touch RQ's internals,
on purpose; a reader checking what an RQ upgrade can break reads this file only.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import lz4.frame
import msgspec
import rq
from redis import Redis
from rq import Queue
from rq.exceptions import DequeueTimeout
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.registry import clean_registries as rq_clean_registries
from rq.results import Result
from rq.scheduler import SCHEDULER_KEY_TEMPLATE, RQScheduler
from rq.scripts import release_lock
from rq.suspension import WORKERS_SUSPENDED
from rq.utils import now
from rq.worker import WorkerStatus
from rq.worker_registration import WORKERS_BY_QUEUE_KEY, clean_worker_registry

if TYPE_CHECKING:
    from redis.client import Pipeline
    from rq.worker import BaseWorker

log = logging.getLogger(__name__)

# The RQ major this module was written and tested against (pyproject.toml pins `rq` to it).
TESTED_RQ_MAJOR = 3


def rq_major() -> int:
    """The installed RQ's major version."""
    return int(rq.__version__.split(".")[0])


# ---------------------------------------------------------------------------------------------
# How a job's data is stored


_LZ4_MAGIC = b"\x04\x22\x4d\x18"  # an lz4 frame's first four bytes


def compress_job_data(data: bytes) -> bytes:
    """lz4 frame of a job's data: ~0.6 us per record of api CPU, 3-4x smaller in Redis."""
    compressed: bytes = lz4.frame.compress(data, content_checksum=False)
    return compressed


class MsgpackSerializer:
    """RQ job serializer: a job's data as msgpack (via msgspec, so bytes arguments travel unchanged), its meta and results as JSON.

    Its dotted path, `queueing.rq_compat.MsgpackSerializer`, is what RQ's command
    line takes as `--serializer`. A dict (what RQ serializes for a job's `meta` and
    its results) is written as JSON when the standard library's `json` can write
    it (it refuses bytes and datetimes, which then go as msgpack), so tools that
    load jobs with RQ's own `JSONSerializer` (`rq-dashboard --json`) read them: with
    its default, pickle, a job's page is a 500. Reading takes either form: jobs
    written before stay readable. A job's data never is a dict (RQ stores the
    tuple (func, instance, args, kwargs)), so it stays msgpack.
    """

    _encoder = msgspec.msgpack.Encoder()
    _decoder = msgspec.msgpack.Decoder()
    _json_decoder = msgspec.json.Decoder()

    @classmethod
    def dumps(cls, obj: Any, /) -> bytes:
        if isinstance(obj, dict):
            try:
                return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
            except (TypeError, ValueError):  # bytes, datetimes, NaN: not JSON as such
                pass
        return cls._encoder.encode(obj)

    @classmethod
    def loads(cls, data: bytes, /) -> Any:
        # A JSON object. In msgpack, 0x7b ("{") is the whole of the int 123: never followed by more.
        if data[:1] == b"{" and len(data) > 1:
            return cls._json_decoder.decode(data)
        if data[:4] == _LZ4_MAGIC:  # job data compressed by the api (msgpack never starts so)
            data = lz4.frame.decompress(data)
        value = cls._decoder.decode(data)
        # RQ unpacks job data as (func_name, instance, args, kwargs); msgpack gives lists.
        if isinstance(value, list) and len(value) == 4 and isinstance(value[2], list):
            value[2] = tuple(value[2])
            return tuple(value)
        return value


class IngestJob(Job):
    """An RQ job whose data is written once: when the api enqueues it.

    RQ saves the whole job hash again when a job ends (`Job.save` from
    `_handle_success` and the failure paths), and `Job.to_dict` compresses the
    data anew with zlib at level 6 each time: ~1.4 ms of worker CPU for a
    100-record batch and ~6 ms for a 500-record one (bench/README.md), to rewrite
    bytes Redis already holds. A job loaded from Redis leaves its `data` field as
    it is; a job built here (not loaded) is saved whole, as RQ does.
    """

    _data_stored = False

    def restore(self, raw_data: Any) -> Any:
        result = super().restore(raw_data)  # raises NoSuchJobError when the hash has no data
        self._data_stored = True
        return result

    def to_dict(self, include_meta: bool = True, include_result: bool = True) -> dict[str, Any]:
        if not self._data_stored:
            return super().to_dict(include_meta=include_meta, include_result=include_result)
        return self.to_dict_without_data(include_meta=include_meta, include_result=include_result)

    def to_dict_without_data(self, include_meta: bool = True, include_result: bool = True) -> dict[str, Any]:
        """RQ's hash of this job without its `data` field, and without compressing the data to build it.

        The worker saves a loaded job with it; the api writes the data itself (see `job_hash`).
        """
        data, self._data = self._data, b""  # the attribute, not the setter: keeps func and args
        try:
            mapping = super().to_dict(include_meta=include_meta, include_result=include_result)
        finally:
            self._data = data
        del mapping["data"]
        return mapping


# Moves the first job id of the first non-empty queue of KEYS[1..n] to that queue's intermediate
# list (KEYS[n+1..2n]), as RQ's own dequeue from one queue does (BLMOVE): a worker that dies before
# it registers the job leaves it there, and maintenance puts it back. Returns {index, id} or nil.
_MOVE_FIRST = """
local n = #KEYS / 2
for i = 1, n do
  local id = redis.call('LMOVE', KEYS[i], KEYS[n + i], 'LEFT', 'RIGHT')
  if id then return {i - 1, id} end
end
return false
"""
# An idle worker on several queues looks again after DEQUEUE_POLL_MIN_S, then less often, up to
# DEQUEUE_POLL_MAX_S (the wait a batch pushed to an idle pool can add).
DEQUEUE_POLL_MIN_S = 0.01
DEQUEUE_POLL_MAX_S = 0.1


class IngestQueue(Queue):
    """RQ's Queue, whose dequeue from several queues (the shards) keeps RQ's at-least-once move.

    RQ dequeues from one queue with BLMOVE into the queue's intermediate list, but from
    several with BLPOP (Redis has no blocking move from several lists): a worker killed
    between the pop and registering the job would lose the batch. Here the first job of
    the first non-empty queue, in the worker's order (RQ's round-robin strategy rotates
    it), is moved as RQ moves one; with every queue empty the worker looks again after a
    few milliseconds (up to DEQUEUE_POLL_MAX_S) until its dequeue timeout. From one queue,
    RQ's own dequeue runs unchanged.
    """

    @classmethod
    def dequeue_any(
        cls,
        queues: Any,
        timeout: int | None,
        connection: Redis,
        job_class: type[Job] | None = None,
        serializer: Any = None,
        death_penalty_class: Any = None,
    ) -> tuple[Job, Queue] | None:
        queues = list(queues)
        if len(queues) == 1:
            return super().dequeue_any(queues, timeout, connection, job_class, serializer, death_penalty_class)
        keys = [q.key for q in queues] + [q.intermediate_queue_key for q in queues]
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = DEQUEUE_POLL_MIN_S
        while True:
            moved = connection.eval(_MOVE_FIRST, len(keys), *keys)
            if moved:
                index, job_id = int(moved[0]), moved[1].decode()
                found = cls._fetch_dequeued_job(
                    connection, queues[index].key, job_id, job_class, serializer, death_penalty_class
                )
                if found is not None:
                    return found
                connection.lrem(queues[index].intermediate_queue_key, 1, job_id)  # deleted while queued: skip it
                continue
            if deadline is None:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise DequeueTimeout(timeout, keys[: len(queues)])
            time.sleep(min(pause, left))
            pause = min(pause * 2, DEQUEUE_POLL_MAX_S)


def ingest_queue(name: str, connection: Redis) -> Queue:
    """The ingest queue as RQ sees it: our serializer and job class."""
    return IngestQueue(name, connection=connection, serializer=MsgpackSerializer, job_class=IngestJob)


# ---------------------------------------------------------------------------------------------
# The job hash the api writes itself


def job_hash(job: IngestJob, compression: str) -> dict[str, Any]:
    """The job's Redis hash, as RQ's `Job.to_dict` writes it, with its data compressed by lz4 (or not at all).

    RQ compresses job data with zlib at level 6: for a 100 KB batch of realistic
    text that is 1.4 ms of api CPU (level 1: 0.46 ms, 4x smaller), more than the
    rest of a push costs. lz4 takes 0.06 ms for 3.2x (bench/README.md), and
    `MsgpackSerializer.loads` undoes it in the worker (RQ's own loader tries
    zlib, and hands anything else on as it is).
    """
    mapping = job.to_dict_without_data()
    data = job.data  # the serialized (func, instance, args, kwargs)
    mapping["data"] = compress_job_data(data) if compression == "lz4" else data
    return mapping


@dataclass(frozen=True)
class JobWrite:
    """What enqueueing a job writes, as RQ's own enqueue would: HSET `fields` at `job_key`,
    RPUSH `job_id` on `queue_key`, SADD `queue_key` to `queues_key` (RQ's set of queues)."""

    job_id: str
    job_key: str
    queue_key: str
    queues_key: str
    fields: list[bytes | str | int | float]  # the hash as field, value pairs


def job_write(queue: Queue, job: IngestJob, compression: str) -> JobWrite:
    """The writes that put `job` (built by `queue.create_job`) on `queue`, enqueued now."""
    job.enqueued_at = datetime.now(UTC).replace(tzinfo=None)
    fields: list[bytes | str | int | float] = []
    for field, value in job_hash(job, compression).items():
        fields.extend((field, value))
    return JobWrite(job.id, job.key, queue.key, Queue.redis_queues_keys, fields)


# ---------------------------------------------------------------------------------------------
# The keys and fields the queue snapshot reads

SUSPENDED_KEY = WORKERS_SUSPENDED  # set by `rq suspend`


def workers_key(queue_name: str) -> str:
    """RQ's set of the keys of the workers on a queue."""
    return WORKERS_BY_QUEUE_KEY % queue_name


@dataclass(frozen=True)
class QueueKeys:
    """RQ's keys for one queue."""

    queue: str
    failed: str
    scheduled: str
    started: str
    workers: str

    @classmethod
    def for_queue(cls, name: str) -> QueueKeys:
        conn = Redis()  # never used for I/O: RQ derives key names from it
        return cls(
            queue=Queue(name, connection=conn).key,
            failed=FailedJobRegistry(name, connection=conn).key,
            scheduled=ScheduledJobRegistry(name, connection=conn).key,  # type: ignore[no-untyped-call]
            started=StartedJobRegistry(name, connection=conn).key,
            workers=workers_key(name),
        )


# KEYS: for each of ARGV[2] queues, five: queue, failed, scheduled, started, workers set; then RQ's
# suspension flag, then the rate buckets. ARGV: now (unix seconds), the number of queues.
# Every key it touches is in KEYS (Redis Cluster's rule, and a replica's). The keys it can only
# name once it has read these (the head jobs' hashes, the stalled jobs', each worker's) are read by
# the caller next, in one pipeline: see `snapshot_detail_reads`. A worker listens on every shard,
# so it is in every queue's workers set: the script returns each worker key once.
# RQ's format, read here: a started registry entry is "<job id>:<execution id>", scored by when
# its claim lapses.
SNAPSHOT_SCRIPT = """
local n = tonumber(ARGV[2])
local queues, workers, seen = {}, {}, {}
for q = 0, n - 1 do
  local b = q * 5
  local depth = redis.call('LLEN', KEYS[b + 1])
  local head = redis.call('LINDEX', KEYS[b + 1], 0)
  local failed = redis.call('ZCARD', KEYS[b + 2])
  local scheduled = redis.call('ZCARD', KEYS[b + 3])
  local started = redis.call('ZCARD', KEYS[b + 4])
  -- Started entries ("job:execution") are scored by when their claim lapses: past it, nobody renews
  -- them (their worker died) and the batch is not moving.
  local stalled = redis.call('ZRANGEBYSCORE', KEYS[b + 4], '-inf', '(' .. ARGV[1], 'LIMIT', 0, 100)
  local stalled_ids = {}
  for i, entry in ipairs(stalled) do stalled_ids[i] = string.match(entry, '^(.*):[^:]*$') or entry end
  for _, w in ipairs(redis.call('SMEMBERS', KEYS[b + 5])) do
    if not seen[w] then seen[w] = true; workers[#workers + 1] = w end
  end
  queues[q + 1] = {depth, head or false, failed, scheduled, started, stalled_ids}
end
local suspended = redis.call('EXISTS', KEYS[n * 5 + 1])
local rates = {}
for i = n * 5 + 2, #KEYS do rates[#rates + 1] = tonumber(redis.call('GET', KEYS[i]) or '0') end
return {queues, workers, suspended, rates}
"""

ENQUEUED_AT = "enqueued_at"  # a job hash's field: when it was enqueued (RQ's timestamp)
WORKER_FIELDS = ("state", "last_heartbeat")  # a worker hash's fields the snapshot reads


def job_key(job_id: str | bytes) -> str:
    """RQ's hash of a job."""
    return str(Job.key_for(job_id.decode() if isinstance(job_id, bytes) else job_id))


def rq_timestamp(stamp: Any) -> float:
    """RQ's timestamps ("2026-01-02T03:04:05.678901Z", UTC) as unix seconds."""
    text = stamp.decode() if isinstance(stamp, bytes) else str(stamp)
    at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


# ---------------------------------------------------------------------------------------------
# A worker's bookkeeping, for jobs taken several at once

# The methods of RQ's worker that `workers.worker.IngestWorker` overrides (undocumented hooks of
# RQ's work loop), with the parameters it expects them to have (`dequeue_timeout`: a property).
WORKER_OVERRIDES: dict[str, tuple[str, ...] | None] = {
    "execute_job": ("self", "job", "queue"),
    "perform_job": ("self", "job", "queue", "execution"),
    "prepare_job_execution": ("self", "job", "remove_from_intermediate_queue"),
    "get_heartbeat_ttl": ("self", "job", "working_time"),
    "clean_registries": ("self",),
    "teardown": ("self",),
    "dequeue_timeout": None,
    # Only its `dequeue_strategy` default changes (round robin); the rest is passed on as given.
    "work": (
        "self",
        "burst",
        "logging_level",
        "date_format",
        "log_format",
        "max_jobs",
        "max_idle_time",
        "with_scheduler",
        "dequeue_strategy",
    ),
}

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


def take_more(worker: BaseWorker, queue: Queue, most: int) -> list[Job]:
    """Up to `most` more jobs from the queue, moved as RQ's dequeue moves one (leaving one per other worker)."""
    keys = [queue.key, queue.intermediate_queue_key, workers_key(queue.name)]
    ids = worker.connection.register_script(_TAKE_MORE)(keys=keys, args=[most])
    if not ids:
        return []
    found = []
    jobs = worker.job_class.fetch_many([i.decode() for i in ids], worker.connection, worker.serializer)
    for job_id, job in zip(ids, jobs, strict=True):
        if job is None:  # deleted while queued: RQ's dequeue skips these too
            worker.connection.lrem(queue.intermediate_queue_key, 1, job_id)
            continue
        job.redis_server_version = worker.get_redis_server_version()  # type: ignore[no-untyped-call]
        found.append(job)
    return found


def start_jobs(worker: BaseWorker, jobs: list[Job], queue: Queue) -> list[Execution]:
    """Register the jobs as started, as RQ's prepare_execution and prepare_job_execution do, in one pipeline.

    Each claim (execution, started registry entry) lasts the worker's `get_heartbeat_ttl(job)`,
    and the worker is marked busy.
    """
    executions = []
    ttls = [worker.get_heartbeat_ttl(job) for job in jobs]
    with worker.connection.pipeline() as pipe:
        for job, ttl in zip(jobs, ttls, strict=True):
            execution = Execution.create(job, ttl, pipeline=pipe, worker_name=worker.name)
            worker.executions[execution.id] = execution
            job.heartbeat(now(), ttl, pipeline=pipe)
            job.prepare_for_execution(worker.name, pipeline=pipe)
            pipe.persist(job.key)
            pipe.lrem(queue.intermediate_queue_key, 1, job.id)
            executions.append(execution)
        worker.heartbeat(max(ttls), pipeline=pipe)
        worker.set_state(WorkerStatus.BUSY, pipeline=pipe)
        pipe.execute()
    return executions


def finish_job(worker: BaseWorker, pipe: Pipeline, job: Job, execution: Execution, result: Any) -> None:
    """Mark a job that ran (its `started_at`, `ended_at` set) finished with `result`, as RQ's handle_job_success does.

    Only adds to `pipe`: the caller executes it, with whatever it counts alongside.
    """
    job._result = result
    job._status = JobStatus.FINISHED
    result_ttl = job.get_result_ttl(worker.default_result_ttl)
    worker.increment_successful_job_count(pipeline=pipe)
    worker.increment_total_working_time(job.ended_at - job.started_at, pipe)  # type: ignore[operator]
    if result_ttl != 0:
        job._handle_success(
            result_ttl,
            pipeline=pipe,
            worker_name=worker.name,
            execution_id=execution.id,
            execution_started_at=execution.created_at,
            execution_ended_at=job.ended_at,
        )
    job.cleanup(result_ttl, pipeline=pipe, remove_from_queue=False)
    worker.cleanup_execution(job, pipeline=pipe, execution=execution)


def running_executions(worker: BaseWorker) -> list[Execution]:
    """The executions the worker is running now (RQ's index of them), safe to call from another thread."""
    for _ in range(5):
        try:
            return list(worker.executions.values())
        except RuntimeError:  # changed size while copied (by the main thread)
            continue
    return []


def renew_claims(worker: BaseWorker, executions: list[Execution], ttl: int) -> None:
    """Renew, for `ttl` s, the claims on `executions` (registry entries that still exist only) and the worker's own."""
    with worker.connection.pipeline() as pipe:
        for execution in executions:
            execution.heartbeat(execution.job.started_job_registry, ttl, pipe)
        worker.heartbeat(ttl, pipeline=pipe)
        pipe.execute()


def renew_claim(connection: Redis, job: Job, execution: Execution, ttl: int) -> None:
    """Renew, for `ttl` s, one job's claim (its execution and started registry entry)."""
    with connection.pipeline() as pipe:
        execution.heartbeat(job.started_job_registry, ttl, pipe)
        pipe.execute()


def clean_registries(worker: BaseWorker, lock_s: int, grace_s: float, seen_ttl_s: int) -> None:
    """RQ's maintenance of each of the worker's queues, under RQ's own lock (held `lock_s` s at most, not 899).

    RQ's registry cleaning (with the worker's failure handlers, as RQ passes them) and
    worker registry cleaning, then jobs stuck in the intermediate list are retried
    after `grace_s` (RQ waits a minute; see `_rescue_intermediate`).
    """
    for queue in worker.queues:
        if not worker.connection.set(queue.registry_cleaning_key, 1, nx=True, ex=lock_s):
            continue
        try:
            worker.log.debug("Worker %s: cleaning registries for queue: %s", worker.name, queue.name)
            rq_clean_registries(queue, worker._exc_handlers)
            clean_worker_registry(queue)
            _rescue_intermediate(worker, queue, grace_s, seen_ttl_s)
        finally:
            queue.release_maintenance_lock()  # type: ignore[no-untyped-call]
    worker.last_cleaned_at = now()  # type: ignore[assignment]  # RQ's annotation says None only


def _rescue_intermediate(worker: BaseWorker, queue: Queue, grace_s: float, seen_ttl_s: int) -> None:
    """RQ's `IntermediateQueue.cleanup`, with `grace_s` instead of a minute.

    A sighting is forgotten after `seen_ttl_s`, so one made of a job then running
    normally is not held against the same job taken again later.
    """
    intermediate = queue.intermediate_queue
    job_ids = intermediate.get_job_ids()
    if not job_ids:
        return
    started = set(queue.started_job_registry.get_job_ids(cleanup=False))
    for job_id in job_ids:
        if job_id in started:
            continue
        job = queue.fetch_job(job_id)
        if job is None:
            intermediate.remove(job_id)
            continue
        seen_key = intermediate.get_first_seen_key(job_id)
        if worker.connection.set(seen_key, now().timestamp(), nx=True, ex=seen_ttl_s):
            continue  # first sighting
        first_seen = intermediate.get_first_seen(job_id)
        if first_seen is not None and (now() - first_seen).total_seconds() > grace_s:
            log.warning("job %s was taken from the queue by a worker that never started it: retrying it", job_id)
            worker.handle_job_failure(job, queue, exc_string="Job was stuck in intermediate queue.")
            intermediate.remove(job_id)
            worker.connection.delete(seen_key)


# ---------------------------------------------------------------------------------------------
# The scheduler's lock


def release_scheduler_lock(redis: Redis, queue_name: str, name: str) -> None:
    """Release the lock of scheduler `name` on a queue (if it still holds it) and forget it, as its own stop would."""
    # RQ's compare-and-delete, the one its scheduler releases its lock with.
    release_lock(redis, RQScheduler.get_locking_key(queue_name), name)
    redis.delete(scheduler_key(name))  # its metadata hash, as its register_death deletes it


def scheduler_key(name: str) -> str:
    """RQ's hash describing scheduler `name`."""
    return SCHEDULER_KEY_TEMPLATE % name


# ---------------------------------------------------------------------------------------------
# Finding a workspace's jobs (`selftune-ingest workspace delete`)


def job_metas(redis: Redis, job_ids: list[str], chunk: int = 500) -> dict[str, dict[str, Any]]:
    """Each job's meta (the api writes its workspace_id and push_id there), read without loading its data.

    A job whose hash is gone, or has no meta, is left out. One HGET per job, pipelined by `chunk`.
    """
    metas: dict[str, dict[str, Any]] = {}
    for start in range(0, len(job_ids), chunk):
        ids = job_ids[start : start + chunk]
        with redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(Job.key_for(job_id), "meta")
            raws = pipe.execute()
        for job_id, raw in zip(ids, raws, strict=True):
            if raw:
                meta = MsgpackSerializer.loads(raw)
                if isinstance(meta, dict):
                    metas[job_id] = meta
    return metas


def waiting_places(queue: Queue) -> dict[str, str]:
    """Where a job of `queue` waits without a worker running it: list or sorted-set key -> its kind.

    The queue itself and its intermediate list (taken by a worker, not started yet) are lists;
    the scheduled (retries), deferred and failed registries are sorted sets of job ids.
    """
    return {
        queue.key: "list",
        queue.intermediate_queue_key: "list",
        queue.scheduled_job_registry.key: "zset",
        queue.deferred_job_registry.key: "zset",
        queue.failed_job_registry.key: "zset",
    }


def drop_jobs(redis: Redis, queue: Queue, job_ids: list[str]) -> None:
    """Take jobs off every waiting place of `queue` and delete their hashes and results (a worker then skips them).

    A worker that fetches a job whose hash is gone skips it (RQ's dequeue and `take_more` both do),
    so deleting the hash drops a job even if a worker moved its id meanwhile.
    """
    places = waiting_places(queue)
    with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            for key, kind in places.items():
                if kind == "list":
                    pipe.lrem(key, 0, job_id)
                else:
                    pipe.zrem(key, job_id)
            pipe.delete(Job.key_for(job_id), Result.get_key(job_id))  # type: ignore[no-untyped-call] # its hash, and a failure's traceback
        pipe.execute()


def drop_stalled(redis: Redis, queue: Queue, job_ids: list[str], at: float) -> list[str]:
    """Drop those of `job_ids` that are started but whose claim lapsed before `at` (their worker died).

    RQ's maintenance would retry such a job; with its hash deleted it skips it (a job it cannot
    fetch), so the batch is never written. Its entries ("<job id>:<execution id>") leave the
    started registry. Returns the ids dropped.
    """
    wanted = set(job_ids)
    registry = queue.started_job_registry
    lapsed = [e.decode() for e in redis.zrangebyscore(registry.key, "-inf", f"({at}")]  # type: ignore[union-attr]
    entries = [e for e in lapsed if registry.parse_job_id(e) in wanted]
    dropped = sorted({registry.parse_job_id(e) for e in entries})
    if entries:
        with redis.pipeline(transaction=False) as pipe:
            pipe.zrem(registry.key, *entries)
            for job_id in dropped:
                pipe.delete(Job.key_for(job_id), Result.get_key(job_id))  # type: ignore[no-untyped-call]
            pipe.execute()
    return dropped
