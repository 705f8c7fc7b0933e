"""`selftune-ingest push show`: everything known of one push id, in Postgres and Redis."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click

from ops.context import CommandError, Group, Ops

_FIELDS = [
    ("status", "status"),
    ("received_at", "received"),
    ("pushed_at", "pushed (client)"),
    ("cli_version", "cli version"),
    ("accepted", "written"),
    ("rejected", "quarantined"),
    ("attempts", "attempts"),
    ("started_at", "started"),
    ("processed_at", "processed"),
    ("write_ms", "write time"),
    ("error", "error"),
]
_FAILED_JOB = [("job_id", "job id"), ("failed_at", "failed at"), ("attempts", "attempts"), ("error", "error")]


def _value(key: str, value: Any) -> str:
    """One field as a person reads it: times to the second, counts by type, milliseconds with their unit."""
    if value is None or value == {}:
        return "-"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, dict):
        return ", ".join(f"{n} {kind}" for kind, n in value.items())
    if key == "write_ms":
        return f"{value:.1f} ms"
    return str(value)


def render(entry: dict[str, Any]) -> str:
    """One push (of one workspace) as labelled lines."""
    lines = [f"push {entry['push_id']} in workspace {entry['workspace_id']}"]
    lines += [f"  {label:<16} {_value(key, entry[key])}" for key, label in _FIELDS if key in entry]
    job = entry.get("failed_job")
    if job:
        lines.append("  in the failed registry (replay it with `selftune-ingest replay PUSH_ID`):")
        lines += [f"    {label:<14} {_value(key, job.get(key))}" for key, label in _FAILED_JOB]
    return "\n".join(lines)


@click.group(cls=Group)
def push() -> None:
    """One push."""


@push.command()
@click.argument("push_id")
@click.option("--workspace", metavar="NAME|ID", help="The push's workspace (name or id), if the id is in several.")
@click.pass_obj
def show(ops: Ops, push_id: str, workspace: str | None) -> None:
    """A push's status, record counts, timings and error; a push id nobody knows is an error (exit 1)."""
    from ops import actions

    conn = ops.postgres()
    found = actions.show_push(ops.redis(), conn, ops.settings, push_id, ops.workspace_id(workspace))
    if not found:
        where = f" in workspace {workspace}" if workspace else ""
        raise CommandError(f"no push {push_id!r} known{where}", "not_found")
    ops.emit(found, "\n\n".join(render(entry) for entry in found))
