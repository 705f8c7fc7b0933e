"""`selftune-ingest workspace create|list`."""

from __future__ import annotations

import click

from ops.context import Group, Ops


@click.group(cls=Group)
def workspace() -> None:
    """Workspaces."""


@workspace.command()
@click.argument("name")
@click.pass_obj
def create(ops: Ops, name: str) -> None:
    """Create a workspace; print its id."""
    from ops import accounts

    workspace_id = accounts.create_workspace(ops.postgres(), name)
    ops.emit({"workspace_id": workspace_id, "name": name}, f"{workspace_id}\t{name}")


@workspace.command("list")
@click.pass_obj
def list_(ops: Ops) -> None:
    """List workspaces (id, name, created), tab-separated."""
    from ops import accounts

    rows = accounts.list_workspaces(ops.postgres())
    ops.emit(
        [{"workspace_id": w, "name": n, "created_at": c} for w, n, c in rows],
        lambda: "\n".join(f"{w}\t{n}\t{c:%Y-%m-%d %H:%M}" for w, n, c in rows),
    )
