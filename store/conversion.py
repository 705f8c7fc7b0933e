"""An unpartitioned record table turned into a partitioned one, with writes going on (issue 17).

`convert` turns a table as releases before retention left it into the layout of
store/partitions.py:
1. the new unique index (key + time) is built CONCURRENTLY;
2. a CHECK (time < cutover) is added NOT VALID and then validated (a scan that
   blocks no writer), with cutover PARTITION_DAYS past the next period start, so
   that only a record more than a period ahead of the clock could meet it
   before the swap (its batch is retried, and lands after);
3. one short transaction (lock_timeout, retried) renames the table to
   `_legacy`, creates the partitioned parent, attaches the legacy table (the
   validated CHECK spares the scan, the index spares the build), and adds the
   default partition (`migrate` then makes the upcoming ones). An empty table
   is simply replaced.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

from store.partitions import (
    PARTITION_COLUMNS,
    build_index_concurrently,
    is_partitioned,
    period_start,
    timestamp_of,
    with_lock_retries,
)

log = logging.getLogger(__name__)


def convert(conn: psycopg.Connection, table: str, partition_days: int, now: datetime | None = None) -> bool:
    """Make `table` partitioned by its time (see the module docstring); False if it already was.

    `conn` must be in autocommit mode (CREATE INDEX CONCURRENTLY). Safe to run again
    after an interruption at any step, and from two processes (the caller holds the
    migration lock).
    """
    while not is_partitioned(conn, table):
        try:
            _convert_once(conn, table, partition_days, now or datetime.now(UTC))
        except _RowsArrived:
            continue  # written to while we looked: convert it as a table holding data
        return True
    return False


class _RowsArrived(Exception):
    """The table was empty when looked at, not when locked."""


def _convert_once(conn: psycopg.Connection, table: str, partition_days: int, now: datetime) -> None:
    column = PARTITION_COLUMNS[table]
    key = _unique_key(conn, table)
    new_key = key if column in key else [*key, column]
    empty = conn.execute(sql.SQL("SELECT NOT EXISTS (SELECT FROM {})").format(sql.Identifier(table))).fetchone()
    cutover = None
    if not (empty and empty[0]):
        build_index_concurrently(conn, f"{table}_key_time", table, new_key)
        cutover = _validated_cutover(conn, table, column, partition_days, now)
    with_lock_retries(conn, f"partition {table}", lambda c: _swap(c, table, column, key, new_key, cutover))
    log.info("table partitioned", extra={"table": table, "cutover": cutover.isoformat() if cutover else None})


def _unique_key(conn: psycopg.Connection, table: str) -> list[str]:
    """The columns of the table's unique constraint on (workspace_id, ...)."""
    row = conn.execute(
        "SELECT array_agg(a.attname ORDER BY k.n) FROM pg_constraint c"
        " CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k (attnum, n)"
        " JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum"
        " WHERE c.conrelid = to_regclass(%s) AND c.contype = 'u' GROUP BY c.oid ORDER BY c.oid LIMIT 1",
        (table,),
    ).fetchone()
    if row is None:
        raise RuntimeError(f"{table} has no unique key to partition around")
    return list(row[0])


def _validated_cutover(
    conn: psycopg.Connection, table: str, column: str, partition_days: int, now: datetime
) -> datetime:
    """The legacy range's upper bound, held by a validated CHECK; one a resumed run can still use is kept."""
    name = f"{table}_legacy_before"
    row = conn.execute(
        "SELECT pg_get_constraintdef(oid), convalidated FROM pg_constraint"
        " WHERE conrelid = to_regclass(%s) AND conname = %s",
        (table, name),
    ).fetchone()
    cutover = None
    if row is not None:
        cutover = timestamp_of(conn, re.findall(r"'([^']*)'", row[0])[0])
        if cutover < now + timedelta(days=1):  # too close to use: drop it, take a later one
            drop = sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(sql.Identifier(table), sql.Identifier(name))
            with_lock_retries(conn, f"check {table}", lambda c: c.execute(drop))
            cutover = None
    if cutover is None:
        cutover = period_start(now, partition_days) + timedelta(days=2 * partition_days)
        with_lock_retries(
            conn,
            f"check {table}",
            lambda c: c.execute(
                sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({} < {}) NOT VALID").format(
                    sql.Identifier(table), sql.Identifier(name), sql.Identifier(column), sql.Literal(cutover)
                )
            ),
        )
    _validate_checks(conn, table)
    return cutover


