"""The queue snapshot (queueing/queue_state.py) on fakeredis: workers by state, lag of stalled batches, rates."""

from __future__ import annotations

from datetime import UTC, datetime

import fakeredis
import pytest

from queueing import stats
from queueing.queue_state import QueueKeys, read_snapshot

QUEUE = "ingest"
NOW = 1_800_000_003.0  # 3 s into a 5 s rate bucket


def stamp(unix: float) -> str:
    """RQ's timestamp format."""
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.fixture
def redis() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


def add_worker(redis: fakeredis.FakeRedis, name: str, state: str, heartbeat_age_s: float) -> None:
    key = f"rq:worker:{name}"
    redis.hset(key, mapping={"state": state, "last_heartbeat": stamp(NOW - heartbeat_age_s)})
    redis.sadd(QueueKeys.for_queue(QUEUE).workers, key)


def test_workers_silent_past_the_alive_bound_are_not_counted(redis: fakeredis.FakeRedis) -> None:
    add_worker(redis, "a", "busy", 3)
    add_worker(redis, "b", "idle", 8)
    add_worker(redis, "dead-idle", "idle", 200)  # killed: its hash lives on for minutes
    add_worker(redis, "dead-busy", "busy", 31)
    state = read_snapshot(redis, QUEUE, NOW, alive_s=30)
    assert (state.workers_busy, state.workers_idle, state.workers_suspended) == (1, 1, 0)


def test_rq_suspend_counts_idle_workers_as_suspended_and_lets_busy_ones_finish(redis: fakeredis.FakeRedis) -> None:
    add_worker(redis, "a", "busy", 1)
    add_worker(redis, "b", "idle", 1)  # still in its wait for a job: it will not take one
    add_worker(redis, "c", "suspended", 400)  # RQ's suspension loop never heartbeats
    redis.set("rq:suspended", 1)  # what `rq suspend` sets
    state = read_snapshot(redis, QUEUE, NOW)
    assert (state.workers_busy, state.workers_idle, state.workers_suspended) == (1, 0, 2)
    assert state.as_dict()["workers_suspended"] == 2


def test_lag_counts_a_started_batch_whose_claim_lapsed(redis: fakeredis.FakeRedis) -> None:
    keys = QueueKeys.for_queue(QUEUE)
    redis.hset("rq:job:j1", "enqueued_at", stamp(NOW - 140))
    redis.zadd(keys.started, {"j1:exec1": NOW - 5})  # its worker stopped renewing the claim 5 s ago
    redis.hset("rq:job:j2", "enqueued_at", stamp(NOW - 500))
    redis.zadd(keys.started, {"j2:exec2": NOW + 10})  # a live claim: moving, not lag
    redis.hset("rq:job:j3", "enqueued_at", stamp(NOW - 20))
    redis.rpush(keys.queue, "j3")
    state = read_snapshot(redis, QUEUE, NOW)
    assert (state.depth, state.started, state.stalled) == (1, 2, 1)
    assert state.lag_s == pytest.approx(140, abs=0.01)


def test_empty_queue_has_no_lag(redis: fakeredis.FakeRedis) -> None:
    state = read_snapshot(redis, QUEUE, NOW)
    assert (state.depth, state.lag_s, state.workers_busy, state.workers_idle) == (0, 0.0, 0, 0)


def test_a_burst_shows_in_the_rates_at_once(redis: fakeredis.FakeRedis) -> None:
    """The current, partial bucket counts: 600 records in the last 3 s are 600/63 per s over the minute."""
    redis.set(stats.rate_key("written_records", NOW), 600)
    state = read_snapshot(redis, QUEUE, NOW)
    assert state.rates["written_records"] == pytest.approx(600 / 63)
    assert state.recent_rates["written_records"] == pytest.approx(600 / 13)


def test_the_rates_cover_the_last_minute_and_no_more(redis: fakeredis.FakeRedis) -> None:
    redis.set(stats.rate_key("accepted_records", NOW - 60), 120)  # 12 buckets back: inside
    redis.set(stats.rate_key("accepted_records", NOW - 65), 1000)  # 13 back: outside
    state = read_snapshot(redis, QUEUE, NOW)
    assert state.rates["accepted_records"] == pytest.approx(120 / 63)
    assert state.recent_rates["accepted_records"] == 0.0
