"""Baseline: the workers' Postgres writer alone, on the same records (no HTTP, no queue).

Run as `python -m bench.writer ...` by `bench.run` (a process of its own, so
fork is safe): N processes (as many as workers), each with its own connection
made by `workers.db.connect`, call `workers.jobs.write_batch(conn, batch)` on
`QueuedBatch` objects decoded beforehand exactly as a worker would receive them
(the api's `validate_push` + `BATCH_ENCODER`, then `BATCH_DECODER`). The fresh
pushes are the same ones the e2e phase sends (same templates, tokens and
workspaces, repeated records included); repeated pushes are left out, since the
api answers those itself and workers never see them.

Prints one JSON object: records/s over the timed window, CPU of the writer
processes and of the Postgres cluster.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import sys
import time
from datetime import UTC, datetime
from typing import Any

import msgspec

from bench import procstat
from bench.gen import TOKEN, WORKSPACES, Template, make_templates, token
from schema.batches import QueuedBatch, decode_batch, encode_batch, queued_batch
from schema.validation import validate_push

WARMUP_BATCHES = 8  # psycopg prepares a statement after 5 executions
CALIBRATION_BATCHES = 4


class _Batches:
    """Fresh pushes as a worker receives them, built per template once, then per push by token.

    The api's path (validate_push, queued_batch, encode_batch) runs once per
    template with the TOKEN placeholder; a push is then `token.join(parts)` of
    that payload (the token has the placeholder's length), decoded with the
    worker's decode_batch.
    """

    def __init__(self, templates: list[Template], workspaces: list[str]) -> None:
        self.templates = templates
        self.parts: list[list[bytes]] = []
        now = datetime.now(UTC)
        for t in templates:
            validated = validate_push(t.body(TOKEN))
            assert not validated.rejected, validated.errors[:3]
            batch = queued_batch(
                validated,
                workspace_id=workspaces[t.index % len(workspaces)],
                push_id=f"push-{TOKEN.decode()}",
                received_at=now,
            )
            self.parts.append(encode_batch(batch).split(TOKEN))

    def get(self, phase: int, n: int) -> QueuedBatch:
        """Fresh push n of a phase (the same ids, workspace and records as PushStream.fresh_push(n))."""
        return decode_batch(token(phase, n).join(self.parts[n % len(self.parts)]))


def _child(
    index: int,
    args: argparse.Namespace,
    workspaces: list[str],
    go: Any,
    out: Any,
) -> None:
    from workers import db
    from workers.jobs import write_batch

    if len(workspaces) != WORKSPACES:
        raise SystemExit(f"expected {WORKSPACES} workspaces")
    source = _Batches(make_templates(args.size, seed=args.seed), workspaces)
    procs = args.procs
    warm_phase = (args.phase + 128) & 0xFF
    conn = db.connect(args.database_url)
    # Warm up (psycopg prepares statements after 5 executions), then calibrate the pool's size.
    for n in range(index, WARMUP_BATCHES * procs, procs):
        write_batch(conn, source.get(warm_phase, n))
    t = time.perf_counter()
    calib = 0
    for n in range(WARMUP_BATCHES * procs + index, (WARMUP_BATCHES + CALIBRATION_BATCHES) * procs, procs):
        write_batch(conn, source.get(warm_phase, n))
        calib += 1
    per_batch = (time.perf_counter() - t) / max(1, calib)
    # Enough for the phase at 3x the calibrated pace (the others were warming up meanwhile).
    wanted = int(3 * args.duration / max(per_batch, 1e-4)) + 16
    mine = [source.get(args.phase, n) for n in range(index, min(wanted, args.max_batches_per_proc) * procs, procs)]
    out.put({"ready": index})
    go.wait()
    start = time.perf_counter()
    cpu0 = time.process_time()
    deadline = start + args.duration
    records = batches = 0
    for b in mine:
        summary = write_batch(conn, b)
        batches += 1
        records += sum(summary["accepted"].values())
        if time.perf_counter() >= deadline:
            break
    end = time.perf_counter()
    out.put(
        {
            "index": index,
            "batches": batches,
            "records": records,
            "start": start,
            "end": end,
            "exhausted": batches == len(mine),
            "cpu_s": time.process_time() - cpu0,
            "peak_rss_mb": procstat.peak_rss_mb(os.getpid()),
        }
    )
    conn.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--database-url", required=True)
    p.add_argument("--workspaces", required=True, help="comma-separated workspace ids")
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--procs", type=int, default=4)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--phase", type=int, default=200)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--postmaster-pid", type=int, default=0)
    p.add_argument("--max-records", type=int, default=1_200_000, help="caps the pre-decoded pool (memory)")
    args = p.parse_args(argv)
    workspaces = args.workspaces.split(",")
    args.max_batches_per_proc = max(16, args.max_records // args.size // args.procs)

    ctx = mp.get_context("fork")
    go = ctx.Event()
    out = ctx.Queue()
    procs = [ctx.Process(target=_child, args=(i, args, workspaces, go, out)) for i in range(args.procs)]
    for proc in procs:
        proc.start()
    probe = procstat.Probe(pids={f"writer{i}": proc.pid for i, proc in enumerate(procs)})  # type: ignore[misc]
    if args.postmaster_pid:
        probe.trees["postgres"] = args.postmaster_pid

    def collect(key: str, timeout: float) -> list[dict[str, Any]]:
        """One message per child; fail fast (exit 1) if a child dies first."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(got) < len(procs):
            try:
                msg = out.get(timeout=0.5)
            except queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead or time.monotonic() > deadline:
                    for p in procs:
                        p.kill()
                    why = f"writer process exited with {dead[0].exitcode}" if dead else f"no {key} in {timeout:g} s"
                    raise SystemExit(f"bench.writer: {why} (its traceback is above)") from None
                continue
            if key in msg:
                got.append(msg)
        return got

    collect("ready", timeout=600)
    before = probe.snapshot()
    go.set()
    results = collect("records", timeout=args.duration + 300)
    after = probe.snapshot()
    for proc in procs:
        proc.join()
    start = min(r["start"] for r in results)
    end = max(r["end"] for r in results)
    records = sum(r["records"] for r in results)
    seconds = end - start
    cpu = procstat.cpu_report(before, after, records, os.cpu_count() or 1)
    writers_cpu = sum(v for k, v in cpu["cpu_s"].items() if k.startswith("writer"))  # type: ignore[union-attr]
    report = {
        "procs": args.procs,
        "seconds": round(seconds, 3),
        "batches": sum(r["batches"] for r in results),
        "records": records,
        "records_per_s": round(records / seconds, 1),
        "pool_exhausted": any(r["exhausted"] for r in results),
        "us_per_record": {
            "writers": round(writers_cpu / records * 1e6, 2),
            "postgres": cpu["us_per_record"].get("postgres"),  # type: ignore[union-attr]
        },
        "machine_busy_pct": cpu["machine_busy_pct"],
        "foreign_pct": cpu["foreign_pct"],
        "peak_rss_mb": max((r["peak_rss_mb"] or 0) for r in results),
    }
    sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
