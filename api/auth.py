"""Bearer API keys, looked up by their SHA-256: in Postgres, or in its mirror in Redis when Postgres is down.

A key is never compared as text: the presented key is hashed and the hash is
looked up, so timing reveals nothing about stored keys. Lookups (hits and
misses) are cached for KEY_CACHE_TTL_S seconds, which bounds how long a revoked
key keeps working, and keeps a flood of bad keys off Postgres.

Pushes must not need Postgres (the CLI drops a batch it is refused for ~15 s,
SPEC 2.5). When Postgres cannot answer, a key is looked up in the key mirror
in Redis (store/keys.py: written when a key is issued or revoked, and copied
whole from Postgres every KEY_MIRROR_REFRESH_S), then in this process's own
last answers, however old (a grace period, as Sentry Relay keeps project
configs). Only when none of them knows the key, and the mirror cannot vouch that
the key does not exist, is the answer a 503. A key revoked before the outage
stays revoked (the revocation wrote the mirror); a key cannot be revoked while
Postgres is down (the ops command line refuses), and one revoked just before
may be accepted by an api process that cached it until KEY_CACHE_TTL_S ends.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg_pool
from redis.exceptions import RedisError
from starlette.requests import Request

from api.background import BackgroundLoop
from api.errors import UNAUTHORIZED, UNAVAILABLE, WORKSPACE_MISMATCH
from store.keys import (
    KEY_MIRROR,
    KEY_MIRROR_LOCK,
    KEY_MIRROR_REFRESHED,
    hash_key,
    is_well_formed,
    mirror_value,
    parse_mirror_value,
)

log = logging.getLogger(__name__)

MAX_CACHED_KEYS = 100_000
LOOKUP_TIMEOUT_S = 1.0  # waiting for a pooled connection: past it, Postgres is taken as down
POSTGRES_RETRY_S = 2.0  # after a failure, lookups go straight to the mirror for this long
RETRY_FAILED_REFRESH_S = 5.0  # a key mirror copy that failed is tried again this soon
# What the key lookup takes for "Postgres cannot answer"; any other exception is a bug and bubbles up.
DATABASE_ERRORS = (psycopg.Error, psycopg_pool.PoolTimeout, psycopg_pool.PoolClosed, OSError)


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    workspace_id: str


class KeyStore:
    """Resolves a presented key to its workspace: TTL cache, Postgres, the Redis mirror, the stale cache."""

    def __init__(self, pool: psycopg_pool.AsyncConnectionPool, ttl_s: float, redis: Any = None) -> None:
        self._pool = pool
        self._ttl_s = ttl_s
        self._redis = redis
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}
        self._postgres_down_until = 0.0
        self.served_without_postgres = 0  # lookups answered by the mirror or the stale cache

    async def lookup(self, key: str) -> ApiKey | None:
        """The live key's identity, or None if unknown or revoked; a 503 (UNAVAILABLE) only if nothing can tell."""
        digest = hash_key(key)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        if now >= self._postgres_down_until:
            try:
                found = await self._from_postgres(digest)
            except DATABASE_ERRORS as exc:
                self._postgres_down_until = time.monotonic() + POSTGRES_RETRY_S
                log.warning("key lookup: Postgres cannot answer (%s); using the key mirror", type(exc).__name__)
            else:
                self._remember(digest, found, now)
                return found
        return await self._without_postgres(digest, cached)

    async def _from_postgres(self, digest: str) -> ApiKey | None:
        async with self._pool.connection(timeout=LOOKUP_TIMEOUT_S) as conn:
            cur = await conn.execute(
                "SELECT key_id, workspace_id FROM api_keys WHERE key_hash = %s AND revoked_at IS NULL", (digest,)
            )
            row = await cur.fetchone()
        return ApiKey(row[0], row[1]) if row else None

    async def _without_postgres(self, digest: str, cached: tuple[float, ApiKey | None] | None) -> ApiKey | None:
        """The mirror's word, else this process's last answer (however old), else 503."""
        mirror_error = None
        if self._redis is not None:
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.hget(KEY_MIRROR, digest)
                    pipe.exists(KEY_MIRROR_REFRESHED)
                    entry, mirror_made = await pipe.execute()
            except (RedisError, OSError) as exc:
                mirror_error = exc
            else:
                parsed = parse_mirror_value(entry) if entry is not None else None
                if parsed is not None:
                    key_id, workspace_id, revoked = parsed
                    self.served_without_postgres += 1
                    found = None if revoked else ApiKey(key_id, workspace_id)
                    self._remember(digest, found, time.monotonic())
                    return found
                if mirror_made and cached is None:
                    return None  # the full copy does not hold it: unknown (401), as Postgres would say
        if cached is not None:
            self.served_without_postgres += 1
            return cached[1]
        reason = f"the key mirror is unreachable ({type(mirror_error).__name__})" if mirror_error else "no key mirror"
        raise UNAVAILABLE(f"cannot check the API key right now: Postgres is down and {reason}")

    def _remember(self, digest: str, found: ApiKey | None, now: float) -> None:
        if len(self._cache) >= MAX_CACHED_KEYS:
            self._cache.clear()
        self._cache[digest] = (now + self._ttl_s, found)


