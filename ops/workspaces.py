"""`selftune-ingest workspace create|list|delete`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ops.context import CommandError, Group, Ops

if TYPE_CHECKING:
    from ops.erasure import Erasure


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


@workspace.command()
@click.argument("name")
@click.option("--dry-run", is_flag=True, help="Print what would be deleted, per table and place; change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Wait after revoking the keys, for every api to forget them (default: KEY_CACHE_TTL_S + 1).",
)
@click.option(
    "--settle",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Longest wait for a worker running one of its batches (default: JOB_TIMEOUT_S).",
)
@click.option("--batch-rows", type=click.IntRange(min=1), default=5_000, show_default=True, help="Rows per DELETE.")
@click.pass_obj
def delete(
    ops: Ops, name: str, dry_run: bool, yes: bool, grace: float | None, settle: float | None, batch_rows: int
) -> None:
    """Delete a workspace and all its data: records, quarantine, pushes, keys, queued and spooled batches.

    Its keys are revoked first (pushes are then refused with 401), its waiting batches dropped,
    then its rows deleted in batches of --batch-rows, each committed on its own. Only the spool
    of this host (SPOOL_PATH) is reached: on a deployment with several api hosts, check that the
    others' spools hold none of its batches (`status` on each). Given the id of a workspace
    deleted already, it sweeps what is left of it.
    """
    from ops import accounts, erasure

    conn, redis = ops.postgres(), ops.redis()
    try:
        workspace_id = accounts.find_workspace(conn, name)
    except accounts.NotFoundError:
        if not accounts.is_workspace_id(name):
            raise
        ops.warn(f"no workspace {name}: sweeping what is left of it")
        workspace_id = name
    found = erasure.survey(conn, redis, ops.settings, workspace_id)
    if dry_run:
        ops.emit({**found.as_dict(), "dry_run": True}, lambda: _erasure_text(found, "would delete"))
        return
    if not yes:
        click.echo(_erasure_text(found, "will delete"), err=True)
        question = f"Delete workspace {name} ({workspace_id}) and all its data? This cannot be undone"
        if not click.confirm(question, err=True):  # on stderr: under --json stdout stays one document
            raise CommandError("nothing deleted (not confirmed; --yes skips the question)", "not_confirmed")
    grace_s = ops.settings.key_cache_ttl_s + 1 if grace is None else grace
    settle_s = float(ops.settings.job_timeout_s) if settle is None else settle
    if not ops.json:
        click.echo(f"keys revoked; waiting {grace_s:g} s for every api to refuse them", err=True)
    done = erasure.erase(
        conn,
        redis,
        ops.settings,
        workspace_id,
        grace_s=grace_s,
        settle_s=settle_s,
        batch_rows=batch_rows,
        progress=None if ops.json else lambda table, n: click.echo(f"{table}: {n} rows deleted", err=True),
    )
    if done.still_running:
        ops.warn(
            f"{done.still_running} of its batches were still being written after {settle_s:g} s (--settle):"
            f" run `selftune-ingest workspace delete {workspace_id} --yes` again once they are done"
        )
    ops.emit({**done.as_dict(), "dry_run": False}, lambda: _erasure_text(done, "deleted"))


def _erasure_text(found: Erasure, verb: str) -> str:
    """What a delete found or did, one line per table and place."""
    lines = [f"{verb} from workspace {found.workspace_id}:"]
    lines += [f"  {table:<22}{n:>10} rows" for table, n in found.rows.items()]
    spooled = "no spool on this host" if found.spooled_batches is None else f"{found.spooled_batches:>10}"
    lines += [
        f"  {'queued batches':<22}{found.queued_batches:>10}",
        f"  {'running batches':<22}{found.running_batches:>10}  (waited for)",
        f"  {'spooled batches':<22}{spooled}",
        f"  {'redis keys':<22}{found.redis_keys:>10}",
        f"  {'key mirror entries':<22}{found.mirror_entries:>10}",
    ]
    return "\n".join(lines)
