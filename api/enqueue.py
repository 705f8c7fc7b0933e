"""Put an accepted push on the RQ queue, once per push id, in one Redis round trip.

The job is an ordinary RQ job (RQ's workers, registries and CLI all work with
it), built by RQ's own `Queue.create_job`. What we do ourselves is the write:
a Lua script that, atomically, either finds the push id already accepted (and
returns the first answer) or stores the job hash, pushes its id on the queue
and remembers the answer. What RQ stores, and where, is `queueing.rq_compat.job_write`'s. So a push is never enqueued twice, and never
acknowledged without being in Redis.

With REDIS_MIN_REPLICAS_ACK > 0 the script and a `WAIT n timeout` go in one pipeline, on one
connection (WAIT counts the replicas that have this connection's last write): fewer acks raise
NotReplicated, and the intake spools the push instead (api/intake.py). A duplicate then answers
from a write too (its dedupe key's TTL set again, unchanged), so its WAIT covers the first copy.
"""

from __future__ import annotations

import uuid
from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import ConnectionError as RedisConnectionError
from rq import Callback, Retry

from queueing import stats
from queueing.rq_compat import IngestJob, ingest_queue, job_write
from runtime.settings import Settings
from schema.batches import FAILURE_CALLBACK, INGEST_JOB, dedupe_key, job_description

# KEYS: 1 dedupe key, 2 job hash, 3 queue list (the workspace's shard), 4 RQ's set of queues,
#       5 accepted-records rate bucket, 6 the API key's token bucket.
# ARGV: 1 answer, 2 answer ttl, 3 job id, 4 queue key, 5 records, 6 rate bucket ttl,
#       7 pushes/s allowed per key (0: no limit), 8 burst, 9 "1" to rewrite a duplicate's TTL (a write
#       for WAIT to count), 10... the job hash as field, value pairs.
# Returns {"dup", first answer} | {"slow", seconds} | {"ok", depth}.
# No depth check: the queue's depth and lag are alerts, never a refusal (back-pressure is
# memory, watched by api.backpressure; past it pushes go to the spool).
_ENQUEUE_ONCE = """
local prior = redis.call('GET', KEYS[1])
if prior then
  if ARGV[9] == '1' then
    local ttl = redis.call('PTTL', KEYS[1])
    if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
  end
  return {'dup', prior}
end
local rate = tonumber(ARGV[7])
if rate > 0 then
  local burst = tonumber(ARGV[8])
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  local bucket = redis.call('HMGET', KEYS[6], 'tokens', 'ts')
  local tokens = tonumber(bucket[1]) or burst
  local last = tonumber(bucket[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
  if tokens < 1 then return {'slow', tostring(math.ceil((1 - tokens) / rate))} end
  redis.call('HSET', KEYS[6], 'tokens', tostring(tokens - 1), 'ts', tostring(now))
  redis.call('EXPIRE', KEYS[6], math.ceil(burst / rate) + 1)
end
redis.call('HSET', KEYS[2], unpack(ARGV, 10))
local depth = redis.call('RPUSH', KEYS[3], ARGV[3])
redis.call('SADD', KEYS[4], ARGV[4])
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
redis.call('INCRBY', KEYS[5], tonumber(ARGV[5]))
redis.call('EXPIRE', KEYS[5], tonumber(ARGV[6]))
return {'ok', depth}
"""


