"""`selftune-ingest device approve|deny|list`: device-code enrollments (selftune init --alpha)."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from ops.context import Group, Ops


def _user_code(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """XXXX-XXXX from what was typed; a malformed code is a usage error."""
    from ops.enrollment import DeviceCodeError, normalize_user_code

    try:
        return normalize_user_code(value)
    except DeviceCodeError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group(cls=Group)
def device() -> None:
    """Approve or deny CLI enrollments (selftune init --alpha)."""


@device.command()
@click.argument("user_code", callback=_user_code)
@click.option("--workspace", required=True, metavar="NAME|ID", help="The workspace the key will belong to.")
@click.pass_obj
def approve(ops: Ops, user_code: str, workspace: str) -> None:
    """Approve USER_CODE (XXXX-XXXX, as the CLI shows it): the CLI then receives a key for the workspace."""
    from ops import enrollment

    workspace_id = enrollment.approve(ops.postgres(), user_code, workspace)
    ops.emit(
        {"user_code": user_code, "status": "approved", "workspace_id": workspace_id},
        f"approved {user_code} for workspace {workspace_id}: the CLI receives its key at its next poll",
    )


@device.command()
@click.argument("user_code", callback=_user_code)
@click.pass_obj
def deny(ops: Ops, user_code: str) -> None:
    """Deny USER_CODE."""
    from ops import enrollment

    enrollment.deny(ops.postgres(), user_code)
    ops.emit({"user_code": user_code, "status": "denied"}, f"denied {user_code}")


@device.command("list")
@click.pass_obj
def list_(ops: Ops) -> None:
    """List codes waiting for a decision."""
    from ops import enrollment

    pending = enrollment.list_pending(ops.postgres())

    def text() -> str:
        now = datetime.now(UTC)
        lines = ["USER CODE\tCLIENT\tSCOPE\tREQUESTED\tEXPIRES IN"]
        for p in pending:
            left = max(0, int((p.expires_at - now).total_seconds()))
            lines.append(f"{p.user_code}\t{p.client_id}\t{p.scope or '-'}\t{p.created_at:%Y-%m-%d %H:%M:%S}\t{left} s")
        return "\n".join(lines)

    ops.emit(pending, text)
