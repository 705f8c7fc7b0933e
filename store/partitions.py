"""The big record tables, partitioned by their records' own time (issue 17: retention that costs little).

Seven record types carry a required time that a re-push repeats unchanged
(`PARTITION_COLUMNS`). Their tables are range-partitioned on it, so old data
is dropped a partition at a time (no DELETE, no rewrite, a lock of
milliseconds). Postgres wants the partition key inside every unique key, so
each key becomes (workspace_id, key..., time): a re-push of a record is still
the same row, in the same partition, however old it is.

Every partitioned table has:
- range partitions `<table>_p<YYYYMMDD>` (their lower bound), PARTITION_DAYS
  wide, aligned to Mondays, covering the retention window and PARTITIONS_AHEAD
  periods ahead (made by `ensure_partitions`, called by `migrate` and `maintain`);
- `<table>_default`, the DEFAULT partition, for a record whose time no range
  covers (a CLI's clock far ahead, or a record older than the window). It stays
  small: a new range partition takes its rows (`_attach_range`), and `maintain`
  deletes those past retention;
- after converting a table that held data (store/conversion.py), `<table>_legacy`:
  the old table itself, attached whole as the range (MINVALUE, cutover). Nothing is copied.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

# Record type -> the required time its partitions split on (SPEC 3), repeated unchanged by a re-push.
PARTITION_COLUMNS: dict[str, str] = {
    "prompts": "occurred_at",
    "skill_invocations": "occurred_at",
    "execution_facts": "occurred_at",
    "normalization_runs": "run_at",
    "orchestrate_runs": "timestamp",
    "grading_results": "graded_at",
    "improvement_signals": "timestamp",
}
ANCHOR = date(2000, 1, 3)  # a Monday: period bounds are ANCHOR + k * PARTITION_DAYS
LOCK_TIMEOUT = "2s"  # a DDL step waits this long for its lock, then gives way to the writers and retries
LOCK_RETRIES = 30


@dataclass(frozen=True)
class Partition:
    """One range partition: its name and bounds (None: MINVALUE, the legacy table)."""

    name: str
    lower: datetime | None
    upper: datetime


def period_start(at: datetime, partition_days: int) -> datetime:
    """The start (UTC midnight) of the period holding `at`."""
    days = (at.astimezone(UTC).date() - ANCHOR).days
    start = ANCHOR + timedelta(days=days - days % partition_days)
    return datetime(start.year, start.month, start.day, tzinfo=UTC)


def is_partitioned(conn: psycopg.Connection, table: str) -> bool:
    row = conn.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", (table,)).fetchone()
    return row is not None and row[0] == "p"


def range_partitions(conn: psycopg.Connection, table: str) -> list[Partition]:
    """The table's range partitions, oldest first (the default partition is not one)."""
    rows = conn.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(%s)",
        (table,),
    ).fetchall()
    found = []
    for name, bound in rows:
        if bound == "DEFAULT":
            continue
        lower, upper = re.findall(r"\('([^']*)'\)|\((MINVALUE)\)", bound), None
        values = [a or b for a, b in lower]
        lo = None if values[0] == "MINVALUE" else timestamp_of(conn, values[0])
        upper = timestamp_of(conn, values[1])
        found.append(Partition(name, lo, upper))
    return sorted(found, key=lambda p: p.upper)


def timestamp_of(conn: psycopg.Connection, literal: str) -> datetime:
    row = conn.execute("SELECT %s::timestamptz", (literal,)).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def with_lock_retries(conn: psycopg.Connection, what: str, step: Callable[[psycopg.Connection], object]) -> None:
    """Run `step(conn)` in a transaction whose locks wait at most LOCK_TIMEOUT, retried while they time out.

    A DDL lock request queues every later writer behind it; giving up after a
    short wait (a long report holding the table, say) keeps the writers moving.
    """
    for attempt in range(LOCK_RETRIES):
        try:
            with conn.transaction():
                conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
                step(conn)
            return
        except psycopg.errors.LockNotAvailable:
            log.info("waiting for a lock", extra={"step": what, "attempt": attempt + 1})
            time.sleep(min(5.0, 0.2 * 2**attempt))
    raise RuntimeError(f"{what}: could not take its lock in {LOCK_RETRIES} tries of {LOCK_TIMEOUT}")


# -- DDL that lets writers go on -------------------------------------------------------------


