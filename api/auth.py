"""Bearer API keys, looked up by their SHA-256 and cached briefly.

A key is never compared as text: the presented key is hashed and the hash is
looked up, so timing reveals nothing about stored keys. Lookups (hits and
misses) are cached for KEY_CACHE_TTL_S seconds, which bounds how long a revoked
key keeps working, and keeps a flood of bad keys off Postgres.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request

from api.errors import ApiError, unauthorized, unavailable
from schema.keys import hash_key, is_well_formed

MAX_CACHED_KEYS = 100_000


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    workspace_id: str


class KeyStore:
    """Resolves a presented key to its workspace, through a TTL cache."""

    def __init__(self, pool: AsyncConnectionPool, ttl_s: float) -> None:
        self._pool = pool
        self._ttl_s = ttl_s
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}

    async def lookup(self, key: str) -> ApiKey | None:
        """The live key's identity, or None if unknown or revoked."""
        digest = hash_key(key)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            async with self._pool.connection(timeout=5) as conn:
                cur = await conn.execute(
                    "SELECT key_id, workspace_id FROM api_keys WHERE key_hash = %s AND revoked_at IS NULL",
                    (digest,),
                )
                row = await cur.fetchone()
        except Exception as exc:  # Postgres unreachable: we cannot tell who this is
            raise unavailable(f"cannot check the API key right now ({type(exc).__name__})", 5) from None
        found = ApiKey(row[0], row[1]) if row else None
        if len(self._cache) >= MAX_CACHED_KEYS:
            self._cache.clear()
        self._cache[digest] = (now + self._ttl_s, found)
        return found


def bearer_key(request: Request) -> str:
    """The key from `Authorization: Bearer <key>`, or 401."""
    header = request.headers.get("authorization")
    if not header:
        raise unauthorized("missing Authorization header: send 'Authorization: Bearer st_live_...'")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise unauthorized("Authorization header must read 'Bearer <api key>'")
    return key.strip()


async def authenticate(request: Request, keys: KeyStore) -> ApiKey:
    """The calling key's identity, or 401 (the message never echoes the key)."""
    key = bearer_key(request)
    if not is_well_formed(key):
        raise unauthorized("API key is malformed: keys read st_live_ or st_test_ followed by 32+ characters")
    found = await keys.lookup(key)
    if found is None:
        raise unauthorized("API key is unknown or revoked")
    return found


def forbidden_workspace(body_workspace: str) -> ApiError:
    return ApiError(403, "workspace_mismatch", "workspace_id in the body is not the API key's workspace")
