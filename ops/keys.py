"""`selftune-ingest key create|list|revoke`: API keys, printed once, stored as their SHA-256."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ops.context import Group, Ops

if TYPE_CHECKING:
    import psycopg


@click.group(cls=Group)
def key() -> None:
    """API keys."""


def _mirror(ops: Ops, conn: psycopg.Connection, key_id: str) -> None:
    """Tell the api's key mirror (Redis) about a key change; a warning if Redis cannot be reached."""
    from ops import accounts

    problem = accounts.mirror_key(conn, ops.redis(), key_id)
    if problem:
        ops.warn(
            f"the api's key mirror was not updated ({problem}); the api copies every key within"
            f" {ops.settings.key_mirror_refresh_s:g} s (KEY_MIRROR_REFRESH_S), and until then knows this change"
            " only while Postgres is up"
        )


@key.command()
@click.argument("workspace")
@click.option("--test", is_flag=True, help="An st_test_ key instead of st_live_.")
@click.pass_obj
def create(ops: Ops, workspace: str, test: bool) -> None:
    """Create a key for WORKSPACE (name or id); it is printed this once."""
    from ops import accounts

    conn = ops.postgres()
    key_id, api_key = accounts.create_key(conn, workspace, live=not test)
    _mirror(ops, conn, key_id)
    ops.emit({"key_id": key_id, "api_key": api_key}, f"{key_id}\t{api_key}")
    if not ops.json:
        click.echo("This is the only time the key is shown: store it now.", err=True)


@key.command("list")
@click.option("--workspace", metavar="NAME|ID", help="Only this workspace's keys.")
@click.pass_obj
def list_(ops: Ops, workspace: str | None) -> None:
    """List keys (their prefixes, never the keys)."""
    from ops import accounts

    keys = accounts.list_keys(ops.postgres(), workspace)

    def text() -> str:
        lines = ["KEY ID\tWORKSPACE\tPREFIX\tCREATED\tREVOKED"]
        for k in keys:
            revoked = f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "-"
            lines.append(f"{k.key_id}\t{k.workspace_name}\t{k.key_prefix}...\t{k.created_at:%Y-%m-%d %H:%M}\t{revoked}")
        return "\n".join(lines)

    ops.emit(keys, text)


@key.command()
@click.argument("key_id")
@click.pass_obj
def revoke(ops: Ops, key_id: str) -> None:
    """Revoke the key KEY_ID (see `key list`)."""
    from ops import accounts

    conn = ops.postgres()
    accounts.revoke_key(conn, key_id)
    _mirror(ops, conn, key_id)
    within = ops.settings.key_cache_ttl_s
    ops.emit(
        {"key_id": key_id, "revoked": True, "effective_within_s": within},
        f"revoked {key_id} (the api stops accepting it within {within:g} s)",
    )
