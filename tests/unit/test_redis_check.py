"""The startup check of Redis: warn (or refuse) when queued batches could be lost."""

from __future__ import annotations

import logging

import pytest

from queueing.redis_check import RedisNotDurable, check, problems_from_config

DURABLE = {"maxmemory-policy": "noeviction", "appendonly": "yes", "save": ""}


def test_a_durable_redis_has_no_problem() -> None:
    assert problems_from_config(DURABLE) == []
    assert problems_from_config({k: v.encode() for k, v in DURABLE.items()}) == []


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"maxmemory-policy": "allkeys-lru"}, "may evict queued batches"),
        ({"appendonly": "no", "save": ""}, "a Redis restart loses every queued batch"),
        ({"appendonly": "no", "save": "3600 1"}, "appendonly is off"),
    ],
)
def test_each_way_to_lose_batches_is_named(change: dict[str, str], says: str) -> None:
    [problem] = problems_from_config({**DURABLE, **change})
    assert says in problem


def test_problems_are_logged_loudly_or_refused_when_required(caplog: pytest.LogCaptureFixture) -> None:
    risky = {**DURABLE, "maxmemory-policy": "volatile-lru"}
    with caplog.at_level(logging.WARNING):
        assert check(risky, require=False)
    assert "REDIS DURABILITY" in caplog.text
    with pytest.raises(RedisNotDurable, match="REDIS_REQUIRE_DURABLE"):
        check(risky, require=True)
    with pytest.raises(RedisNotDurable, match="could not read Redis CONFIG"):
        check(None, require=True)
