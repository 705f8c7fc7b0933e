"""Startup check: can this Redis lose a queued batch? (SPEC 5)

An evicted RQ key is a lost batch, and without persistence a restart loses the
whole queue. The api and the workers read Redis's config at start (`read_config`,
`read_config_async`: the same keys, the same errors caught) and hand the answer to
`check`, the one place that decides: warn loudly about each problem, or refuse to
start when REDIS_REQUIRE_DURABLE is set.

When Redis refuses CONFIG (managed Redis often renames or blocks it) or cannot be
reached, durability is unverified: `check` warns that it could not be checked, and
with REDIS_REQUIRE_DURABLE refuses to start (RedisNotDurable), in both processes.
"""

from __future__ import annotations

import logging
from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


CONFIG_KEYS = ("maxmemory-policy", "appendonly", "save")
# What reading CONFIG raises when Redis refuses the command or cannot be reached.
READ_ERRORS = (RedisError, OSError)


class RedisNotDurable(RuntimeError):
    """Redis is configured so that queued batches can be lost."""


def problems_from_config(config: dict[str, Any]) -> list[str]:
    """What is wrong with a Redis `CONFIG GET` answer (policy, appendonly, save)."""

    def value(name: str) -> str:
        raw = config.get(name, "")
        return (raw.decode() if isinstance(raw, bytes) else str(raw)).strip()

    found = []
    policy = value("maxmemory-policy")
    if policy and policy != "noeviction":
        found.append(f"maxmemory-policy is {policy}: Redis may evict queued batches (set noeviction)")
    if value("appendonly") != "yes" and not value("save"):
        found.append("neither appendonly nor RDB snapshots are on: a Redis restart loses every queued batch")
    elif value("appendonly") != "yes":
        found.append("appendonly is off: a Redis crash loses the batches queued since the last snapshot")
    return found


def read_config(redis: Redis) -> dict[Any, Any] | Exception:
    """Redis's answer to CONFIG GET for CONFIG_KEYS, or the error that refused it (for `check`)."""
    config: dict[Any, Any] = {}
    try:
        for key in CONFIG_KEYS:
            config |= redis.config_get(key)
    except READ_ERRORS as exc:
        return exc
    return config


async def read_config_async(redis: AsyncRedis) -> dict[Any, Any] | Exception:
    """`read_config` for the api's asyncio client."""
    config: dict[Any, Any] = {}
    try:
        for key in CONFIG_KEYS:
            config |= await redis.config_get(key)
    except READ_ERRORS as exc:
        return exc
    return config


def check(config: dict[str, Any] | Exception | None, require: bool) -> list[str]:
    """Log each problem; raise RedisNotDurable if `require` and there is any.

    `config` is Redis's CONFIG answer, or None or the error when it could not be read.
    """
    if config is None or isinstance(config, Exception):
        if config is not None:
            log.warning("could not read Redis config: %s", config)
        found = ["could not read Redis CONFIG (managed Redis?): check eviction policy and persistence by hand"]
    else:
        found = problems_from_config(config)
    for problem in found:
        log.warning("REDIS DURABILITY: %s", problem)
    if require and found:
        raise RedisNotDurable("; ".join(found) + " (REDIS_REQUIRE_DURABLE is set)")
    return found
