"""Device-code enrollments as an operator decides them (RFC 8628; see api/device.py).

An operator approves a user code for a workspace, or denies it. Approval creates
nothing yet: the key is created when the CLI next polls, so a code approved but
never collected expires without leaving a key behind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import psycopg

from ops.accounts import AccountError, NotFoundError, find_workspace

_USER_CODE = re.compile(r"[A-Z]{8}")


class DeviceCodeError(AccountError):
    """A user code that cannot be approved or denied, with the reason."""


class UnknownUserCode(DeviceCodeError, NotFoundError):
    """No enrollment has this user code."""


@dataclass(frozen=True)
class PendingCode:
    user_code: str
    client_id: str
    scope: str
    created_at: datetime
    expires_at: datetime


def normalize_user_code(text: str) -> str:
    """XXXX-XXXX from what a person typed: any case, with or without the dash or spaces."""
    compact = re.sub(r"[\s-]", "", text).upper()
    if not _USER_CODE.fullmatch(compact):
        raise DeviceCodeError(f"{text!r} is not a user code: it reads XXXX-XXXX (8 letters)")
    return f"{compact[:4]}-{compact[4:]}"


def _why_not(conn: psycopg.Connection, user_code: str) -> DeviceCodeError:
    """Why a code is not waiting for a decision."""
    row = conn.execute(
        "SELECT status, expires_at <= now() FROM device_codes WHERE user_code = %s", (user_code,)
    ).fetchone()
    if row is None:
        return UnknownUserCode(f"no enrollment with user code {user_code}")
    status, expired = row
    if status == "issued":
        return DeviceCodeError(f"{user_code} was approved and its key already collected")
    if expired:
        return DeviceCodeError(f"{user_code} expired: the CLI must ask for a new code")
    return DeviceCodeError(f"{user_code} is already {status}")


def approve(conn: psycopg.Connection, user_code: str, workspace: str) -> str:
    """Approve a pending code for a workspace (name or id); return the workspace id."""
    code = normalize_user_code(user_code)
    workspace_id = find_workspace(conn, workspace)
    row = conn.execute(
        "UPDATE device_codes SET status = 'approved', workspace_id = %s, decided_at = now()"
        " WHERE user_code = %s AND status = 'pending' AND expires_at > now() RETURNING user_code",
        (workspace_id, code),
    ).fetchone()
    if row is None:
        raise _why_not(conn, code)
    return workspace_id


def deny(conn: psycopg.Connection, user_code: str) -> None:
    """Deny a code that is pending, or approved but not yet collected."""
    code = normalize_user_code(user_code)
    row = conn.execute(
        "UPDATE device_codes SET status = 'denied', decided_at = now()"
        " WHERE user_code = %s AND status IN ('pending', 'approved') AND expires_at > now() RETURNING user_code",
        (code,),
    ).fetchone()
    if row is None:
        raise _why_not(conn, code)


def list_pending(conn: psycopg.Connection) -> list[PendingCode]:
    """Codes waiting for a decision, oldest first."""
    rows = conn.execute(
        "SELECT user_code, client_id, scope, created_at, expires_at FROM device_codes"
        " WHERE status = 'pending' AND expires_at > now() ORDER BY created_at"
    )
    return [PendingCode(*row) for row in rows]
