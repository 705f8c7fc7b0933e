"""`selftune-ingest failed list` and `replay`: batches in RQ's failed registry, requeued on demand.

A replay is idempotent: a batch whose push had in fact committed is a no-op in the worker.
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import TYPE_CHECKING

import click

from ops.context import Command, CommandError, Group, Ops, table

if TYPE_CHECKING:
    from ops.actions import FailedBatch

PROGRESS_FROM = 20  # batches: a progress bar on stderr for a replay at least this long


def _time(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    """An ISO 8601 time, or a relative one (30m, 2h, 7d ago); anything else is a usage error."""
    if value is None:
        return None
    from ops.actions import parse_time

    try:
        return parse_time(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


WORKSPACE = click.option("--workspace", metavar="NAME|ID", help="Only this workspace's batches (name or id).")


def _select(
    ops: Ops,
    push_ids: tuple[str, ...] = (),
    workspace: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[FailedBatch]:
    from ops import actions

    return actions.failed_batches(
        ops.redis(), ops.settings, push_ids=push_ids, workspace=ops.workspace_id(workspace), since=since, until=until
    )


@click.group(cls=Group)
def failed() -> None:
    """Batches in the failed registry (their retries used up)."""


@failed.command("list")
@WORKSPACE
@click.option("--since", metavar="TIME", callback=_time, help="Failed at or after.")
@click.pass_obj
def list_(ops: Ops, workspace: str | None, since: datetime | None) -> None:
    """List failed batches: push id, workspace, when, attempts, error."""
    rows = [b.as_dict() for b in _select(ops, workspace=workspace, since=since)]
    columns = ["push_id", "workspace_id", "failed_at", "attempts", "error"]
    ops.emit(rows, table(rows, columns) if rows else "no failed batches")


def _progress(done: int, total: int) -> None:
    if total < PROGRESS_FROM:
        return
    width = 30
    filled = width * done // total
    sys.stderr.write(f"\rreplaying [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


@click.command(cls=Command)
@click.argument("push_ids", nargs=-1, metavar="[PUSH_ID]...")
@WORKSPACE
@click.option("--since", metavar="TIME", callback=_time, help="Failed at or after.")
@click.option("--until", metavar="TIME", callback=_time, help="Failed at or before.")
@click.option("--all", "all_", is_flag=True, help="Every failed batch.")
@click.option("--dry-run", is_flag=True, help="Show what would be replayed, move nothing.")
@click.pass_obj
def replay(
    ops: Ops,
    push_ids: tuple[str, ...],
    workspace: str | None,
    since: datetime | None,
    until: datetime | None,
    all_: bool,
    dry_run: bool,
) -> None:
    """Requeue failed batches (idempotent).

    Those of the PUSH_IDs, or chosen by --workspace, --since/--until, or --all. A push id not in the failed registry is an error (exit 1) and nothing is replayed.
    """
    from ops import actions

    if not (push_ids or workspace or since or until or all_):
        raise click.UsageError("name push ids, or use --workspace, --since/--until or --all")
    batches = _select(ops, push_ids, workspace, since, until)
    missing = sorted(set(push_ids) - {b.push_id for b in batches})
    if missing:
        raise CommandError(
            f"not in the failed registry{' with these filters' if workspace or since or until else ''}:"
            f" {', '.join(missing)} (see `selftune-ingest failed list` and `push show`)",
            "not_found",
        )
    statuses = actions.push_statuses(ops.reports_postgres_or_none(), batches)
    rows = []
    for b in batches:
        row = b.as_dict()
        written = statuses.get((b.workspace_id, b.push_id)) == "processed"
        row["note"] = "already written: replay is a no-op" if written else "will be written"
        rows.append(row)
    if dry_run:
        shown = table(rows, ["push_id", "workspace_id", "failed_at", "note"]) if rows else "nothing to replay"
        ops.emit({"dry_run": True, "would_replay": rows}, f"{shown}\ndry run: {len(rows)} batch(es) would be replayed")
        return
    done = actions.replay(ops.redis(), ops.settings, batches, progress=None if ops.json else _progress)
    ops.emit(
        {"replayed": done, "batches": rows},
        f"replayed {done} batch(es); workers will write them (a batch already written is a no-op)",
    )
