"""Backups (README, "Backups and restore"): a `pg_dump` of a populated database, restored into a fresh cluster.

The database is filled through the real write path (the api, the queue, a worker), dumped with
pg_dump's custom format, restored with pg_restore into a cluster made for the test (initdb, as
the `postgres` user when run as root, in a temporary directory, on a free port), and read back
the way an operator checks a restore: the migration version, every table's rows, and a push read
through the api's status endpoint with its key, which only the restored database knows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from redis import Redis
from starlette.testclient import TestClient

from api.app import create_app
from bench import samples
from ops import erasure
from runtime.settings import Settings
from store.migrate import current_version, latest_version
from tests import pg_clusters
from tests.pg_clusters import PGBIN, run
from tests.support import new_account, push_json, run_burst_worker


@pytest.fixture
def fresh_cluster() -> Iterator[str]:
    """A new PostgreSQL cluster on 127.0.0.1 (its admin URL), stopped and removed after the test."""
    with pg_clusters.fresh_cluster() as cluster:
        yield cluster.admin_url


def all_rows(conn: psycopg.Connection, workspace_id: str) -> dict[str, int]:
    return erasure.count_rows(conn, workspace_id)


def test_a_pg_dump_restored_into_a_fresh_cluster_reads_a_push_back(
    db: psycopg.Connection,
    settings: Settings,
    fresh_cluster: str,
    tmp_path: Path,
    use_worker_settings: Callable[[Settings], None],
) -> None:
    acme = new_account(db, "acme")
    workspace_id, key = acme.workspace_id, acme.key
    records = samples.one_of_each(1)
    records["prompts"].append({**samples.prompt(2), "prompt_kind": 7})  # one quarantined record too
    with TestClient(create_app(settings)) as c:
        assert push_json(c, key, records, "before-backup").status_code == 202
    run_burst_worker(settings)
    written = all_rows(db, workspace_id)
    assert all(n > 0 for table, n in written.items() if table != "device_codes"), written

    dump = tmp_path / "selftune.dump"
    run([str(PGBIN / "pg_dump"), "--format=custom", "--file", str(dump), settings.database_url])
    with psycopg.connect(fresh_cluster, autocommit=True) as admin:
        admin.execute("CREATE DATABASE selftune")
    restored_url = fresh_cluster.rsplit("/", 1)[0] + "/selftune"
    run([str(PGBIN / "pg_restore"), "--no-owner", "--exit-on-error", "--dbname", restored_url, str(dump)])

    with psycopg.connect(restored_url, autocommit=True) as restored:
        assert current_version(restored) == latest_version()  # `selftune-ingest migrate` would have nothing to do
        assert all_rows(restored, workspace_id) == written
    # Redis is not part of this restore: what the api answers comes from the restored database
    # (the key is checked there, the push row read there).
    Redis.from_url(settings.redis_url).flushdb()
    with TestClient(create_app(replace(settings, database_url=restored_url))) as c:
        answer = c.get("/v2/pushes/before-backup", headers={"Authorization": f"Bearer {key}"})
        assert answer.status_code == 200, answer.text
        push = answer.json()
        # A push after the restore is written to the restored database too.
        assert push_json(c, key, {"sessions": [samples.session(5)]}, "after-restore").status_code == 202
    assert push["status"] == "processed"
    assert push["accepted"] == {name: 1 for name in records} and push["rejected"] == {"prompts": 1}
    use_worker_settings(replace(settings, database_url=restored_url))
    run_burst_worker(replace(settings, database_url=restored_url))
    with psycopg.connect(restored_url, autocommit=True) as restored:
        assert all_rows(restored, workspace_id)["sessions"] == written["sessions"] + 1