class RateLimited(Exception):
    """The API key is over its rate limit: the push was not enqueued."""

    def __init__(self, retry_after_s: int, rate_per_s: float, burst: int) -> None:
        super().__init__(f"retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s
        self.rate_per_s = rate_per_s  # the limit, to name it in the 429
        self.burst = burst


class NotReplicated(RedisConnectionError):
    """Fewer replicas than REDIS_MIN_REPLICAS_ACK confirmed the enqueue in time: a failover could lose it.

    A ConnectionError, so the intake spools the push and the drainer keeps it, as for a Redis that is away.
    """


class Enqueuer:
    """Builds RQ jobs for pushes and writes them with the enqueue-once script."""

    def __init__(self, settings: Settings, redis: AsyncRedis) -> None:
        self._settings = settings
        self._redis = redis
        # Never used for I/O: RQ's Job wants a connection object to be built. One per shard
        # (the job's origin is its queue, where RQ's retries and `replay` put it back).
        offline = Redis()
        self._queues = {name: ingest_queue(name, offline) for name in settings.queues.shard_names}
        self._retry = (
            Retry(max=settings.job_retries, interval=settings.retry_pauses_s) if settings.job_retries else None
        )
        self._on_failure = Callback(FAILURE_CALLBACK)
        self._script = redis.register_script(_ENQUEUE_ONCE)

    @property
    def redis(self) -> AsyncRedis:
        """The api's Redis client (the spool's drainer moves a streamed push's body with it)."""
        return self._redis

    @property
    def settings(self) -> Settings:
        return self._settings

    async def first_answer(self, workspace_id: str, push_id: str) -> bytes | None:
        """The answer this push id was first accepted with, or None (the lookup enqueue_once starts with)."""
        return await self._redis.get(dedupe_key(workspace_id, push_id))  # type: ignore[return-value]

    async def enqueue_once(
        self,
        key_id: str,
        workspace_id: str,
        push_id: str,
        payload: bytes,
        answer: bytes,
        records: int,
        limit_rate: bool = True,
        func: str = INGEST_JOB,
    ) -> bytes | None:
        """Enqueue the payload unless this push id was accepted before; return the earlier answer if so.

        Raises RateLimited when `limit_rate` and the key is over RATE_LIMIT_PUSHES_PER_S
        (a duplicate is answered either way); the spool's drainer passes False, as the
        push was accepted already. `func` is the job's function (INGEST_STREAMED_JOB for
        a streamed push). Redis's own errors propagate.
        """
        queue = self._queues[self._settings.queues.for_workspace(workspace_id)]
        job: IngestJob = queue.create_job(  # type: ignore[assignment]
            func,
            args=(payload,),
            job_id=uuid.uuid4().hex,
            description=job_description(workspace_id, push_id),
            timeout=self._settings.job_timeout_s,
            failure_ttl=self._settings.failed_ttl_s,
            # Outcomes live in the pushes table; RQ keeps a result for a second only.
            # (0 would make RQ delete the job on success, which fails for a batch
            # retried after its worker was killed: RQ looks for the dead execution.)
            result_ttl=1,
            retry=self._retry,
            on_failure=self._on_failure,
            meta={"workspace_id": workspace_id, "push_id": push_id},
        )
        write = job_write(queue, job, self._settings.job_data_compression)
        keys = [
            dedupe_key(workspace_id, push_id),
            write.job_key,
            write.queue_key,
            write.queues_key,
            stats.rate_key("accepted_records"),
            f"selftune:ratelimit:{key_id}",
        ]
        s = self._settings
        args: list[bytes | str | int | float] = [
            answer,
            s.push_dedupe_ttl_s,
            write.job_id,
            write.queue_key,
            records,
            stats.RATE_TTL_S,
        ]
        wait_for = s.redis_min_replicas_ack
        args += [s.rate_limit_pushes_per_s if limit_rate else 0, s.rate_limit_burst, "1" if wait_for else "0"]
        del payload, job  # the hash holds the batch now: one copy in memory while Redis answers
        if not wait_for:
            outcome, value = await self._script(keys=keys, args=[*args, *write.fields])
        else:
            outcome, value = await self._replicated(keys, [*args, *write.fields], wait_for)
        if outcome == b"dup":
            return value  # type: ignore[no-any-return]
        if outcome == b"slow":
            raise RateLimited(int(value), s.rate_limit_pushes_per_s, s.rate_limit_burst)
        return None

    async def _replicated(self, keys: list[str], args: list[bytes | str | int | float], wait_for: int) -> list[Any]:
        """The enqueue script, then WAIT on the same connection; NotReplicated if too few replicas have it."""
        timeout_ms = self._settings.redis_replicas_ack_timeout_ms
        async with self._redis.pipeline(transaction=False) as pipe:
            await self._script(keys=keys, args=args, client=pipe)
            pipe.wait(wait_for, timeout_ms)
            result, acked = await pipe.execute()
        if result[0] != b"slow" and int(acked) < wait_for:
            raise NotReplicated(
                f"{acked} of the {wait_for} replicas REDIS_MIN_REPLICAS_ACK asks for within {timeout_ms} ms"
            )
        return result  # type: ignore[no-any-return]
