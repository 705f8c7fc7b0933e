"""`selftune-ingest status [--watch]`: queue depth, lag, failures, workers, rates, this host's spool."""

from __future__ import annotations

import time
from typing import Any

import click

from ops.context import Command, Ops

MIN_INTERVAL_S = 1.0  # --watch redraws at most once a second, whatever --interval says

_LINES = [
    ("queue_depth", "queued batches"),
    ("lag_seconds", "lag (oldest waiting, s)"),
    ("in_progress", "being written"),
    ("stalled", "stalled (worker died)"),
    ("retrying", "waiting for a retry"),
    ("failed", "failed (replayable)"),
    ("quarantined", "quarantined records"),
    ("workers_busy", "workers busy"),
    ("workers_idle", "workers idle"),
    ("workers_suspended", "workers suspended"),
    ("accepted_records_per_s", "accepted records/s (1 min)"),
    ("written_records_per_s", "written records/s (1 min)"),
    ("spooled_batches", "spooled batches (this host)"),
    ("spool_bytes", "spool bytes"),
    ("spool_oldest_seconds", "oldest spooled (s)"),
]


def render(values: dict[str, Any]) -> str:
    """The status as aligned lines; a figure Postgres was needed for reads 'postgres unreachable'.

    Then the busy shards, and retention as the last `maintain` left it (a line a table), or a hint to run it.
    """
    from ops.maintain import render_kept

    lines = [f"{label:<28} {'postgres unreachable' if values[key] is None else values[key]}" for key, label in _LINES]
    lines += shard_lines(values.get("shards", []))
    retention = values.get("retention") or []
    lines.append("")
    lines.append(render_kept(retention) if retention else "retention: `selftune-ingest maintain` has not run yet")
    return "\n".join(lines)


def shard_lines(shards: list[dict[str, Any]]) -> list[str]:
    """Each shard's queue that holds batches (QUEUE_SHARDS): one workspace's backlog shows as one busy shard."""
    busy = [s for s in shards if s["depth"]]
    if len(shards) <= 1 or not busy:
        return []
    return ["", "by shard (batches, lag s)"] + [f"  {s['queue']:<26} {s['depth']}, {s['lag_seconds']}" for s in busy]


@click.command(cls=Command)
@click.option("--watch", is_flag=True, help="Refresh in place until interrupted.")
@click.option(
    "--interval",
    type=click.FloatRange(min=MIN_INTERVAL_S, clamp=True),
    default=2.0,
    show_default=True,
    help=f"Seconds between refreshes with --watch (at least {MIN_INTERVAL_S:g}).",
)
@click.pass_obj
def status(ops: Ops, watch: bool, interval: float) -> None:
    """Queue depth, lag, failures, workers, rates.

    Also retrying and quarantined, accepted and written records/s, this host's spool. Needs Redis; without Postgres the quarantine count reads 'postgres unreachable'.
    With --watch --json, one JSON object per refresh.
    """
    from ops import actions

    try:
        while True:
            values = actions.status(ops.redis(), ops.reports_postgres_or_none(), ops.settings).as_dict()
            if watch and not ops.json:
                header = time.strftime("%H:%M:%S  selftune ingest\n\n")
                click.echo("\x1b[H\x1b[2J" + header + render(values))
            else:
                ops.emit(values, render(values))
            if not watch:
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        return  # the way out of --watch
