"""`selftune-ingest migrate`: apply pending migrations (idempotent, safe to run concurrently)."""

from __future__ import annotations

import click

from ops.context import Command, Ops


@click.command(cls=Command)
@click.pass_obj
def migrate(ops: Ops) -> None:
    """Apply pending database migrations."""
    from store.migrate import migrate as apply

    applied = apply(ops.postgres(), ops.settings.retention)
    ops.emit({"applied": applied}, f"applied {', '.join(applied)}" if applied else "database is up to date")
