"""Retention: old rows dropped by partition where a table has one, in bounded DELETEs where not (issue 17).

`prepare` (run by `migrate`) partitions the seven time-keyed record tables
(store/partitions.py) and builds the indexes the bounded deletes walk;
`maintain` (the `selftune-ingest maintain` command, run from cron or with
`--every`) then, per table:
- partitioned: creates the periods the window and the clock need, drops every
  partition whose upper bound is past retention (the legacy table of a
  conversion included, once all of it is), and deletes the default partition's
  rows past retention;
- sessions and evolution evidence (no required time fixed at first write), push
  rows and the quarantine: deletes rows older than retention by arrival, DELETE_BATCH
  at a time, each batch its own short transaction.

One maintain runs at a time (an advisory lock); a second one returns at once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from runtime.settings import RETAINED_TABLES, Retention
from store import conversion, partitions
from store.partitions import PARTITION_COLUMNS

# Tables kept by arrival time, with the index each bounded delete walks.
ARRIVAL_COLUMNS: dict[str, str] = {
    "sessions": "ingested_at",
    "evolution_evidence": "ingested_at",
    "pushes": "received_at",
    "quarantine": "received_at",
}
DELETE_BATCH = 5000  # rows per DELETE: each is a short transaction, so writers never wait long behind one
_LOCK_ID = 0x5E1F7F  # advisory lock key: one maintain at a time


@dataclass
class TableRetention:
    """What `maintain` did to one table, and what the table holds now."""

    table: str
    retention_days: int  # 0: kept forever
    kept_since: str | None  # rows older than this are gone (ISO 8601; None: kept forever)
    partitioned: bool
    partitions: int  # range partitions (the legacy one included)
    partitions_ahead: int  # periods made ahead of the current one
    default_rows: int  # rows no range covers (a clock far ahead, or older than the window)
    created_partitions: list[str]
    dropped_partitions: list[str]
    deleted_rows: int
    ran_at: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def prepare(conn: psycopg.Connection, retention: Retention, now: datetime | None = None) -> list[str]:
    """Partition the time-keyed tables and build the arrival indexes (idempotent); return the tables converted.

    `conn` must be in autocommit mode: indexes on tables that hold data are built CONCURRENTLY.
    """
    now = now or datetime.now(UTC)
    converted = [t for t in PARTITION_COLUMNS if conversion.convert(conn, t, retention.partition_days, now)]
    for table in PARTITION_COLUMNS:
        partitions.ensure_partitions(
            conn, table, _first_kept(retention, table, now), now, retention.partition_days, retention.partitions_ahead
        )
    for table, column in ARRIVAL_COLUMNS.items():
        # Led by workspace_id, as every index of a record table (README: Citus): the deletes go
        # workspace by workspace, each one a range of this index.
        index = f"{table}_workspace_{column}"
        partitions.build_index_concurrently(conn, index, table, ["workspace_id", column], unique=False)
    return converted


def _horizon(retention: Retention, table: str, now: datetime) -> datetime | None:
    days = retention.days_for(table)
    return now - timedelta(days=days) if days else None


def _first_kept(retention: Retention, table: str, now: datetime) -> datetime:
    """Where the wanted periods start: the retention horizon, or now for a table kept forever."""
    return _horizon(retention, table, now) or now


def maintain(
    conn: psycopg.Connection, retention: Retention, now: datetime | None = None, dry_run: bool = False
) -> list[TableRetention] | None:
    """One round of retention over every table; None if another maintain holds the lock.

    `conn` must be in autocommit mode. With `dry_run`, nothing changes: the result
    says what would be dropped and deleted.
    """
    now = now or datetime.now(UTC)
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (_LOCK_ID,)).fetchone()
    if not (row and row[0]):
        return None
    try:
        return [_maintain_table(conn, retention, table, now, dry_run) for table in RETAINED_TABLES]
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))


def _maintain_table(
    conn: psycopg.Connection, retention: Retention, table: str, now: datetime, dry_run: bool
) -> TableRetention:
    horizon = _horizon(retention, table, now)
    created: list[str] = []
    dropped: list[str] = []
    deleted = 0
    partitioned = partitions.is_partitioned(conn, table)
    if partitioned:
        if not dry_run:
            created = partitions.ensure_partitions(
                conn,
                table,
                _first_kept(retention, table, now),
                now,
                retention.partition_days,
                retention.partitions_ahead,
            )
        if horizon is not None:
            for p in partitions.range_partitions(conn, table):
                if p.upper <= horizon:
                    if not dry_run:
                        partitions.drop_partition(conn, p.name)
                    dropped.append(p.name)
            deleted = _delete_older(conn, f"{table}_default", PARTITION_COLUMNS[table], horizon, dry_run)
    elif horizon is not None and table in ARRIVAL_COLUMNS:
        deleted = _delete_older(conn, table, ARRIVAL_COLUMNS[table], horizon, dry_run)
    ranges = partitions.range_partitions(conn, table) if partitioned else []
    current = partitions.period_start(now, retention.partition_days)
    default_rows = 0
    if partitioned:
        counted = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(f"{table}_default"))).fetchone()
        default_rows = int(counted[0]) if counted else 0
    return TableRetention(
        table=table,
        retention_days=retention.days_for(table),
        kept_since=horizon.isoformat() if horizon else None,
        partitioned=partitioned,
        partitions=len(ranges),
        partitions_ahead=sum(1 for p in ranges if p.lower is not None and p.lower > current),
        default_rows=default_rows,
        created_partitions=created,
        dropped_partitions=dropped,
        deleted_rows=deleted,
        ran_at=now.isoformat(),
    )


def _delete_older(conn: psycopg.Connection, table: str, column: str, horizon: datetime, dry_run: bool) -> int:
    """Delete the rows older than `horizon`, workspace by workspace, DELETE_BATCH at a time; return how many (would) go.

    Each DELETE is its own short transaction over a range of the (workspace_id, time)
    index (or of a default partition, which is small), so a writer never waits long
    behind one, and under Citus each stays on one shard.
    """
    t, c = sql.Identifier(table), sql.Identifier(column)
    if dry_run:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {} < %s").format(t, c), (horizon,)).fetchone()
        return int(row[0]) if row else 0
    statement = sql.SQL(
        "DELETE FROM {t} WHERE ctid = ANY (ARRAY (SELECT ctid FROM {t} WHERE workspace_id = %s AND {c} < %s LIMIT {n}))"
    ).format(t=t, c=c, n=sql.Literal(DELETE_BATCH))
    total = 0
    for workspace_id in _workspaces_in(conn, table):
        while True:
            count = conn.execute(statement, (workspace_id, horizon)).rowcount
            total += count
            if count < DELETE_BATCH:
                break
    return total


def _workspaces_in(conn: psycopg.Connection, table: str) -> list[str]:
    """The workspaces that have rows in `table`: a skip over its (workspace_id, ...) index, one probe each."""
    t = sql.Identifier(table)
    query = sql.SQL(
        "WITH RECURSIVE w (id) AS (SELECT min(workspace_id) FROM {t}"
        " UNION ALL SELECT (SELECT min(workspace_id) FROM {t} WHERE workspace_id > w.id) FROM w WHERE w.id IS NOT NULL)"
        " SELECT id FROM w WHERE id IS NOT NULL"
    ).format(t=t)
    return [row[0] for row in conn.execute(query)]
