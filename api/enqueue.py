"""Put an accepted push on the RQ queue, once per push id, in one Redis round trip.

The job is an ordinary RQ job (RQ's workers, registries and CLI all work with
it), built by RQ's own `Queue.create_job`. What we do ourselves is the write:
a Lua script that, atomically, either finds the push id already accepted (and
returns the first answer) or stores the job hash, pushes its id on the queue
and remembers the answer. So a push is never enqueued twice, and never
acknowledged without being in Redis.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from rq import Queue, Retry

from schema import stats
from schema.queue import INGEST_JOB, MsgpackSerializer, dedupe_key, job_description
from schema.settings import Settings

# KEYS: dedupe key, job hash, queue list, RQ's set of queues, accepted-records rate bucket.
# ARGV: answer, answer ttl, job id, queue key, max depth, records, rate ttl, then the job hash.
# Returns {"dup", first answer} | {"full", depth} | {"ok", depth}.
_ENQUEUE_ONCE = """
local prior = redis.call('GET', KEYS[1])
if prior then return {'dup', prior} end
local depth = redis.call('LLEN', KEYS[3])
if depth >= tonumber(ARGV[5]) then return {'full', depth} end
redis.call('HSET', KEYS[2], unpack(ARGV, 8))
redis.call('RPUSH', KEYS[3], ARGV[3])
redis.call('SADD', KEYS[4], ARGV[4])
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
redis.call('INCRBY', KEYS[5], tonumber(ARGV[6]))
redis.call('EXPIRE', KEYS[5], tonumber(ARGV[7]))
return {'ok', depth + 1}
"""


class QueueFull(Exception):
    """The queue is at MAX_QUEUE_DEPTH: the push was not enqueued."""

    def __init__(self, depth: int) -> None:
        super().__init__(f"the queue holds {depth} batches")
        self.depth = depth


class Enqueuer:
    """Builds RQ jobs for pushes and writes them with the enqueue-once script."""

    def __init__(self, settings: Settings, redis: AsyncRedis) -> None:
        self._settings = settings
        self._redis = redis
        # Never used for I/O: RQ's Job wants a connection object to be built.
        self._queue = Queue(
            settings.queue_name, connection=Redis.from_url(settings.redis_url), serializer=MsgpackSerializer
        )
        self._retry = (
            Retry(max=settings.job_retries, interval=list(settings.job_retry_backoff_s))
            if settings.job_retries
            else None
        )
        self._script = redis.register_script(_ENQUEUE_ONCE)

    @property
    def queue_key(self) -> str:
        return self._queue.key

    async def enqueue_once(
        self, workspace_id: str, push_id: str, payload: bytes, answer: bytes, records: int
    ) -> bytes | None:
        """Enqueue the payload unless this push id was accepted before; return the earlier answer if so.

        Raises QueueFull when the queue is at its depth limit.
        """
        job = self._queue.create_job(
            INGEST_JOB,
            args=(payload,),
            job_id=uuid.uuid4().hex,
            description=job_description(workspace_id, push_id),
            timeout=self._settings.job_timeout_s,
            failure_ttl=self._settings.failed_ttl_s,
            result_ttl=3600,
            retry=self._retry,
            meta={"workspace_id": workspace_id, "push_id": push_id},
        )
        job.enqueued_at = datetime.now(UTC).replace(tzinfo=None)
        fields: list[bytes | str | int | float] = []
        for field, value in job.to_dict().items():
            fields.extend((field, value))
        keys = [
            dedupe_key(workspace_id, push_id),
            job.key,
            self._queue.key,
            Queue.redis_queues_keys,
            stats.rate_key("accepted_records"),
        ]
        s = self._settings
        args = [answer, s.push_dedupe_ttl_s, job.id, self._queue.key, s.max_queue_depth, records, stats.RATE_TTL_S]
        outcome, value = await self._script(keys=keys, args=[*args, *fields])
        if outcome == b"dup":
            return value  # type: ignore[no-any-return]
        if outcome == b"full":
            raise QueueFull(int(value))
        return None
