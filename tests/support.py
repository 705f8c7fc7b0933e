"""Helpers shared by the test tiers: a workspace with a key, queued batches, tables read back."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

import psycopg

from ops import accounts
from schema.batches import QueuedBatch, decode_batch, encode_batch, queued_batch
from schema.validation import validate_push
from workers.tables import TABLES


@dataclass(frozen=True)
class Account:
    """A workspace and a live API key for it."""

    workspace_id: str
    key: str

    @property
    def auth(self) -> dict[str, str]:
        """The Authorization header that sends this key."""
        return {"Authorization": f"Bearer {self.key}"}


def new_account(conn: psycopg.Connection, name: str) -> Account:
    """Create the workspace `name` and one live key for it, as `selftune-ingest workspace/key create` do."""
    workspace_id = accounts.create_workspace(conn, name)
    return Account(workspace_id, accounts.create_key(conn, workspace_id)[1])


def batch_of(
    records: dict[str, list[dict[str, Any]]],
    push_id: str = "push-1",
    workspace_id: str = "ws_a",
    form: Literal["as queued", "records"] = "as queued",
) -> QueuedBatch:
    """A batch as the api would queue it (validated, invalid records set aside).

    `form="records"` carries the valid records one by one even when all are
    valid (as the api queues a push with bad records, and as earlier builds
    queued every push), instead of the whole body.
    """
    validated = validate_push(json.dumps({"data": records, "cli_version": "0.2.32"}).encode())
    now = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    batch = queued_batch(validated, workspace_id=workspace_id, push_id=push_id, received_at=now)
    if form == "records" and batch.body is not None:
        batch.body = None
        batch.records = {name: [bytes(r) for r in raws] for name, raws in validated.records.items() if raws}
    return batch


def write_queued(conn: psycopg.Connection, batch: QueuedBatch) -> dict[str, Any]:
    """Write a batch as a worker does, from its queued bytes."""
    from workers.jobs import write_batch

    return write_batch(conn, decode_batch(encode_batch(batch)))


def with_lock_timeout(settings: Any, ms: int = 200) -> Any:
    """The settings with a Postgres lock_timeout: a worker then fails fast on a table a test holds locked."""
    return replace(settings, database_url=settings.database_url + f"?options=-c%20lock_timeout%3D{ms}")


def snapshot(conn: psycopg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every record table's rows (all columns but the ingestion time), in a stable order."""
    tables: dict[str, list[tuple[Any, ...]]] = {}
    for name, table in TABLES.items():
        cols = ["workspace_id", *table.column_names] + (["field_versions"] if table.merge == "session" else [])
        select = ", ".join(f'"{c}"' for c in cols)
        rows = conn.execute(f"SELECT {select} FROM {name}").fetchall()
        tables[name] = sorted(rows, key=repr)
    return tables


def count(conn: psycopg.Connection, table: str, workspace_id: str | None = None) -> int:
    if workspace_id is None:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    else:
        row = conn.execute(f"SELECT count(*) FROM {table} WHERE workspace_id = %s", (workspace_id,)).fetchone()
    assert row is not None
    return int(row[0])


def push_json(client: Any, key: str, records: dict[str, Any], push_id: str, path: str = "/v2/push") -> Any:
    """POST a documented-envelope push through a TestClient."""
    return client.post(
        path,
        content=json.dumps({"push_id": push_id, "data": records}),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )


def run_burst_worker(settings: Any) -> None:
    """Run one worker in this process until the queue is empty."""
    from redis import Redis

    from workers.worker import make_worker

    make_worker(settings, connection=Redis.from_url(settings.redis_url)).work(burst=True)


def legacy_payload(records: dict[str, list[dict[str, Any]]], push_id: str, workspace_id: str) -> bytes:
    """A job argument as earlier builds of the api queued it: JSON, each record embedded as it was sent."""
    return json.dumps(
        {
            "workspace_id": workspace_id,
            "push_id": push_id,
            "received_at": "2026-11-28T12:00:00Z",
            "pushed_at": "2026-11-28T11:59:00Z",
            "cli_version": "0.2.31",
            "records": records,
            "rejected": [
                {"record_type": "prompts", "index": 9, "error": "data.prompts[9].prompt_kind: bad", "raw": "e30="}
            ],
        }
    ).encode()


@dataclass(frozen=True)
class Shards:
    """Every queue of the settings' layout (each shard, then the unsharded queue), read as one.

    For tests that check what is queued, started or failed without caring in which
    workspace's shard (QUEUE_SHARDS, queueing/shards.py) it is.
    """

    settings: Any
    redis: Any

    @property
    def queues(self) -> list[Any]:
        from queueing.rq_compat import ingest_queue

        return [ingest_queue(name, self.redis) for name in self.settings.queues.listened]

    @property
    def count(self) -> int:
        """Batches queued, in every queue."""
        return sum(q.count for q in self.queues)

    def job_ids(self) -> list[str]:
        """The ids of the queued jobs, queue by queue."""
        return [job_id for q in self.queues for job_id in q.get_job_ids()]

    def holding_jobs(self) -> Any:
        """The one queue that holds queued jobs (fails if none or several do)."""
        [queue] = [q for q in self.queues if q.count]
        return queue

    def registries(self, registry_class: Any) -> list[Any]:
        """One RQ registry of `registry_class` (FailedJobRegistry, StartedJobRegistry...) per queue."""
        from queueing.rq_compat import MsgpackSerializer

        names = self.settings.queues.listened
        return [registry_class(name, connection=self.redis, serializer=MsgpackSerializer) for name in names]

    def registry_ids(self, registry_class: Any) -> list[str]:
        """The job ids in every queue's registry of `registry_class`."""
        return [job_id for r in self.registries(registry_class) for job_id in r.get_job_ids()]

    def holding(self, registry_class: Any) -> Any:
        """The one queue's registry of `registry_class` that holds jobs (fails if none or several do)."""
        [registry] = [r for r in self.registries(registry_class) if r.count]
        return registry
