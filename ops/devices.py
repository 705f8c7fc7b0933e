"""`selftune-ingest device ...`: approve, deny and list device-code enrollments."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

import msgspec

from schema.settings import Settings
from workers import db, device


def cmd_approve(args: argparse.Namespace, settings: Settings) -> int:
    with db.connect(settings.database_url) as conn:
        workspace_id = device.approve(conn, args.user_code, args.workspace)
    code = device.normalize_user_code(args.user_code)
    if args.json:
        print(msgspec.json.encode({"user_code": code, "status": "approved", "workspace_id": workspace_id}).decode())
    else:
        print(f"approved {code} for workspace {workspace_id}: the CLI receives its key at its next poll")
    return 0


def cmd_deny(args: argparse.Namespace, settings: Settings) -> int:
    with db.connect(settings.database_url) as conn:
        device.deny(conn, args.user_code)
    code = device.normalize_user_code(args.user_code)
    if args.json:
        print(msgspec.json.encode({"user_code": code, "status": "denied"}).decode())
    else:
        print(f"denied {code}")
    return 0


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    with db.connect(settings.database_url) as conn:
        pending = device.list_pending(conn)
    if args.json:
        print(msgspec.json.encode(pending).decode())
        return 0
    now = datetime.now(UTC)
    print("USER CODE\tCLIENT\tSCOPE\tREQUESTED\tEXPIRES IN")
    for p in pending:
        left = max(0, int((p.expires_at - now).total_seconds()))
        print(f"{p.user_code}\t{p.client_id}\t{p.scope or '-'}\t{p.created_at:%Y-%m-%d %H:%M:%S}\t{left} s")
    return 0


def register(sub: Any) -> None:
    """Add the `device` subcommands to the selftune-ingest parser."""
    parser = sub.add_parser("device", help="approve or deny CLI enrollments (selftune init --alpha)")
    actions = parser.add_subparsers(dest="action", required=True)
    p = actions.add_parser("approve", help="approve a user code: the CLI then receives a key for the workspace")
    p.add_argument("user_code", help="the code the CLI shows, XXXX-XXXX")
    p.add_argument("--workspace", required=True, help="workspace name or id the key will belong to")
    p.set_defaults(func=cmd_approve)
    p = actions.add_parser("deny", help="deny a user code")
    p.add_argument("user_code")
    p.set_defaults(func=cmd_deny)
    actions.add_parser("list", help="list codes waiting for a decision").set_defaults(func=cmd_list)
