"""`selftune-ingest quarantine list|replay`: records that failed validation, re-validated on demand."""

from __future__ import annotations

import click

from ops.context import Group, Ops, table

WORKSPACE = click.option("--workspace", metavar="NAME|ID", help="Only this workspace's records (name or id).")
PUSH = click.option("--push", metavar="PUSH_ID", help="Only this push's records.")


@click.group(cls=Group)
def quarantine() -> None:
    """Records that failed validation, kept verbatim."""


@quarantine.command("list")
@WORKSPACE
@PUSH
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="At most this many.")
@click.pass_obj
def list_(ops: Ops, workspace: str | None, push: str | None, limit: int) -> None:
    """List pending quarantined records, with their reasons."""
    from ops import actions

    found = actions.quarantine_rows(
        ops.reports_postgres_or_none() or ops.postgres(), ops.workspace_id(workspace), push, limit
    )
    rows = [
        {
            "id": qid,
            "workspace_id": ws,
            "push_id": push_id,
            "record": f"{rtype}[{index}]",
            "quarantined_at": at.isoformat(timespec="seconds"),
            "error": error,
        }
        for qid, ws, push_id, rtype, index, error, _raw, at in found
    ]
    ops.emit(rows, table(rows, ["id", "workspace_id", "push_id", "record", "error"]) if rows else "quarantine is empty")


@quarantine.command()
@WORKSPACE
@PUSH
@click.option("--dry-run", is_flag=True, help="Count what would pass, write nothing.")
@click.pass_obj
def replay(ops: Ops, workspace: str | None, push: str | None, dry_run: bool) -> None:
    """Re-validate quarantined records against the current schema; write those that now pass."""
    from ops import actions

    conn = ops.postgres()
    result = actions.replay_quarantine(
        conn, ops.workspace_id(workspace), push, dry_run=dry_run, limits=ops.settings.record_limits
    )
    verb = "would be written" if dry_run else "written"
    ops.emit(
        {"dry_run": dry_run, "written": result.written, "still_invalid": result.still_invalid},
        f"{result.written} record(s) {verb}; {result.still_invalid} still invalid (kept, with their new reason)",
    )