def build_index_concurrently(
    conn: psycopg.Connection, name: str, table: str, columns: list[str], unique: bool = True
) -> None:
    """An index built without blocking writers (autocommit `conn`); an invalid one left by an interrupted build is rebuilt."""
    row = conn.execute("SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(%s)", (name,)).fetchone()
    if row is not None and row[0]:
        return
    if row is not None:
        conn.execute(sql.SQL("DROP INDEX CONCURRENTLY {}").format(sql.Identifier(name)))
    conn.execute(
        sql.SQL("CREATE {}INDEX CONCURRENTLY {} ON {} ({})").format(
            sql.SQL("UNIQUE " if unique else ""),
            sql.Identifier(name),
            sql.Identifier(table),
            sql.SQL(", ").join(map(sql.Identifier, columns)),
        )
    )


# -- keeping the ranges ahead of the clock ---------------------------------------------------


def wanted_ranges(first: datetime, now: datetime, partition_days: int, ahead: int) -> list[tuple[datetime, datetime]]:
    """The aligned periods from the one holding `first` to `ahead` periods past the one holding `now`."""
    width = timedelta(days=partition_days)
    start, end = period_start(first, partition_days), period_start(now, partition_days) + (ahead + 1) * width
    ranges = []
    while start < end:
        ranges.append((start, start + width))
        start += width
    return ranges


def ensure_partitions(
    conn: psycopg.Connection, table: str, first: datetime, now: datetime, partition_days: int, ahead: int
) -> list[str]:
    """Create the range partitions missing between `first` and `ahead` periods past now; return their names.

    A wanted period that overlaps existing partitions (the legacy range, or
    periods of another PARTITION_DAYS) is cut to the gaps between them.
    """
    existing = [(p.lower, p.upper) for p in range_partitions(conn, table)]
    made = []
    for lo, hi in wanted_ranges(first, now, partition_days, ahead):
        for gap_lo, gap_hi in _gaps(lo, hi, existing):
            name = f"{table}_p{gap_lo:%Y%m%d}"
            step = functools.partial(_attach_range, table=table, name=name, lo=gap_lo, hi=gap_hi)
            with_lock_retries(conn, f"partition {name}", step)
            existing.append((gap_lo, gap_hi))
            made.append(name)
    return made


def _gaps(lo: datetime, hi: datetime, taken: list[tuple[datetime | None, datetime]]) -> list[tuple[datetime, datetime]]:
    """The parts of [lo, hi) that no taken range covers."""
    gaps = [(lo, hi)]
    for t_lo, t_hi in taken:
        cut = []
        for g_lo, g_hi in gaps:
            if t_hi <= g_lo or (t_lo is not None and t_lo >= g_hi):
                cut.append((g_lo, g_hi))
                continue
            if t_lo is not None and t_lo > g_lo:
                cut.append((g_lo, t_lo))
            if t_hi < g_hi:
                cut.append((t_hi, g_hi))
        gaps = cut
    return gaps


def _attach_range(conn: psycopg.Connection, table: str, name: str, lo: datetime, hi: datetime) -> None:
    """A new range partition, with the default partition's rows of that range moved into it.

    Built as a plain table and attached: ATTACH holds SHARE UPDATE EXCLUSIVE on the
    parent, so writers go on; the default partition is locked (its rows are few)
    so that none of the range can land there between the move and the attach.
    """
    t, new, default = sql.Identifier(table), sql.Identifier(name), sql.Identifier(f"{table}_default")
    column = sql.Identifier(PARTITION_COLUMNS[table])
    conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(default))
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING COMPRESSION INCLUDING STORAGE"
            " INCLUDING CONSTRAINTS)"
        ).format(new, t)
    )
    bound = sql.SQL("{c} >= {lo} AND {c} < {hi}").format(c=column, lo=sql.Literal(lo), hi=sql.Literal(hi))
    conn.execute(
        sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({})").format(new, sql.Identifier(name + "_range"), bound)
    )
    generated = {
        r[0]
        for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attgenerated <> ''", (table,)
        )
    }
    columns = [
        r[0]
        for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped"
            " ORDER BY attnum",
            (table,),
        )
        if r[0] not in generated
    ]
    cols = sql.SQL(", ").join(map(sql.Identifier, columns))
    conn.execute(
        sql.SQL(
            "WITH moved AS (DELETE FROM {d} WHERE {b} RETURNING {cols}) INSERT INTO {n} ({cols}) SELECT {cols} FROM moved"
        ).format(d=default, b=bound, n=new, cols=cols)
    )
    conn.execute(
        sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
            t, new, sql.Literal(lo), sql.Literal(hi)
        )
    )
    conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(new, sql.Identifier(name + "_range")))


def drop_partition(conn: psycopg.Connection, name: str) -> None:
    """Drop one range partition whole: no DELETE, no rewrite, a short lock."""
    with_lock_retries(conn, f"drop {name}", lambda c: c.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name))))
