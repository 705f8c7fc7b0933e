"""`selftune-ingest`: the ops command line (migrate, workspaces, keys, workers)."""

from __future__ import annotations

import argparse
import sys

import msgspec
import psycopg
from redis import Redis

from schema.migrate import migrate
from schema.settings import Settings, SettingsError
from workers import accounts, db, device_cli, ops_cli


def _conn(settings: Settings):  # type: ignore[no-untyped-def]
    return db.connect(settings.database_url)


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    with _conn(settings) as conn:
        applied = migrate(conn)
    print(f"applied {', '.join(applied)}" if applied else "database is up to date")
    return 0


def cmd_workspace_create(args: argparse.Namespace, settings: Settings) -> int:
    with _conn(settings) as conn:
        workspace_id = accounts.create_workspace(conn, args.name)
    _out(args, {"workspace_id": workspace_id, "name": args.name}, f"{workspace_id}\t{args.name}")
    return 0


def cmd_workspace_list(args: argparse.Namespace, settings: Settings) -> int:
    with _conn(settings) as conn:
        rows = accounts.list_workspaces(conn)
    if args.json:
        print(msgspec.json.encode([{"workspace_id": w, "name": n, "created_at": c} for w, n, c in rows]).decode())
    else:
        for w, n, c in rows:
            print(f"{w}\t{n}\t{c:%Y-%m-%d %H:%M}")
    return 0


def _mirror(conn: psycopg.Connection, settings: Settings, key_id: str) -> None:
    """Tell the api's key mirror (Redis) about a key change; a warning if Redis cannot be reached."""
    redis = Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
    try:
        problem = accounts.mirror_key(conn, redis, key_id)
    finally:
        redis.close()
    if problem:
        print(
            f"warning: the api's key mirror was not updated ({problem}); the api copies every key within"
            f" {settings.key_mirror_refresh_s:g} s (KEY_MIRROR_REFRESH_S), and until then knows this change"
            " only while Postgres is up",
            file=sys.stderr,
        )


def cmd_key_create(args: argparse.Namespace, settings: Settings) -> int:
    with _conn(settings) as conn:
        key_id, key = accounts.create_key(conn, args.workspace, live=not args.test)
        _mirror(conn, settings, key_id)
    _out(args, {"key_id": key_id, "api_key": key}, f"{key_id}\t{key}")
    if not args.json:
        print("This is the only time the key is shown: store it now.", file=sys.stderr)
    return 0


def cmd_key_list(args: argparse.Namespace, settings: Settings) -> int:
    with _conn(settings) as conn:
        keys = accounts.list_keys(conn, args.workspace)
    if args.json:
        print(msgspec.json.encode(keys).decode())
    else:
        print("KEY ID\tWORKSPACE\tPREFIX\tCREATED\tREVOKED")
        for k in keys:
            revoked = f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "-"
            print(f"{k.key_id}\t{k.workspace_name}\t{k.key_prefix}...\t{k.created_at:%Y-%m-%d %H:%M}\t{revoked}")
    return 0


def cmd_key_revoke(args: argparse.Namespace, settings: Settings) -> int:
    with _conn(settings) as conn:
        accounts.revoke_key(conn, args.key_id)
        _mirror(conn, settings, args.key_id)
    print(f"revoked {args.key_id} (the api stops accepting it within {settings.key_cache_ttl_s:g} s)")
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from workers.worker import run_workers

    return run_workers(args.n, burst=args.burst)


def _out(args: argparse.Namespace, obj: dict[str, str], text: str) -> None:
    print(msgspec.json.encode(obj).decode() if args.json else text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selftune-ingest", description="Operate selftune ingest.")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="apply pending database migrations").set_defaults(func=cmd_migrate)

    ws = sub.add_parser("workspace", help="manage workspaces").add_subparsers(dest="action", required=True)
    p = ws.add_parser("create", help="create a workspace")
    p.add_argument("name")
    p.set_defaults(func=cmd_workspace_create)
    ws.add_parser("list", help="list workspaces").set_defaults(func=cmd_workspace_list)

    key = sub.add_parser("key", help="manage API keys").add_subparsers(dest="action", required=True)
    p = key.add_parser("create", help="create a key for a workspace (printed once)")
    p.add_argument("workspace", help="workspace name or id")
    p.add_argument("--test", action="store_true", help="an st_test_ key instead of st_live_")
    p.set_defaults(func=cmd_key_create)
    p = key.add_parser("list", help="list keys (never the keys themselves)")
    p.add_argument("--workspace")
    p.set_defaults(func=cmd_key_list)
    p = key.add_parser("revoke", help="revoke a key")
    p.add_argument("key_id")
    p.set_defaults(func=cmd_key_revoke)

    p = sub.add_parser("worker", help="run worker processes (no fork per job)")
    p.add_argument("-n", type=int, default=1, help="number of worker processes (default 1)")
    p.add_argument("--burst", action="store_true", help="stop when the queue is empty")
    p.set_defaults(func=cmd_worker)

    ops_cli.register(sub)
    device_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        return int(args.func(args, settings))
    except (SettingsError, accounts.AccountError, ValueError) as exc:
        print(f"selftune-ingest: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
