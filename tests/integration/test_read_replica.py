"""Reads off the primary (DATABASE_READ_URL): a real streaming replica, made by pg_basebackup.

The read endpoints answer from the replica and say how far behind it may be; a push the
replica has not replayed yet is still found (on the primary); a replica that is down is
not an outage for reads. Writes and key checks stay on the primary throughout.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import psycopg
import pytest
from starlette.testclient import TestClient

from api.app import create_app
from bench import samples
from runtime.settings import Settings
from store.migrate import migrate
from tests.pg_clusters import Cluster, primary_with_replica
from tests.support import new_account, push_json, run_burst_worker


@pytest.fixture(scope="module")
def replicated() -> Iterator[tuple[Cluster, Cluster]]:
    """A migrated `selftune` database on a primary, streamed to a hot standby."""
    with primary_with_replica() as (primary, replica):
        with psycopg.connect(primary.admin_url, autocommit=True) as admin:
            admin.execute("CREATE DATABASE selftune")
        with psycopg.connect(primary.url("selftune"), autocommit=True) as conn:
            migrate(conn)
        yield primary, replica


def _wait_replayed(replica: Cluster, push_id: str) -> None:
    deadline = time.monotonic() + 30
    with psycopg.connect(replica.url("selftune"), autocommit=True) as conn:
        while conn.execute("SELECT 1 FROM pushes WHERE push_id = %s", (push_id,)).fetchone() is None:
            assert time.monotonic() < deadline, f"the replica never replayed push {push_id}"
            time.sleep(0.1)


def test_reads_come_from_the_replica_say_how_stale_and_fall_back_to_the_primary(
    replicated: tuple[Cluster, Cluster],
    settings: Settings,
    use_worker_settings: Callable[[Settings], None],
) -> None:
    primary, replica = replicated
    s = replace(settings, database_url=primary.url("selftune"), database_read_url=replica.url("selftune"))
    use_worker_settings(s)
    with psycopg.connect(primary.url("selftune"), autocommit=True) as db:
        acme = new_account(db, "acme")
    key, auth = acme.key, acme.auth
    with TestClient(create_app(s)) as c:
        assert push_json(c, key, {"improvement_signals": [samples.improvement_signal(1)]}, "one").status_code == 202
        run_burst_worker(s)
        _wait_replayed(replica, "one")
        page = c.get("/v2/signals", headers=auth).json()
        assert [x["signal_id"] for x in page["signals"]] == ["sig-1"]
        assert page["replica_lag_s"] >= 0  # served by the replica, which says so

        # The replica stops replaying: it falls behind while the primary takes a new push.
        with psycopg.connect(replica.url("selftune"), autocommit=True) as standby:
            standby.execute("SELECT pg_wal_replay_pause()")
            try:
                assert (
                    push_json(c, key, {"improvement_signals": [samples.improvement_signal(2)]}, "two").status_code
                    == 202
                )
                run_burst_worker(s)
                time.sleep(1.2)  # the primary's write is older than a second now
                behind = c.get("/v2/signals", headers=auth).json()
                assert [x["signal_id"] for x in behind["signals"]] == ["sig-1"]  # stale, and it says by how much
                assert behind["replica_lag_s"] >= 1.0
                # A push the replica has not replayed is read from the primary, not a 404.
                status = c.get("/v2/pushes/two", headers=auth)
                assert status.status_code == 200 and status.json()["status"] == "processed"
            finally:
                standby.execute("SELECT pg_wal_replay_resume()")
        _wait_replayed(replica, "two")
        caught_up = c.get("/v2/signals", headers=auth).json()
        assert [x["signal_id"] for x in caught_up["signals"]] == ["sig-2", "sig-1"]

        # With the replica down, reads are the primary's (no replica_lag_s), not an outage.
        replica.stop()
        down = c.get("/v2/signals", headers=auth)
        assert down.status_code == 200, down.text
        assert "replica_lag_s" not in down.json() and len(down.json()["signals"]) == 2
        assert c.get("/v2/skills", headers=auth).status_code == 200
