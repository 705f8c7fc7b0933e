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

from schema.queue import INGEST_JOB, MsgpackSerializer, dedupe_key, job_description
from schema.settings import Settings

# KEYS: dedupe key, job hash, queue list, RQ's set of queues.
# ARGV: answer, answer ttl, job id, queue key, then the job hash as field, value, ...
_ENQUEUE_ONCE = """
local prior = redis.call('GET', KEYS[1])
if prior then return prior end
redis.call('HSET', KEYS[2], unpack(ARGV, 5))
redis.call('RPUSH', KEYS[3], ARGV[3])
redis.call('SADD', KEYS[4], ARGV[4])
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
return false
"""


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

    async def enqueue_once(self, workspace_id: str, push_id: str, payload: bytes, answer: bytes) -> bytes | None:
        """Enqueue the payload unless this push id was accepted before; return the earlier answer if so."""
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
        prior = await self._script(
            keys=[dedupe_key(workspace_id, push_id), job.key, self._queue.key, Queue.redis_queues_keys],
            args=[answer, self._settings.push_dedupe_ttl_s, job.id, self._queue.key, *fields],
        )
        return prior  # type: ignore[no-any-return]
