"""What landed in Postgres during the e2e phases: pushes and records processed, and the lag to commit."""

from __future__ import annotations

import sys
import time
from typing import Any

from bench import load
from bench.stack import Stack


def processed_between(stack: Stack, wall0: float, wall1: float) -> tuple[int, int]:
    """(pushes, records) whose batch transaction started in [wall0, wall1)."""
    row = stack.db.execute(
        "SELECT count(*), coalesce(sum(n), 0) FROM pushes p,"
        " LATERAL (SELECT sum(value::bigint) AS n FROM jsonb_each_text(p.accepted)) s"
        " WHERE p.status = 'processed' AND p.processed_at >= to_timestamp(%s) AND p.processed_at < to_timestamp(%s)",
        (wall0, wall1),
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def push_counts(stack: Stack) -> dict[str, int]:
    rows = stack.db.execute("SELECT status, count(*), sum(attempts - 1) FROM pushes GROUP BY status").fetchall()
    out = {str(s): int(n) for s, n, _ in rows}
    out["retries"] = sum(int(r or 0) for _, _, r in rows)
    q = stack.db.execute("SELECT count(*) FROM quarantine").fetchone()
    out["quarantined"] = int(q[0]) if q else 0
    return out


def wait_processed(stack: Stack, expected: int, timeout: float) -> bool:
    """Wait until `expected` pushes are processed; give up early if nothing moves for 20 s."""
    deadline = time.monotonic() + timeout
    last, moved = -1, time.monotonic()
    while True:
        counts = push_counts(stack)
        done = counts.get("processed", 0)
        if done >= expected:
            return True
        if done != last:
            last, moved = done, time.monotonic()
        if time.monotonic() > deadline or time.monotonic() - moved > 20:
            print(
                f"  ! only {done} of {expected} pushes processed ({counts}); see the workers' log"
                f" (--keep-logs):\n{stack.worker.tail(8) if stack.worker else ''}",
                file=sys.stderr,
            )
            return False
        time.sleep(0.2)


def lags(stack: Stack, samples: list[load.Sample], name: str = "") -> dict[str, Any]:
    """Lag from the client's 202 to the batch's commit (processed_at + write_ms), and server-side."""
    if not samples:
        return {}
    done = {s.push_id: s.wall_done for s in samples}
    rows = stack.db.execute(
        "SELECT push_id, extract(epoch FROM processed_at)::float8, coalesce(write_ms, 0),"
        " extract(epoch FROM received_at)::float8 FROM pushes WHERE status = 'processed' AND push_id = ANY(%s)",
        (list(done),),
    ).fetchall()
    if stack.keep_logs and name:
        t0 = min(done.values())
        with (stack.tmp / f"lags-{name}.csv").open("w") as f:
            f.write("done_s,until_txn_start_ms,write_ms,lag_ms\n")
            for pid, pa, wm, _ in sorted(rows, key=lambda r: done[r[0]]):
                w = done[pid]
                f.write(f"{w - t0:.3f},{(pa - w) * 1000:.1f},{wm:.1f},{(pa + wm / 1000 - w) * 1000:.1f}\n")
    client = sorted((pa + wm / 1000 - done[pid]) * 1000 for pid, pa, wm, _ in rows)
    server = sorted((pa + wm / 1000 - rec) * 1000 for _, pa, wm, rec in rows)

    def pct(v: list[float], q: float) -> float | None:
        return round(v[min(len(v) - 1, round(q * (len(v) - 1)))], 1) if v else None

    return {
        "pushes": len(done),
        "found": len(rows),
        "lag_ms": {"p50": pct(client, 0.5), "p90": pct(client, 0.9), "p99": pct(client, 0.99), "max": pct(client, 1)},
        "server_lag_ms": {"p50": pct(server, 0.5), "p99": pct(server, 0.99)},
    }
