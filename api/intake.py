"""Where an accepted push is made durable: the Redis queue while it can take it, else the local spool.

The rule (SPEC 2.3, 2.5): the api answers 2xx to every well-formed push it can
make durable, and refuses (503) only when neither Redis nor the spool can hold
it. `Intake.accept` is that rule; `SpoolDrainer` moves spooled batches into the
queue once Redis can take them again, oldest first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import msgspec
from redis import exceptions as redis_errors
from redis.exceptions import RedisError

from api.background import BackgroundLoop
from api.backpressure import QueueWatch
from api.enqueue import Enqueuer
from api.metrics import SPOOL_DRAINED, SPOOL_REFUSED, SPOOLED
from schema.batches import INGEST_STREAMED_JOB, body_key, decode_batch, encode_batch
from spool.store import DRAIN_IDLE_S, AsyncSpool, SpoolError, SpoolFull, drainer_name

log = logging.getLogger(__name__)

_CANNOT_TAKE = (
    redis_errors.ConnectionError,  # TimeoutError is one too
    redis_errors.BusyLoadingError,
    redis_errors.ReadOnlyError,  # a replica, just after a failover
    redis_errors.OutOfMemoryError,  # maxmemory reached under noeviction
    OSError,
)


def redis_cannot_take(exc: BaseException) -> bool:
    """True for the errors that mean "Redis cannot hold a batch now" (down, loading, full, read-only, not persisting).

    Any other Redis error (a script bug, say) is not a reason to spool: it bubbles up as a 500.
    """
    if isinstance(exc, _CANNOT_TAKE):
        return True
    # Redis refuses writes with MISCONF when it cannot persist (a full disk under the AOF).
    return isinstance(exc, redis_errors.ResponseError) and str(exc).startswith(("MISCONF", "OOM"))


def enqueue_outcome(exc: BaseException) -> str:
    """How a failed enqueue left the batch, for the spooled-batches metric.

    `refused`: Redis answered with an error (OOM, READONLY, LOADING, MISCONF), so it
    does not hold the batch. `unconfirmed`: the connection failed mid-call, or fewer
    replicas than REDIS_MIN_REPLICAS_ACK confirmed it; Redis may hold the batch as well,
    and the spool's copy then drains as a `duplicate` (never written twice).
    """
    refused = isinstance(exc, (redis_errors.ResponseError, redis_errors.BusyLoadingError))
    return "refused" if refused else "unconfirmed"


class Refused(Exception):
    """Neither Redis nor the spool can hold the batch (503)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Accepted:
    """Where a push went; `prior` is the first answer when its push id was accepted before."""

    where: Literal["queue", "spool"]
    prior: bytes | None = None


class Intake:
    """Makes pushes durable (see the module docstring)."""

    def __init__(self, enqueuer: Enqueuer, watch: QueueWatch, spool: AsyncSpool | None) -> None:
        self._enqueuer = enqueuer
        self._watch = watch
        self.spool = spool

    async def first_answer(self, workspace_id: str, push_id: str) -> bytes | None:
        """The answer this push id was first accepted with (in Redis or in the spool), or None.

        Raises the Redis error if Redis cannot be asked and the spool does not hold it.
        """
        if self.spool is not None:
            prior = await self.spool.first_answer(workspace_id, push_id)  # a batch, or a streamed push
            if prior is not None:
                return prior
        return await self._enqueuer.first_answer(workspace_id, push_id)

    async def accept(
        self, key_id: str, workspace_id: str, push_id: str, payload: bytes, answer: bytes, records: int
    ) -> Accepted:
        """Put the batch in Redis, or else in the spool; raises RateLimited (429) or Refused (503)."""
        if self.spool is not None:
            # A push spooled earlier and sent again: its first answer, not a second copy.
            prior = await self.spool.first_answer(workspace_id, push_id)
            if prior is not None:
                return Accepted("spool", prior)
        why = self._watch.why_not_redis()
        enqueue = "not_tried"
        if why is None:
            try:
                prior = await self._enqueuer.enqueue_once(key_id, workspace_id, push_id, payload, answer, records)
            except (RedisError, OSError) as exc:
                if not redis_cannot_take(exc):
                    raise
                self._watch.mark_down()
                why = f"Redis cannot take it ({type(exc).__name__}: {exc})"
                enqueue = enqueue_outcome(exc)
            else:
                self._watch.mark_up()
                return Accepted("queue", prior)
        return await self._to_spool(why, enqueue, key_id, workspace_id, push_id, payload, answer, records)

    async def _to_spool(
        self,
        why: str,
        enqueue: str,
        key_id: str,
        workspace_id: str,
        push_id: str,
        payload: bytes,
        answer: bytes,
        records: int,
    ) -> Accepted:
        if self.spool is None:
            SPOOL_REFUSED.labels("no_spool").inc()
            raise Refused(f"{why}, and this api has no spool (SPOOL_MAX_BYTES=0)")
        try:
            prior = await self.spool.put(workspace_id, push_id, key_id, payload, answer, records)
        except SpoolFull as exc:
            SPOOL_REFUSED.labels("spool_full").inc()
            raise Refused(f"{why}, and {exc}") from None
        except SpoolError as exc:
            SPOOL_REFUSED.labels("spool_error").inc()
            log.error("spool write failed: %s", exc)
            raise Refused(f"{why}, and the spool cannot be written ({exc})") from None
        if prior is None:
            SPOOLED.labels(enqueue).inc()
            log.info("push spooled", extra={"push_id": push_id, "workspace_id": workspace_id, "reason": why})
        return Accepted("spool", prior)