def _validate_checks(conn: psycopg.Connection, table: str) -> None:
    """Validate the table's NOT VALID CHECKs (the cutover, and 0003's time ranges), as the parent's must hold.

    Each is a scan under SHARE UPDATE EXCLUSIVE: inserts and updates go on meanwhile.
    """
    pending = conn.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = to_regclass(%s) AND contype = 'c' AND NOT convalidated",
        (table,),
    ).fetchall()
    for name, definition in pending:
        try:
            conn.execute(
                sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(sql.Identifier(table), sql.Identifier(name))
            )
        except psycopg.errors.CheckViolation:
            raise RuntimeError(
                f"{table} holds rows that break {name} ({definition}), written before that check existed;"
                f" no client can read them back: delete them (DELETE FROM {table} WHERE NOT ({definition[6:]}))"
                " and run migrate again"
            ) from None


def _swap(
    conn: psycopg.Connection,
    table: str,
    column: str,
    key: list[str],
    new_key: list[str],
    cutover: datetime | None,
) -> None:
    """The short transaction: the partitioned parent takes the table's name; the old table becomes a partition."""
    t, legacy = sql.Identifier(table), sql.Identifier(f"{table}_legacy")
    conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(t))
    if cutover is None:  # empty when we looked: still empty now that nobody can write?
        row = conn.execute(sql.SQL("SELECT NOT EXISTS (SELECT FROM {})").format(t)).fetchone()
        if not (row and row[0]):
            raise _RowsArrived(table)
    indexes = conn.execute(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE i.indrelid = to_regclass(%s) AND NOT i.indisunique",
        (table,),
    ).fetchall()
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(t, legacy))
    for name, _ in indexes:
        conn.execute(
            sql.SQL("ALTER INDEX {} RENAME TO {}").format(sql.Identifier(name), sql.Identifier(name + "_legacy"))
        )
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING COMPRESSION"
            " INCLUDING STORAGE INCLUDING CONSTRAINTS) PARTITION BY RANGE ({})"
        ).format(t, legacy, sql.Identifier(column))
    )
    # The CHECKs come along (the time ranges of 0003), the legacy bound too: it is the legacy partition's alone.
    conn.execute(
        sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(t, sql.Identifier(f"{table}_legacy_before"))
    )
    conn.execute(
        sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} UNIQUE ({})").format(
            t, sql.Identifier(f"{table}_key"), sql.SQL(", ").join(map(sql.Identifier, new_key))
        )
    )
    for _, definition in indexes:
        # Read before the renames, each definition names the table and the index as they were:
        # run now, it makes the same index on the parent; ATTACH then adopts the legacy one.
        conn.execute(definition)
    if cutover is None:
        conn.execute(sql.SQL("DROP TABLE {}").format(legacy))
    else:
        if key != new_key:  # the old key is narrower than the partitioned one: it would refuse a legal row
            old = conn.execute(
                "SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(%s) AND contype = 'u'"
                " AND conname <> %s",
                (f"{table}_legacy", f"{table}_key_time"),
            ).fetchall()
            for (name,) in old:
                conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(legacy, sql.Identifier(name)))
        conn.execute(
            sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM (MINVALUE) TO ({})").format(
                t, legacy, sql.Literal(cutover)
            )
        )
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} DEFAULT").format(sql.Identifier(f"{table}_default"), t))