async def mirror_issued_key(redis: Any, key: str, key_id: str | None, workspace_id: str | None) -> None:
    """Write a just-issued key into the mirror (best effort: the next full copy catches up)."""
    if key_id is None or workspace_id is None:
        return
    try:
        await redis.hset(KEY_MIRROR, hash_key(key), mirror_value(workspace_id, key_id, revoked=False))
    except (RedisError, OSError) as exc:
        log.warning("key %s not mirrored yet (%s); the next full copy will add it", key_id, type(exc).__name__)


class KeyMirror(BackgroundLoop):
    """Copies every key hash from Postgres into the Redis mirror, every KEY_MIRROR_REFRESH_S, from one api at a time.

    The copy is built under a temporary key and renamed over the mirror, so a reader
    sees the old copy or the new one, never half of one, and keys deleted from
    Postgres leave the mirror too.
    """

    task_name = "key-mirror"

    def __init__(self, pool: psycopg_pool.AsyncConnectionPool, redis: Any, interval_s: float) -> None:
        self._pool = pool
        self._redis = redis
        self._interval_s = interval_s

    async def refresh(self, force: bool = False) -> int | None:
        """Make a full copy unless another api made one within the interval; return the keys copied, or None."""
        if not force and not await self._redis.set(KEY_MIRROR_LOCK, "1", nx=True, ex=max(1, int(self._interval_s))):
            return None
        try:
            async with self._pool.connection(timeout=LOOKUP_TIMEOUT_S * 5) as conn:
                cur = await conn.execute("SELECT key_hash, key_id, workspace_id, revoked_at IS NOT NULL FROM api_keys")
                rows = await cur.fetchall()
        except DATABASE_ERRORS:
            # Let the next try (this api's or another's) come in a few seconds, not a whole interval.
            await self._redis.delete(KEY_MIRROR_LOCK)
            raise
        staging = f"{KEY_MIRROR}:staging:{uuid.uuid4().hex}"
        async with self._redis.pipeline(transaction=True) as pipe:
            for start in range(0, len(rows), 1000):
                chunk = rows[start : start + 1000]
                pipe.hset(staging, mapping={h: mirror_value(w, k, revoked) for h, k, w, revoked in chunk})
            if rows:
                pipe.rename(staging, KEY_MIRROR)
            else:
                pipe.delete(KEY_MIRROR)
            pipe.set(KEY_MIRROR_REFRESHED, str(time.time()))
            await pipe.execute()
        return len(rows)

    async def _run(self) -> None:
        while True:
            pause = self._interval_s
            try:
                await self.refresh()
            except (*DATABASE_ERRORS, RedisError) as exc:  # either is down: the mirror keeps its last copy
                log.info("key mirror not refreshed: %s: %s", type(exc).__name__, exc)
                pause = min(pause, RETRY_FAILED_REFRESH_S)
            await self.pause(pause)


def bearer_key(request: Request) -> str:
    """The key from `Authorization: Bearer <key>`, or 401."""
    header = request.headers.get("authorization")
    if not header:
        raise UNAUTHORIZED("missing Authorization header: send 'Authorization: Bearer st_live_...'")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise UNAUTHORIZED("Authorization header must read 'Bearer <api key>'")
    return key.strip()


async def authenticate(request: Request, keys: KeyStore) -> ApiKey:
    """The calling key's identity, or 401 (the message never echoes the key)."""
    key = bearer_key(request)
    if not is_well_formed(key):
        raise UNAUTHORIZED("API key is malformed: keys read st_live_ or st_test_ followed by 32+ characters")
    found = await keys.lookup(key)
    if found is None:
        raise UNAUTHORIZED("API key is unknown or revoked")
    return found


def require_workspace(key: ApiKey, workspace_id: str | None) -> None:
    """A push that names a workspace must name the key's own (403)."""
    if workspace_id is not None and workspace_id != key.workspace_id:
        raise WORKSPACE_MISMATCH("workspace_id in the body is not the API key's workspace")
