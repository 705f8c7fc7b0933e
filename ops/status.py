"""Ops subcommands of `selftune-ingest`: status, failed, replay, quarantine, push (SPEC 6).

Every command takes the global `--json` for scripts.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import msgspec
import psycopg
from redis import Redis

from schema.settings import Settings
from workers import db, ops


def _print_json(obj: Any) -> None:
    print(msgspec.json.encode(obj).decode())


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _postgres(settings: Settings) -> psycopg.Connection | None:
    try:
        return db.connect(settings.database_url)
    except psycopg.OperationalError:
        return None


# -- status ---------------------------------------------------------------------------------

_STATUS_LINES = [
    ("queue_depth", "queued batches"),
    ("lag_seconds", "lag (oldest queued, s)"),
    ("in_progress", "being written"),
    ("retrying", "waiting for a retry"),
    ("failed", "failed (replayable)"),
    ("quarantined", "quarantined records"),
    ("workers_busy", "workers busy"),
    ("workers_idle", "workers idle"),
    ("accepted_records_per_s", "accepted records/s (1 min)"),
    ("written_records_per_s", "written records/s (1 min)"),
    ("spooled_batches", "spooled batches (this host)"),
    ("spool_bytes", "spool bytes"),
    ("spool_oldest_seconds", "oldest spooled (s)"),
]


def render_status(values: dict[str, Any]) -> str:
    lines = []
    for key, label in _STATUS_LINES:
        value = values[key]
        lines.append(f"{label:<28} {'postgres unreachable' if value is None else value}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    redis = Redis.from_url(settings.redis_url)
    conn = _postgres(settings)
    try:
        while True:
            values = ops.status(redis, conn, settings).as_dict()
            if args.json:
                _print_json(values)
            else:
                text = render_status(values)
                if args.watch:
                    sys.stdout.write("\x1b[H\x1b[2J" + time.strftime("%H:%M:%S  selftune ingest\n\n") + text + "\n")
                    sys.stdout.flush()
                else:
                    print(text)
            if not args.watch:
                return 0
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
    finally:
        if conn is not None:
            conn.close()


# -- failed and replay ------------------------------------------------------------------------


def _select_failed(args: argparse.Namespace, settings: Settings, redis: Redis) -> list[ops.FailedBatch]:
    return ops.failed_batches(
        redis,
        settings,
        push_ids=getattr(args, "push_ids", None) or (),
        workspace=args.workspace,
        since=ops.parse_time(args.since) if args.since else None,
        until=ops.parse_time(args.until) if getattr(args, "until", None) else None,
    )


def cmd_failed_list(args: argparse.Namespace, settings: Settings) -> int:
    redis = Redis.from_url(settings.redis_url)
    batches = _select_failed(args, settings, redis)
    rows = [b.as_dict() for b in batches]
    if args.json:
        _print_json(rows)
    elif not rows:
        print("no failed batches")
    else:
        print(_table(rows, ["push_id", "workspace_id", "failed_at", "attempts", "error"]))
    return 0


def _progress(done: int, total: int) -> None:
    if total < 20:
        return
    width = 30
    filled = width * done // total
    sys.stderr.write(f"\rreplaying [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    if not (args.push_ids or args.workspace or args.since or args.until or args.all):
        print("selftune-ingest replay: name push ids, or use --workspace, --since/--until or --all", file=sys.stderr)
        return 2
    redis = Redis.from_url(settings.redis_url)
    batches = _select_failed(args, settings, redis)
    conn = _postgres(settings)
    try:
        statuses = ops.push_statuses(conn, batches)
    finally:
        if conn is not None:
            conn.close()
    rows = []
    for b in batches:
        row = b.as_dict()
        row["note"] = (
            "already written: replay is a no-op"
            if statuses.get((b.workspace_id, b.push_id)) == "processed"
            else "will be written"
        )
        rows.append(row)
    if args.dry_run:
        if args.json:
            _print_json({"dry_run": True, "would_replay": rows})
        else:
            print(_table(rows, ["push_id", "workspace_id", "failed_at", "note"]) if rows else "nothing to replay")
            print(f"dry run: {len(rows)} batch(es) would be replayed")
        return 0
    done = ops.replay(redis, settings, batches, progress=None if args.json else _progress)
    if args.json:
        _print_json({"replayed": done, "batches": rows})
    else:
        print(f"replayed {done} batch(es); workers will write them (a batch already written is a no-op)")
    return 0


# -- quarantine --------------------------------------------------------------------------------


def cmd_quarantine_list(args: argparse.Namespace, settings: Settings) -> int:
    with db.connect(settings.database_url) as conn:
        found = ops.quarantine_rows(conn, args.workspace, args.push, args.limit)
    rows = [
        {
            "id": qid,
            "workspace_id": ws,
            "push_id": push,
            "record": f"{rtype}[{index}]",
            "quarantined_at": at.isoformat(timespec="seconds"),
            "error": error,
        }
        for qid, ws, push, rtype, index, error, _raw, at in found
    ]
    if args.json:
        _print_json(rows)
    else:
        print(_table(rows, ["id", "workspace_id", "push_id", "record", "error"]) if rows else "quarantine is empty")
    return 0


def cmd_quarantine_replay(args: argparse.Namespace, settings: Settings) -> int:
    with db.connect(settings.database_url) as conn:
        result = ops.replay_quarantine(
            conn, args.workspace, args.push, dry_run=args.dry_run, limits=settings.record_limits
        )
    if args.json:
        _print_json({"dry_run": args.dry_run, "written": result.written, "still_invalid": result.still_invalid})
    else:
        verb = "would be written" if args.dry_run else "written"
        print(f"{result.written} record(s) {verb}; {result.still_invalid} still invalid (kept, with their new reason)")
    return 0


# -- one push ------------------------------------------------------------------------------------


def cmd_push_show(args: argparse.Namespace, settings: Settings) -> int:
    redis = Redis.from_url(settings.redis_url)
    with db.connect(settings.database_url) as conn:
        found = ops.show_push(redis, conn, settings, args.push_id, args.workspace)
    if args.json:
        _print_json(found)
        return 0 if found else 1
    if not found:
        print(f"no push {args.push_id!r} known", file=sys.stderr)
        return 1
    for entry in found:
        for key, value in entry.items():
            print(f"{key:<14} {value}")
        print()
    return 0


def register(sub: Any) -> None:
    """Add status, failed, replay, quarantine and push to the selftune-ingest parser."""
    p = sub.add_parser("status", help="queue depth, lag, failures, workers, rates")
    p.add_argument("--watch", action="store_true", help="refresh in place until interrupted")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes with --watch")
    p.set_defaults(func=cmd_status)

    failed = sub.add_parser("failed", help="batches in the failed registry").add_subparsers(
        dest="action", required=True
    )
    p = failed.add_parser("list", help="list failed batches")
    p.add_argument("--workspace")
    p.add_argument("--since", help="ISO time or 30m, 2h, 7d")
    p.set_defaults(func=cmd_failed_list)

    p = sub.add_parser("replay", help="requeue failed batches (idempotent)")
    p.add_argument("push_ids", nargs="*", metavar="PUSH_ID")
    p.add_argument("--workspace")
    p.add_argument("--since", help="failed at or after: ISO time or 30m, 2h, 7d")
    p.add_argument("--until", help="failed at or before")
    p.add_argument("--all", action="store_true", help="every failed batch")
    p.add_argument("--dry-run", action="store_true", help="show what would be replayed")
    p.set_defaults(func=cmd_replay)

    quarantine = sub.add_parser("quarantine", help="records that failed validation").add_subparsers(
        dest="action", required=True
    )
    p = quarantine.add_parser("list", help="list pending quarantined records")
    p.add_argument("--workspace")
    p.add_argument("--push")
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(func=cmd_quarantine_list)
    p = quarantine.add_parser("replay", help="re-validate and write records that now pass")
    p.add_argument("--workspace")
    p.add_argument("--push")
    p.add_argument("--dry-run", action="store_true")
    p.set_defaults(func=cmd_quarantine_replay)

    push = sub.add_parser("push", help="one push").add_subparsers(dest="action", required=True)
    p = push.add_parser("show", help="status, counts, timings and error of a push")
    p.add_argument("push_id")
    p.add_argument("--workspace")
    p.set_defaults(func=cmd_push_show)
