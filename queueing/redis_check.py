"""Startup check: can this Redis lose a queued batch? (SPEC 5)

An evicted RQ key is a lost batch, and without persistence a restart loses the
whole queue. The api and the workers call `durability_problems` at start and
warn loudly, or refuse to start when REDIS_REQUIRE_DURABLE is set.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


CONFIG_KEYS = ("maxmemory-policy", "appendonly", "save")


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


def check(config: dict[str, Any] | None, require: bool) -> list[str]:
    """Log each problem; raise RedisNotDurable if `require` and there is any."""
    if config is None:
        found = ["could not read Redis CONFIG (managed Redis?): check eviction policy and persistence by hand"]
    else:
        found = problems_from_config(config)
    for problem in found:
        log.warning("REDIS DURABILITY: %s", problem)
    if require and found:
        raise RedisNotDurable("; ".join(found) + " (REDIS_REQUIRE_DURABLE is set)")
    return found
