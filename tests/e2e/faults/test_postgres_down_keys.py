"""Postgres stopped: keys still checked (the mirror), readiness split, the pool back within seconds, status truthful.

Real api and worker processes on the test servers; Postgres is stopped for real.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx2
import psycopg
import pytest
from redis import Redis

from bench import samples
from ops import accounts
from runtime.settings import Settings
from store.keys import KEY_MIRROR_REFRESHED
from tests.e2e.faults.harness import ApiProcess, WorkerPool, queue_state
from tests.e2e.servers import Servers
from tests.e2e.stack import Stack
from tests.support import Account

RECOVERY_BOUND_S = 10.0  # the "within seconds", generously (the pool retries every ~1-2 s)


def _push(api: ApiProcess, key: str, push_id: str) -> httpx2.Response:
    body = {"push_id": push_id, "data": {"sessions": [samples.session(1, session_id=f"s-{push_id}")]}}
    return httpx2.post(f"{api.url}/v2/push", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _wait(what: str, check: Callable[[], bool], timeout_s: float) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout_s, f"timed out after {timeout_s:g} s waiting until {what}"
        time.sleep(0.2)
    return time.monotonic() - started


def _status(api: ApiProcess, path: str) -> int:
    try:
        return httpx2.get(api.url + path, timeout=5).status_code
    except httpx2.TransportError:
        return 0


@pytest.mark.parametrize(
    "outage_s", [pytest.param(12.0, id="12s"), pytest.param(70.0, id="70s", marks=pytest.mark.slow)]
)
def test_keys_are_checked_and_revocations_hold_while_postgres_is_down_and_the_pool_recovers_at_once(
    stack: Stack,
    settings: Settings,
    db: psycopg.Connection,
    account: Account,
    rq_redis: Redis,
    servers: Servers,
    outage_s: float,
) -> None:
    live = account.key
    revoked_id, revoked = accounts.create_key(db, account.workspace_id)
    accounts.revoke_key(db, revoked_id)
    assert accounts.mirror_key(db, rq_redis, revoked_id) is None  # as `selftune-ingest key revoke` does
    never_issued = "st_live_" + "n" * 43
    api = ApiProcess.start(stack)  # it copies every key into the mirror at start
    _wait("the api made the key mirror", lambda: bool(rq_redis.exists(KEY_MIRROR_REFRESHED)), 10)

    servers.stop_postgres()
    try:
        accepted = _push(api, live, "while-down")  # this key was never used: no api process caches it
        refused = _push(api, revoked, "revoked-while-down")
        unknown = _push(api, never_issued, "unknown-while-down")
        ready = httpx2.get(api.url + "/readyz", timeout=10)
        database = httpx2.get(api.url + "/readyz/database", timeout=10)
        time.sleep(max(0.0, outage_s - 2))
    finally:
        servers.start()
    recovered_s = _wait("GET /readyz/database answers 200", lambda: _status(api, "/readyz/database") == 200, 60)

    assert accepted.status_code == 202, accepted.text
    assert refused.status_code == 401 and unknown.status_code == 401
    assert ready.status_code == 200 and ready.json()["pushes_go_to"] == "redis", ready.text
    assert ready.json()["database"] != "ok"
    assert database.status_code == 503 and database.json()["error"]["code"] == "database_not_ready"
    print(f"\nPostgres down {outage_s:g} s: /readyz/database back {recovered_s:.1f} s after it restarted")
    assert recovered_s < RECOVERY_BOUND_S


def test_a_batch_that_failed_for_good_while_postgres_was_down_reads_failed(
    stack: Stack,
    settings: Settings,
    account: Account,
    rq_redis: Redis,
    servers: Servers,
    worker_pool: Callable[[int], WorkerPool],
) -> None:
    key = account.key
    api = ApiProcess.start(stack, JOB_RETRIES="1", JOB_RETRY_BACKOFF_S="1")
    worker_pool(1)
    servers.stop_postgres()
    try:
        assert _push(api, key, "fails-for-good").status_code == 202
        # Its one retry fails too: the batch lands in the failed registry, and its push row
        # cannot be written (Postgres is what failed).
        _wait("the batch is in the failed registry", lambda: queue_state(rq_redis, settings).failed == 1, 60)
    finally:
        servers.start()
    _wait("GET /readyz/database answers 200", lambda: _status(api, "/readyz/database") == 200, 60)
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pushes").fetchone() == (0,)  # no row says so
    status = httpx2.get(f"{api.url}/v2/pushes/fails-for-good", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert status.status_code == 200, status.text
    assert status.json()["status"] == "failed" and "OperationalError" in status.json()["reason"]
