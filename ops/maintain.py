"""`selftune-ingest maintain [--every S] [--dry-run]`: retention (store/retention.py), from cron or as a process.

Why a command and not RQ's scheduler or pg_partman's background worker: the work
is DDL and bounded DELETEs on Postgres, not a batch, and it should neither hold a
writer's slot nor need an extension on the database server. It is one command
that cron, a Kubernetes CronJob, or `--every` in the Procfile can run; an
advisory lock keeps two runs from overlapping wherever they start.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import click

from ops.context import Command, Ops

log = logging.getLogger(__name__)


def render(tables: list[dict[str, Any]], dry_run: bool) -> str:
    """One line a table: retention, partitions, and what this run dropped and deleted."""
    lines = [f"{'table':<20} {'kept':>8} {'partitions':>10} {'ahead':>5} {'default':>7}  {'dropped / deleted'}"]
    for t in tables:
        kept = f"{t['retention_days']} d" if t["retention_days"] else "forever"
        parts = str(t["partitions"]) if t["partitioned"] else "-"
        ahead = str(t["partitions_ahead"]) if t["partitioned"] else "-"
        default = str(t["default_rows"]) if t["partitioned"] else "-"
        verb = "would drop" if dry_run else "dropped"
        done = f"{verb} {len(t['dropped_partitions'])} partitions, {t['deleted_rows']} rows"
        lines.append(f"{t['table']:<20} {kept:>8} {parts:>10} {ahead:>5} {default:>7}  {done}")
    return "\n".join(lines)


def render_kept(tables: list[dict[str, Any]]) -> str:
    """For `status`: what each table keeps, as the last maintain found it."""
    lines = [f"{'retention':<20} {'kept':>8} {'since':>20} {'partitions':>10} {'ahead':>5}  last maintain"]
    for t in tables:
        kept = f"{t['retention_days']} d" if t["retention_days"] else "forever"
        since = (t["kept_since"] or "-")[:19]
        parts = str(t["partitions"]) if t["partitioned"] else "-"
        ahead = str(t["partitions_ahead"]) if t["partitioned"] else "-"
        lines.append(f"{t['table']:<20} {kept:>8} {since:>20} {parts:>10} {ahead:>5}  {t['ran_at'][:19]}")
    return "\n".join(lines)


def publish(ops: Ops, tables: list[dict[str, Any]]) -> None:
    """The run's figures to Redis, where `status` and every api's /metrics read them (queueing/stats.py)."""
    from redis.exceptions import RedisError

    from queueing import stats

    try:
        with ops.redis().pipeline(transaction=False) as pipe:
            for t in tables:
                pipe.hset(stats.RETENTION, t["table"], json.dumps(t))
                pipe.hincrby(stats.RETENTION_DELETED, t["table"], t["deleted_rows"])
                pipe.hincrby(stats.RETENTION_DROPPED, t["table"], len(t["dropped_partitions"]))
            pipe.execute()
    except RedisError as exc:  # the retention itself is done; only its figures are late
        log.warning("retention figures not published: %s: %s", type(exc).__name__, exc)


@click.command(cls=Command)
@click.option("--dry-run", is_flag=True, help="Say what would be dropped and deleted; change nothing.")
@click.option(
    "--every",
    type=click.FloatRange(min=1.0),
    default=None,
    metavar="SECONDS",
    help="Run again every SECONDS until interrupted (instead of cron).",
)
@click.pass_obj
def maintain(ops: Ops, dry_run: bool, every: float | None) -> None:
    """Apply retention: make upcoming partitions, drop those past RETENTION_DAYS, delete old rows in small batches.

    Safe to run from several hosts: one run at a time holds the lock, another returns at once.
    """
    import psycopg

    from store.retention import maintain as run

    while True:
        started = time.monotonic()
        if every is None:
            once(ops, run(ops.postgres(), ops.settings.retention, dry_run=dry_run), dry_run)
            return
        # As a process (--every), a Postgres restart or a failed run is logged and the next
        # run tries again: exiting would take the Procfile's other processes down with it.
        conn = ops.postgres_or_none()
        if conn is None:
            log.warning("maintain: Postgres is unreachable; trying again in %.0f s", every)
        else:
            try:
                once(ops, run(conn, ops.settings.retention, dry_run=dry_run), dry_run)
            except psycopg.Error as exc:
                log.warning("maintain: this run failed, the next one tries again: %s: %s", type(exc).__name__, exc)
        try:
            time.sleep(max(0.0, every - (time.monotonic() - started)))
        except KeyboardInterrupt:
            return


def once(ops: Ops, tables: list[Any] | None, dry_run: bool) -> None:
    """Report one run (and publish its figures unless a dry run); None: another maintain held the lock."""
    if tables is None:
        ops.emit({"skipped": "another maintain is running"}, "another maintain is running: nothing done")
        return
    figures = [t.as_dict() for t in tables]
    if not dry_run:
        publish(ops, figures)
    ops.emit({"dry_run": dry_run, "tables": figures}, render(figures, dry_run))
