"""What retention costs (issue 17): converting a table that holds data, and dropping old weeks.

    .venv/bin/python -m bench.retention --rows 1000000

On databases of its own (created on --pg-admin-url's server, dropped after), with
`--rows` prompts spread evenly over the last 60 days:

1. **conversion**: the schema as the previous release left it (unpartitioned), then
   `migrate` partitions it while a writer inserts one prompt every 5 ms (as the old
   workers, then, once refused, as the new ones). Reports the conversion's wall time and
   the writer's insert latency (p50, p99, max) during it: how long writes waited.
2. **dropping 4 weeks**: `maintain` with 30 days' retention on the partitioned table, against
   the baseline measured in the same run: the same rows deleted from an unpartitioned copy
   in DELETE_BATCH-row deletes (what retention without partitions would do). Reports both
   times, the WAL each wrote, their ratios, the dead rows the deletes leave for VACUUM, and the
   writer's latency during each.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import psycopg

from runtime.settings import Retention
from store import partitions
from store.migrate import migrate
from store.retention import DELETE_BATCH, maintain

DAYS = 60
RETENTION = Retention(default_days=0, days={"prompts": 30})
# What the database ran with until the operator shortened retention: partitions over all DAYS.
FILLED_WITH = Retention(default_days=0, days={"prompts": DAYS + 7})
_COLUMNS = (
    "workspace_id, prompt_id, record_kind, schema_version, normalizer_version, normalized_at, platform,"
    " capture_mode, raw_source_ref, source_session_kind, session_id, occurred_at, prompt_text, prompt_kind,"
    " is_actionable"
)


@contextlib.contextmanager
def scratch(admin_url: str, partition: bool) -> Iterator[psycopg.Connection]:
    """A migrated database of its own (partitioned or as the previous release), dropped after."""
    name = f"bench_retention_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = psycopg.conninfo.make_conninfo(admin_url, dbname=name)
    try:
        with psycopg.connect(url, autocommit=True, options="-c timezone=UTC") as conn:
            migrate(conn, FILLED_WITH, partition=partition)
            yield conn
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fill(conn: psycopg.Connection, rows: int) -> None:
    """`rows` prompts, evenly over the last DAYS days, ~300 bytes of text each."""
    step = DAYS * 86400 / rows
    conn.execute(
        f"INSERT INTO prompts ({_COLUMNS}) SELECT 'ws_a', 'old-' || i, 'prompt', '2.0', '1', now(), 'claude_code',"
        " 'hook', '{}', 'interactive', 'sess-' || i / 10, now() - i * %s * interval '1 second',"
        " repeat('text ', 60) || i, 'user', true FROM generate_series(1, %s) AS i",
        (step, rows),
    )
    conn.execute("VACUUM ANALYZE prompts")


class Writer(threading.Thread):
    """Inserts one prompt every 5 ms on its own connection, timing each insert, until stopped.

    It writes with the previous release's conflict target until Postgres refuses it (the
    swap changed the key), then with the new one, as RQ's retry by a new worker would.
    """

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.stop, self.refused = url, threading.Event(), 0
        self.latencies: list[float] = []

    def run(self) -> None:
        target = "(workspace_id, prompt_id)"
        with psycopg.connect(self.url, autocommit=True) as conn:
            n = 0
            while not self.stop.is_set():
                n += 1
                t0 = time.perf_counter()
                try:
                    conn.execute(
                        f"INSERT INTO prompts ({_COLUMNS}) VALUES ('ws_a', %s, 'prompt', '2.0', '1', now(),"
                        " 'claude_code', 'hook', '{}', 'interactive', 's', now(), 'x', 'user', true)"
                        f" ON CONFLICT {target} DO NOTHING",
                        (f"during-{n}",),
                    )
                except psycopg.errors.InvalidColumnReference:
                    self.refused += 1
                    target = "(workspace_id, prompt_id, occurred_at)"
                    continue
                self.latencies.append(time.perf_counter() - t0)
                self.stop.wait(0.005)

    def figures(self) -> str:
        ms = sorted(x * 1000 for x in self.latencies)
        p99 = ms[int(len(ms) * 0.99) - 1] if ms else float("nan")
        return f"{len(ms)} inserts, p50 {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, max {ms[-1]:.0f} ms"


def _lsn(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
    assert row is not None
    return int(row[0])


def while_writing(conn: psycopg.Connection, work: Callable[[], object]) -> tuple[float, int, Writer]:
    """Run `work` with a Writer going on the same database; its wall time, the WAL it wrote (bytes), the writer.

    The WAL is the server's (the writer's few inserts included): run on a server nothing else writes to.
    """
    writer = Writer(conn.info.dsn)
    writer.start()
    time.sleep(0.5)  # the writer's steady state before the work starts
    wal0, t0 = _lsn(conn), time.perf_counter()
    try:
        work()
    finally:
        seconds, wal = time.perf_counter() - t0, _lsn(conn) - wal0
        time.sleep(0.5)
        writer.stop.set()
        writer.join()
    return seconds, wal, writer


def delete_in_batches(conn: psycopg.Connection, horizon: datetime) -> int:
    """The baseline: what retention without partitions does, DELETE_BATCH rows per transaction."""
    deleted = 0
    while True:
        cur = conn.execute(
            "DELETE FROM prompts WHERE ctid IN (SELECT ctid FROM prompts WHERE occurred_at < %s LIMIT %s)",
            (horizon, DELETE_BATCH),
        )
        deleted += cur.rowcount
        if cur.rowcount < DELETE_BATCH:
            return deleted


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--pg-admin-url", default=os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    p.add_argument("--rows", type=int, default=1_000_000)
    args = p.parse_args(argv)

    with scratch(args.pg_admin_url, partition=False) as conn:
        fill(conn, args.rows)
        seconds, wal, writer = while_writing(conn, lambda: migrate(conn, RETENTION))
        print(
            f"conversion of {args.rows} rows: {seconds:.1f} s, WAL {wal / 1e6:.1f} MB;"
            f" writer: {writer.figures()}, refused {writer.refused}"
        )

    now = datetime.now(UTC)
    # Filled under FILLED_WITH, then retention shortened to 30 days: maintain a week later drops
    # every week that ended before its horizon.
    with scratch(args.pg_admin_url, partition=True) as conn:
        fill(conn, args.rows)
        later = now + timedelta(days=7)
        done: list[object] = []
        drop_s, drop_wal, drop_writer = while_writing(conn, lambda: done.append(maintain(conn, RETENTION, now=later)))
        # The baseline deletes exactly what went: rows before the oldest partition kept.
        horizon = partitions.range_partitions(conn, "prompts")[0].lower
        assert horizon is not None
        left = conn.execute("SELECT count(*) FROM prompts WHERE prompt_id LIKE 'old-%%'").fetchone()
        assert left is not None
        dropped_rows = args.rows - int(left[0])
    with scratch(args.pg_admin_url, partition=False) as conn:
        fill(conn, args.rows)
        conn.execute("CREATE INDEX prompts_time ON prompts (occurred_at)")  # what a bounded delete walks
        deleted: list[int] = []
        delete_s, delete_wal, delete_writer = while_writing(
            conn, lambda: deleted.append(delete_in_batches(conn, horizon))
        )
        time.sleep(1)  # the statistics collector's report
        row = conn.execute("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'prompts'").fetchone()
        dead = int(row[0]) if row else 0
    print(
        f"drop by partition (maintain, every table): {drop_s:.2f} s, WAL {drop_wal / 1e6:.1f} MB"
        f" for {dropped_rows} rows; writer: {drop_writer.figures()}"
    )
    print(
        f"baseline, bounded deletes: {delete_s:.2f} s, WAL {delete_wal / 1e6:.1f} MB for {deleted[0]} rows,"
        f" {dead} dead rows left for VACUUM; writer: {delete_writer.figures()}"
    )
    print(f"drop / delete: time {drop_s / delete_s:.3f}, WAL {drop_wal / max(1, delete_wal):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