class SpoolDrainer(BackgroundLoop):
    """Moves spooled batches into the queue, oldest first, whenever Redis can take them.

    Every api process runs one; leases keep two from moving the same batch. A batch
    whose push id Redis already holds (a drainer killed between the enqueue and the
    delete, or the client's retry that reached Redis) is dropped and counted as a
    duplicate: the enqueue script never queues a push id twice.
    """

    task_name = "spool-drainer"

    def __init__(self, spool: AsyncSpool, enqueuer: Enqueuer, watch: QueueWatch) -> None:
        self._spool = spool
        self._enqueuer = enqueuer
        self._watch = watch
        self._owner = drainer_name()

    async def drain_once(self) -> int:
        """One round: lease, enqueue, delete; return how many batches left the spool."""
        if (await self._spool.stats()).batches == 0 or self._watch.why_not_redis() is not None:
            return 0
        leased = await self._spool.lease(self._owner)
        moved: list[int] = []
        try:
            for batch in leased:
                prior = await self._enqueuer.enqueue_once(
                    batch.key_id,
                    batch.workspace_id,
                    batch.push_id,
                    batch.payload,
                    batch.answer,
                    batch.records,
                    limit_rate=False,
                )
                SPOOL_DRAINED.labels("duplicate" if prior is not None else "queued").inc()
                moved.append(batch.id)
                if self._watch.over_headroom():
                    break
        except (RedisError, OSError) as exc:
            self._watch.mark_down()
            log.warning("spool drain paused: %s: %s", type(exc).__name__, exc)
        finally:
            await self._spool.remove(self._owner, moved)
            await self._spool.release(self._owner, [b.id for b in leased if b.id not in set(moved)])
        if moved:
            log.info("spool drained", extra={"batches": len(moved)})
        streamed = await self.drain_streamed_once() if self._watch.why_not_redis() is None else 0
        return len(moved) + streamed

    # -- streamed pushes (past MAX_BODY_BYTES) -------------------------------------------------

    async def drain_streamed_once(self) -> int:
        """Move one streamed push's body into Redis in chunks and enqueue it once; return 1 if one left the spool.

        The body goes to its own key (schema.batches.body_key), APPENDed chunk by chunk,
        so neither the api nor Redis's client ever holds it whole; then the job, through
        the same enqueue-once script as any push. A push id Redis has accepted already
        (a drainer killed after the enqueue) is only removed from the spool: its body
        key belongs to the queued job. The key expires with FAILED_TTL_S, as a failed job would.
        """
        await self._spool.sweep_abandoned_streamed()
        leased = await self._spool.lease_streamed(self._owner)
        if leased is None:
            return 0
        redis = self._enqueuer.redis
        key = body_key(leased.workspace_id, leased.push_id)
        try:
            prior = await self._enqueuer.first_answer(leased.workspace_id, leased.push_id)
            if prior is None:
                await redis.delete(key)  # a partial copy from a drainer that died mid-move
                for seq in range(leased.chunks):
                    await redis.append(key, await self._spool.streamed_chunk(leased.id, seq))
                await redis.expire(key, self._enqueuer.settings.failed_ttl_s)
                batch = msgspec.structs.replace(decode_batch(leased.payload), body_key=key)
                prior = await self._enqueuer.enqueue_once(
                    leased.key_id,
                    leased.workspace_id,
                    leased.push_id,
                    encode_batch(batch),
                    leased.answer,
                    leased.records,
                    limit_rate=False,
                    func=INGEST_STREAMED_JOB,
                )
                if prior is not None:
                    await redis.delete(key)
        except (RedisError, OSError) as exc:
            self._watch.mark_down()
            log.warning("spool drain of a streamed push paused: %s: %s", type(exc).__name__, exc)
            await self._spool.release_streamed(self._owner, leased.id)
            return 0
        await self._spool.remove_streamed(self._owner, leased.id)
        SPOOL_DRAINED.labels("duplicate" if prior is not None else "queued").inc()
        log.info("spool drained a streamed push", extra={"push_id": leased.push_id, "bytes": leased.bytes})
        return 1

    async def _run(self) -> None:
        while True:
            try:
                moved = await self.drain_once()
            except (SpoolError, RedisError, OSError) as exc:
                log.warning("spool drain failed: %s: %s", type(exc).__name__, exc)
                moved = 0
            await self.pause(0 if moved else DRAIN_IDLE_S)
