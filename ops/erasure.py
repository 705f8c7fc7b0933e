"""Deleting a workspace's data (a privacy request): `selftune-ingest workspace delete`.

The order is what keeps a deleted workspace deleted:

1. **Refuse new pushes.** Its device codes are deleted (no key can be issued for it any more)
   and its keys revoked, in Postgres and in the api's key mirror in Redis. An api process may
   have a key cached as live for KEY_CACHE_TTL_S, so the command waits that long (`grace_s`):
   past it every api answers 401 to the workspace's keys.
2. **Drop what waits.** Its batches waiting in Redis (every RQ queue, its intermediate list, the
   scheduled, deferred and failed registries) are deleted, and so are this host's spooled
   batches (SPOOL_PATH: the command reaches only the spool of the host it runs on). A batch a
   worker is running cannot be taken back: the command waits until no worker runs one of the
   workspace's batches (`settle_s` at most), dropping again what those leave behind (a retry);
   a batch whose worker died (its claim lapsed) is dropped rather than left for RQ to retry.
3. **Delete the rows**, table by table, in batches of `batch_rows` (each its own transaction, so no
   lock is held for long and the writes of other workspaces go on), then a last pass over Redis
   and the tables for a straggler, then its Redis keys (first answers, failures, streamed bodies),
   its mirror entries, its keys and the workspace row itself.

Nothing in the schema ties a push to its workspace row (no foreign key: migrations/0001), so a
batch that reached a worker after all this would be written as an orphan. Step 1 makes that a
batch accepted before the revocation and held past `grace_s` (a push still uploading, or another
host's spool): running the command again with the workspace's id sweeps such rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from redis import Redis
from rq import Queue

from queueing.rq_compat import MsgpackSerializer, drop_jobs, drop_stalled, ingest_queue, job_metas, waiting_places
from runtime.settings import Settings
from schema.batches import body_key, dedupe_key, failure_key
from spool.store import Spool, count_workspace
from store.keys import KEY_MIRROR, mirror_value, parse_mirror_value

BATCH_ROWS = 5_000  # rows one DELETE takes: a few tens of ms, so no long lock and little WAL at once
SETTLE_POLL_S = 0.2
# Deleted after every table that carries workspace_id: api_keys references workspaces.
LAST_TABLES = ("api_keys", "workspaces")


@dataclass
class Erasure:
    """What a delete found (a dry run) or removed."""

    workspace_id: str
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows
    queued_batches: int = 0  # batches waiting in Redis (queue, retries, failed)
    running_batches: int = 0  # batches a worker was running (waited for)
    still_running: int = 0  # ... and still was after `settle_s`: their rows may land after the delete
    spooled_batches: int | None = None  # in this host's spool (None: no spool file here)
    redis_keys: int = 0  # first answers, failure reasons, streamed bodies
    mirror_entries: int = 0
    waited_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "workspace_id": self.workspace_id,
            "rows": self.rows,
            "queued_batches": self.queued_batches,
            "running_batches": self.running_batches,
            "still_running": self.still_running,
            "spooled_batches": self.spooled_batches,
            "redis_keys": self.redis_keys,
            "mirror_entries": self.mirror_entries,
            "waited_s": round(self.waited_s, 1),
        }


def workspace_tables(conn: psycopg.Connection) -> list[str]:
    """Every table of the schema with a workspace_id column (a partitioned one by its parent), `LAST_TABLES` last."""
    names = [
        row[0]
        for row in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid"
            " WHERE a.attname = 'workspace_id' AND NOT a.attisdropped AND c.relkind IN ('r', 'p')"
            " AND NOT c.relispartition AND c.relnamespace = current_schema()::regnamespace ORDER BY c.relname"
        )
    ]
    return [n for n in names if n not in LAST_TABLES] + [n for n in LAST_TABLES if n in names]


def count_rows(conn: psycopg.Connection, workspace_id: str) -> dict[str, int]:
    """The workspace's rows in each table."""
    counts = {}
    for table in workspace_tables(conn):
        query = sql.SQL("SELECT count(*) FROM {} WHERE workspace_id = %s").format(sql.Identifier(table))
        row = conn.execute(query, (workspace_id,)).fetchone()
        counts[table] = int(row[0]) if row else 0
    return counts


