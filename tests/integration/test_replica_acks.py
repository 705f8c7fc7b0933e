"""REDIS_MIN_REPLICAS_ACK: a push no replica confirmed is not answered from Redis alone (issue 17).

Against the real test Redis, which has no replica: `WAIT 1` always times out, so
with REDIS_MIN_REPLICAS_ACK=1 every push lands in the api's spool as well (202
all the same), and the spool keeps it, since no drain can be confirmed either. With a
replica that answers (tests/e2e/faults/test_redis_failover.py) the same setting answers
from Redis and loses nothing across a failover.
"""

from __future__ import annotations

from dataclasses import replace

from starlette.testclient import TestClient

from api.app import create_app
from api.auth import ApiKey
from bench.samples import session
from runtime.settings import Settings
from tests.unit.test_push_api import KEY, MemoryKeys, post
from tests.unit.test_push_api import WORKSPACE as WS


def client_for(settings: Settings) -> TestClient:
    """The app opens (and closes) its own Redis client, from REDIS_URL."""
    return TestClient(create_app(settings, keys=MemoryKeys({KEY: ApiKey("key_1", WS)})))


def test_without_replica_acks_a_push_is_spooled_and_kept(settings: Settings) -> None:
    waiting = replace(settings, redis_min_replicas_ack=1, redis_replicas_ack_timeout_ms=50, rate_limit_pushes_per_s=0)
    with client_for(waiting) as client:
        state = client.app.state  # type: ignore[attr-defined]
        first = post(client, {"push_id": "unconfirmed", "data": {"sessions": [session(1)]}})
        again = post(client, {"push_id": "unconfirmed", "data": {"sessions": [session(1)]}})
        state.queue_watch.mark_up()
        drained = client.portal.call(state.drainer.drain_once)
        spooled = client.portal.call(state.spool.stats).batches

    assert first.status_code == 202 and first.json()["success"] is True
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert spooled == 1 and drained == 0  # no replica confirmed the drain either: the spool keeps it


def test_with_no_acks_asked_a_push_is_answered_from_redis(settings: Settings) -> None:
    with client_for(replace(settings, rate_limit_pushes_per_s=0)) as client:
        state = client.app.state  # type: ignore[attr-defined]
        first = post(client, {"push_id": "plain", "data": {"sessions": [session(1)]}})
        spooled = client.portal.call(state.spool.stats).batches
    assert first.status_code == 202 and spooled == 0
