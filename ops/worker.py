"""`selftune-ingest worker`: N worker processes (RQ SimpleWorker, no fork per job)."""

from __future__ import annotations

import click

from ops.context import Command


@click.command(cls=Command)
@click.option("-n", "n", type=click.IntRange(min=1), default=1, show_default=True, help="Worker processes.")
@click.option("--burst", is_flag=True, help="Stop when the queue is empty.")
def worker(n: int, burst: bool) -> int:
    """Run worker processes, supervised (a dead one is replaced)."""
    from workers.worker import run_workers

    return run_workers(n, burst=burst)