def delete_rows(conn: psycopg.Connection, table: str, workspace_id: str, batch_rows: int = BATCH_ROWS) -> int:
    """Delete the workspace's rows of one table, `batch_rows` at a time, each batch committed; return how many.

    A batch is found by its rows' ctids (an index scan on workspace_id, then a TID scan), so
    each DELETE locks `batch_rows` rows for tens of milliseconds, never the table.
    """
    assert conn.autocommit, "each batch must commit on its own"
    query = sql.SQL(
        "DELETE FROM {t} WHERE workspace_id = %(w)s"
        " AND ctid = ANY(ARRAY(SELECT ctid FROM {t} WHERE workspace_id = %(w)s LIMIT %(n)s))"
    ).format(t=sql.Identifier(table))
    total = 0
    while True:
        deleted = conn.execute(query, {"w": workspace_id, "n": batch_rows}).rowcount
        total += deleted
        if deleted == 0:
            return total


# -- Redis -----------------------------------------------------------------------------------


def _queues(redis: Redis, settings: Settings) -> list[Queue]:
    """Every RQ queue Redis knows, and every configured shard even if it is not listed yet.

    Not only the workspace's shard: after QUEUE_SHARDS changed, its batches queued before
    wait in the shard it had then (and before sharding, in the unsharded queue). A delete
    must find them all, and reading the other shards' metas costs little next to the rows.
    """
    names = {q.name for q in Queue.all(connection=redis, serializer=MsgpackSerializer)} | set(settings.queues.listened)
    return [ingest_queue(name, redis) for name in sorted(names)]


def _of_workspace(redis: Redis, job_ids: list[str], workspace_id: str) -> list[str]:
    return [j for j, meta in job_metas(redis, job_ids).items() if meta.get("workspace_id") == workspace_id]


def waiting_batches(redis: Redis, queue: Queue, workspace_id: str) -> list[str]:
    """The ids of the workspace's jobs waiting anywhere in `queue` (not those a worker runs)."""
    ids: set[str] = set()
    for key, kind in waiting_places(queue).items():
        raw = redis.lrange(key, 0, -1) if kind == "list" else redis.zrange(key, 0, -1)
        ids.update(i.decode() for i in raw)  # type: ignore[union-attr]
    return _of_workspace(redis, sorted(ids), workspace_id)


def running_batches(redis: Redis, queue: Queue, workspace_id: str) -> list[str]:
    """The ids of the workspace's jobs a worker is running now (RQ's started registry)."""
    return _of_workspace(redis, queue.started_job_registry.get_job_ids(cleanup=False), workspace_id)


def _scan(redis: Redis, pattern: str) -> list[bytes]:
    return list(redis.scan_iter(match=pattern, count=1000))


def _glob_escaped(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def workspace_keys(redis: Redis, workspace_id: str) -> list[bytes]:
    """The workspace's own Redis keys: first answers (dedupe), failure reasons, streamed bodies."""
    ws = _glob_escaped(workspace_id)
    found = []
    for make in (dedupe_key, failure_key, body_key):
        found += _scan(redis, make(ws, "*"))
    return found


def mirror_entries(redis: Redis, workspace_id: str) -> list[bytes]:
    """The key hashes the api's key mirror holds for the workspace."""
    found = []
    for digest, value in redis.hscan_iter(KEY_MIRROR, count=1000):
        parsed = parse_mirror_value(value)
        if parsed is not None and parsed[1] == workspace_id:
            found.append(digest)
    return found


# -- the whole delete ------------------------------------------------------------------------


def survey(conn: psycopg.Connection, redis: Redis, settings: Settings, workspace_id: str) -> Erasure:
    """What a delete would remove (`--dry-run`): nothing is changed."""
    found = Erasure(workspace_id, rows=count_rows(conn, workspace_id))
    for queue in _queues(redis, settings):
        found.queued_batches += len(waiting_batches(redis, queue, workspace_id))
        found.running_batches += len(running_batches(redis, queue, workspace_id))
    found.spooled_batches = count_workspace(settings.spool_path, workspace_id)
    found.redis_keys = len(workspace_keys(redis, workspace_id))
    found.mirror_entries = len(mirror_entries(redis, workspace_id))
    return found


def refuse_pushes(conn: psycopg.Connection, redis: Redis, workspace_id: str) -> int:
    """Step 1: no key can be issued for the workspace any more, and its keys are revoked (Postgres and mirror).

    Returns how many device codes were deleted.
    """
    codes = conn.execute("DELETE FROM device_codes WHERE workspace_id = %s", (workspace_id,)).rowcount
    revoked = conn.execute(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE workspace_id = %s"
        " RETURNING key_hash, key_id",
        (workspace_id,),
    ).fetchall()
    if revoked:
        redis.hset(KEY_MIRROR, mapping={h: mirror_value(workspace_id, k, revoked=True) for h, k in revoked})
    return codes


def drop_waiting(redis: Redis, settings: Settings, workspace_id: str) -> tuple[int, int | None]:
    """Drop the workspace's batches waiting in Redis and in this host's spool; (queued, spooled) dropped.

    Spooled is None when this host has no spool file.
    """
    queued = 0
    for queue in _queues(redis, settings):
        ids = waiting_batches(redis, queue, workspace_id)
        drop_jobs(redis, queue, ids)
        queued += len(ids)
    spooled = None
    if count_workspace(settings.spool_path, workspace_id) is not None:  # never create a spool file here
        spool = Spool(settings.spool_path, settings.spool_max_bytes)
        try:
            spooled = spool.drop_workspace(workspace_id)
        finally:
            spool.close()
    return queued, spooled


def settle(
    redis: Redis, settings: Settings, workspace_id: str, settle_s: float, found: Erasure, sleep: Callable[[float], None]
) -> None:
    """Step 2: drop what waits, then wait (at most `settle_s`) until no worker runs one of the workspace's batches.

    Dropping again after each wait takes what a finished batch left behind (a retry, a failure).
    """
    deadline = time.monotonic() + settle_s
    seen_running: set[str] = set()
    while True:
        queued, spooled = drop_waiting(redis, settings, workspace_id)
        found.queued_batches += queued
        if spooled is not None:
            found.spooled_batches = (found.spooled_batches or 0) + spooled
        running = []
        for queue in _queues(redis, settings):
            ids = running_batches(redis, queue, workspace_id)
            # A batch whose worker died would be retried by RQ's maintenance: dropped instead.
            stalled = set(drop_stalled(redis, queue, ids, time.time()))
            found.queued_batches += len(stalled)
            running += [j for j in ids if j not in stalled]
        seen_running.update(running)
        if not running or time.monotonic() >= deadline:
            break
        sleep(SETTLE_POLL_S)
    found.running_batches += len(seen_running)
    found.still_running = len(running)


def erase(
    conn: psycopg.Connection,
    redis: Redis,
    settings: Settings,
    workspace_id: str,
    *,
    grace_s: float,
    settle_s: float,
    batch_rows: int = BATCH_ROWS,
    progress: Callable[[str, int], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Erasure:
    """Delete everything of a workspace, in the order of this module's docstring; return what went."""
    started = time.monotonic()
    found = Erasure(workspace_id, rows={"device_codes": refuse_pushes(conn, redis, workspace_id)})
    sleep(grace_s)  # every api's key cache has forgotten the keys: new pushes are 401
    settle(redis, settings, workspace_id, settle_s, found, sleep)

    def delete(tables: list[str] | tuple[str, ...], report: bool = True) -> None:
        for table in tables:
            found.rows[table] = found.rows.get(table, 0) + delete_rows(conn, table, workspace_id, batch_rows)
            if progress and report:
                progress(table, found.rows[table])

    data_tables = [t for t in workspace_tables(conn) if t not in LAST_TABLES]
    delete(data_tables)
    # A last pass, for anything that slipped in while the tables were deleted (it should find nothing).
    settle(redis, settings, workspace_id, settle_s, found, sleep)
    delete(data_tables, report=False)
    keys = workspace_keys(redis, workspace_id)
    if keys:
        found.redis_keys = int(redis.delete(*keys))
    entries = mirror_entries(redis, workspace_id)
    if entries:
        found.mirror_entries = int(redis.hdel(KEY_MIRROR, *entries))
    delete(LAST_TABLES)
    found.waited_s = time.monotonic() - started
    return found
