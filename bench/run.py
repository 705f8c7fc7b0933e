"""selftune ingest benchmark: `python -m bench.run` (see bench/README.md).

Starts its own stack on 127.0.0.1 (database `selftune_bench` on the dev
Postgres, a private redis-server, the api, a raw-Redis baseline endpoint,
`selftune-ingest worker -n N`), runs every phase for each batch size, prints
one table, writes bench/results/latest.json, and stops everything it started.

Phases, for each batch size (100 and 500 records per push):
  raw        the raw Redis push endpoint at full speed            (baseline)
  api-full   the api at full speed, workers stopped
  api-half   the api paced at half of api-full's rate
  writer     workers.jobs.write_batch alone, N processes            (baseline)
  e2e-sat    api + N workers, client held back by queue depth: the sustained drain rate
  e2e-half   api + N workers paced at half of e2e-sat: lag from 202 to commit
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop
from redis.asyncio import Redis as AsyncRedis

from bench import flame, load, procstat
from bench.gen import WORKSPACES, PushStream, Template, describe, make_templates
from bench.stack import BIN, QUEUE_KEY, REPO, Stack, code_digest

RESULTS = REPO / "bench" / "results"

TARGETS = {
    "e2e_vs_writer_100": 0.6,
    "e2e_vs_writer_500": 0.8,
    "api_vs_raw": 0.5,
    "api_half_p99_ms": 15.0,
    "lag_half_p99_ms": 1000.0,
    "api_rss_mb": 150.0,
    "worker_rss_mb": 200.0,
}


# A `selftune sync` opens a connection, sends its pending records in a few pushes
# and exits; the load's connections do the same, so uvicorn's processes share
# them as they would a fleet's. (Kept all phase long, the 64 connections opened
# at once may all be accepted by one process: bench/README.md.)
PUSHES_PER_CONNECTION = 8


@dataclass
class Config:
    sizes: list[int]
    workers: int
    api_procs: int
    connections: int
    warmup: float
    duration: float
    runs: int
    profile: bool
    seed: int
    quiet_wait: float = 0.0  # seconds to wait, before each phase, for the machine to calm down
    pushes_per_connection: int = 0  # 0: each connection is kept for the whole phase


def wait_quiet(cfg: Config, log: Any) -> None:
    """Before a phase: wait (at most cfg.quiet_wait s) until the machine is under 30 % busy for 1 s.

    Other users' test runs share these 2 cores; this trades run time for less noise.
    """
    if cfg.quiet_wait <= 0:
        return
    ncpu = os.cpu_count() or 1
    deadline = time.monotonic() + cfg.quiet_wait
    waited = 0.0
    while True:
        a = procstat.machine_cpu()["busy"]
        time.sleep(1.0)
        busy = 100 * (procstat.machine_cpu()["busy"] - a) / ncpu
        if busy < 30 or time.monotonic() >= deadline:
            break
        waited += 1.0
    if waited:
        log(f"waited {waited:.0f} s for the machine to calm down (now {busy:.0f} % busy)")


# -- one load phase -------------------------------------------------------------------------


async def _load_phase(
    stack: Stack,
    port: int,
    stream: PushStream,
    probe: procstat.Probe,
    cfg: Config,
    *,
    rate: float | None = None,
    gate_jobs: tuple[int, int] | None = None,
    connections: int | None = None,
) -> tuple[load.LoadResult, dict[str, Any], dict[str, Any], dict[str, Any]]:
    snaps: dict[str, dict[str, float]] = {}
    depth: dict[str, Any] = {"max": 0, "samples": 0, "sum": 0}
    gate: asyncio.Event | None = None
    poller: asyncio.Task[None] | None = None
    r = AsyncRedis.from_url(stack.redis_url)
    in_window = False

    def start() -> None:
        nonlocal in_window
        snaps["before"] = probe.snapshot()
        in_window = True

    def end() -> None:
        nonlocal in_window
        snaps["after"] = probe.snapshot()
        in_window = False

    if gate_jobs is not None:
        high, low = gate_jobs
        gate = asyncio.Event()
        gate.set()

        async def poll() -> None:
            while True:
                d = int(await r.llen(QUEUE_KEY))
                if d >= high:
                    gate.clear()
                elif d <= low:
                    gate.set()
                if in_window:
                    depth["max"] = max(depth["max"], d)
                    depth["samples"] += 1
                    depth["sum"] += d
                    depth.setdefault("first", d)
                    depth["last"] = d
                await asyncio.sleep(0.01)

        poller = asyncio.create_task(poll())

    target = load.Target(port, stack.keys)
    try:
        result = await load.run(
            target,
            stream,
            connections=connections or cfg.connections,
            warmup_s=cfg.warmup,
            duration_s=cfg.duration,
            rate=rate,
            gate=gate,
            pushes_per_connection=cfg.pushes_per_connection,
            on_window_start=start,
            on_window_end=end,
        )
    finally:
        if poller is not None:
            poller.cancel()
        await r.aclose()
    if "after" not in snaps:  # the window ended with the last request
        snaps["after"] = probe.snapshot()
    if depth["samples"]:
        depth["mean"] = round(depth["sum"] / depth["samples"], 1)
    return result, snaps["before"], snaps["after"], depth


def load_phase(
    stack: Stack, port: int, *args: Any, **kwargs: Any
) -> tuple[load.LoadResult, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """One phase of load; its `depth` dict also gets Redis's own stalls in the phase (`redis_stalls_ms`)
    and, when the load is on the api, its busiest process's share of its CPU (`api_busiest_share`)."""
    serving = api_serving_pids(stack) if port == stack.api_port else []
    split0 = {p: procstat.cpu_seconds(p) for p in serving}
    stack.reset_redis_stalls()
    result, before, after, depth = uvloop.run(_load_phase(stack, port, *args, **kwargs))
    depth["redis_stalls_ms"] = stack.redis_stalls()
    depth["redis_slow_commands"] = stack.slow_commands()
    depth["machine_stall_ms"] = stack.machine_stall_ms(*result.wall_window)
    depth["api_busiest_share"] = busiest_share(split0, {p: procstat.cpu_seconds(p) for p in serving})
    return result, before, after, depth


def dump_samples(stack: Stack, name: str, result: load.LoadResult) -> None:
    """With --keep-logs: every request of a phase as CSV (seconds from the phase start), for diagnosis."""
    if not stack.keep_logs:
        return
    t0 = result.started
    with (stack.tmp / f"samples-{name}.csv").open("w") as f:
        f.write("due_s,done_s,latency_ms,status,records,repeat,wall_done\n")
        for x in result.samples:
            f.write(
                f"{x.due - t0:.4f},{x.done - t0:.4f},{(x.done - x.due) * 1000:.2f},{x.status},{x.records},{int(x.repeat)},"
                f"{x.wall_done:.3f}\n"
            )


# -- Postgres side of the e2e phases ------------------------------------------------------------


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


# -- profiling ----------------------------------------------------------------------------------------


def api_serving_pids(stack: Stack) -> list[int]:
    """The api's processes that serve requests (with --api-procs N, uvicorn's N children)."""
    assert stack.api is not None
    kids = [p for p in procstat.tree_of(stack.api.pid) if p != stack.api.pid]
    serving = [p for p in kids if b"resource_tracker" not in procstat.cmdline(p)]
    return serving or [stack.api.pid]


def api_peak_rss_mb(stack: Stack) -> float | None:
    """The largest peak RSS among the api's serving processes."""
    peaks = [r for r in (procstat.peak_rss_mb(p) for p in api_serving_pids(stack)) if r is not None]
    return max(peaks) if peaks else None


def busiest_share(before: dict[int, float], after: dict[int, float]) -> float | None:
    """The busiest api process's share of the api's CPU over a phase (1/N when the load is even).

    uvicorn's processes share one listening socket, and a burst of keep-alive
    connections may be accepted mostly by one of them: that one then carries
    most of the phase, and its queue (not the machine) sets the tail latency.
    """
    used = [after[p] - before.get(p, 0.0) for p in after]
    return round(max(used) / sum(used), 2) if len(used) > 1 and sum(used) > 0 else None


def start_profile(
    pid: int, name: str, seconds: float, subprocesses: bool = False
) -> tuple[subprocess.Popen[bytes], Path]:
    if not (BIN / "py-spy").exists():
        raise SystemExit("--profile needs py-spy in .venv: .venv/bin/pip install py-spy")
    RESULTS.mkdir(parents=True, exist_ok=True)
    raw = RESULTS / f"profile-{name}.txt"
    argv = [str(BIN / "py-spy"), "record", "--pid", str(pid), "--rate", "100", "--duration", str(math.ceil(seconds)),
            "--format", "raw", "--nolineno", "--output", str(raw)]  # fmt: skip
    if subprocesses:
        argv.append("--subprocesses")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return proc, raw


def finish_profile(handle: tuple[subprocess.Popen[bytes], Path] | None, title: str, kind: str) -> dict[str, Any] | None:
    if handle is None:
        return None
    proc, raw = handle
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    if not raw.exists():
        print(f"  ! py-spy wrote nothing for {title}: {err.decode(errors='replace')[-300:]}", file=sys.stderr)
        return None
    return flame.render(raw, title, kind)  # type: ignore[return-value]


# -- all phases of one batch size ----------------------------------------------------------------------


def run_size(stack: Stack, cfg: Config, size: int, templates: list[Template], run: int) -> dict[str, Any]:
    ncpu = os.cpu_count() or 1
    me = os.getpid()
    out: dict[str, Any] = {"batch": describe(templates)}
    phase_base = (run * 32 + cfg.sizes.index(size) * 8) & 0xFF
    assert stack.api and stack.raw and stack.redis

    def log(msg: str) -> None:
        print(f"[run {run + 1} | {size}-record] {msg}", flush=True)

    def cpu(before: dict[str, Any], after: dict[str, Any], records: int) -> dict[str, Any]:
        return procstat.cpu_report(before, after, records, ncpu)

    # raw Redis baseline
    stack.truncate()
    stack.flush_redis()
    wait_quiet(cfg, log)
    log("raw redis endpoint, full speed")
    probe = procstat.Probe(pids={"redis": stack.redis.pid, "client": me}, trees={"raw_app": stack.raw.pid})
    res, b, a, _ = load_phase(stack, stack.raw_port, PushStream(templates, phase_base + 0), probe, cfg)
    s = load.summarize(res)
    dump_samples(stack, f"raw-{size}-run{run + 1}", res)
    out["raw"] = {**s, "cpu": cpu(b, a, s["records_ok"])}  # type: ignore[arg-type]
    _warn_statuses("raw", s)

    # api, full speed, no workers
    stack.flush_redis()
    wait_quiet(cfg, log)
    log("api full speed (workers stopped)")
    probe = procstat.Probe(pids={"redis": stack.redis.pid, "client": me}, trees={"api": stack.api.pid})
    prof = (
        start_profile(stack.api.pid, f"api-{size}", cfg.warmup + cfg.duration, subprocesses=cfg.api_procs > 1)
        if cfg.profile
        else None
    )
    res, b, a, _ = load_phase(stack, stack.api_port, PushStream(templates, phase_base + 1), probe, cfg)
    s = load.summarize(res)
    dump_samples(stack, f"api-full-{size}-run{run + 1}", res)
    out["api_full"] = {**s, "cpu": cpu(b, a, s["records_ok"])}  # type: ignore[arg-type]
    _warn_statuses("api-full", s)
    out["api_full"]["profile"] = finish_profile(prof, f"api, {size}-record pushes at full speed", "api")
    out["api_full"]["redis_used_mb"] = round(stack.r.info("memory")["used_memory"] / 2**20, 1)

    # api, paced at half
    stack.flush_redis()
    half = max(1.0, s["ok_per_s"] / 2)  # type: ignore[operator]
    wait_quiet(cfg, log)
    log(f"api paced at half: {half:.0f} pushes/s")
    res, b, a, d = load_phase(
        stack, stack.api_port, PushStream(templates, phase_base + 2), probe, cfg, rate=half, connections=64
    )
    s = load.summarize(res)
    dump_samples(stack, f"api-half-{size}-run{run + 1}", res)
    out["api_half"] = {
        "rate": round(half, 1),
        **s,
        "cpu": cpu(b, a, s["records_ok"]),
        "redis_stalls_ms": d["redis_stalls_ms"],
        "redis_slow_commands": d["redis_slow_commands"],
        "machine_stall_ms": d["machine_stall_ms"],
        "api_busiest_share": d["api_busiest_share"],
    }  # type: ignore[arg-type]
    _warn_statuses("api-half", s)

    # writer alone
    stack.flush_redis()
    stack.truncate()
    wait_quiet(cfg, log)
    log(f"postgres writer alone, {cfg.workers} processes")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.writer", "--database-url", stack.database_url,
         "--workspaces", ",".join(stack.workspaces), "--size", str(size), "--procs", str(cfg.workers),
         "--duration", str(cfg.duration), "--phase", str(phase_base + 3), "--seed", str(cfg.seed),
         "--postmaster-pid", str(stack.postmaster_pid)],
        cwd=stack.src, capture_output=True, text=True, timeout=cfg.duration + 900, env=stack.env(),
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"bench.writer failed:\n{proc.stderr[-3000:]}")
    out["writer"] = json.loads(proc.stdout.strip().splitlines()[-1])

    # e2e, saturated with a flat queue
    stack.truncate()
    stack.flush_redis()
    stack.start_workers(cfg.workers)
    high = max(2 * cfg.workers, math.ceil(4000 / size))
    gate = (high, high // 2)
    wait_quiet(cfg, log)
    log(f"end to end, saturated (queue held between {gate[1]} and {gate[0]} jobs)")
    probe = procstat.Probe(
        pids={"redis": stack.redis.pid, "client": me},
        trees={"api": stack.api.pid, "workers": stack.worker.pid, "postgres": stack.postmaster_pid},  # type: ignore[union-attr]
    )
    prof = (
        start_profile(stack.worker.pid, f"workers-{size}", cfg.warmup + cfg.duration, subprocesses=True)  # type: ignore[union-attr]
        if cfg.profile
        else None
    )
    res, b, a, depth = load_phase(
        stack, stack.api_port, PushStream(templates, phase_base + 4), probe, cfg, gate_jobs=gate
    )
    s = load.summarize(res)
    dump_samples(stack, f"e2e-sat-{size}-run{run + 1}", res)
    _warn_statuses("e2e-sat", s)
    sent_202 = sum(1 for x in res.samples if x.status == 202)
    pushes, records = processed_between(stack, *res.wall_window)
    seconds = res.wall_window[1] - res.wall_window[0]
    out["e2e_sat"] = {
        "pushes_per_s": round(pushes / seconds, 1),
        "records_per_s": round(records / seconds, 1),
        "client": s,
        "queue_depth": depth,
        "cpu": cpu(b, a, records),
    }
    out["e2e_sat"]["profile"] = finish_profile(prof, f"workers, {size}-record pushes, end to end saturated", "workers")
    wait_processed(stack, sent_202, timeout=120)
    out["e2e_sat"]["lag"] = lags(
        stack, [x for x in res.samples if x.status == 202 and res.window[0] <= x.done], f"e2e-sat-{size}-run{run + 1}"
    )
    out["e2e_sat"]["redis_used_mb_after"] = round(stack.r.info("memory")["used_memory"] / 2**20, 1)

    # e2e, paced at half of the sustained rate
    half = max(1.0, s["ok_per_s"] / 2)  # type: ignore[operator]
    wait_quiet(cfg, log)
    log(f"end to end, paced at half: {half:.0f} pushes/s")
    before_counts = push_counts(stack).get("processed", 0)
    res, b, a, depth = load_phase(
        stack, stack.api_port, PushStream(templates, phase_base + 5), probe, cfg, rate=half, connections=64
    )
    s = load.summarize(res)
    dump_samples(stack, f"e2e-half-{size}-run{run + 1}", res)
    _warn_statuses("e2e-half", s)
    sent_202 = sum(1 for x in res.samples if x.status == 202)
    wait_processed(stack, before_counts + sent_202, timeout=120)
    pushes, records = processed_between(stack, *res.wall_window)
    seconds = res.wall_window[1] - res.wall_window[0]
    out["e2e_half"] = {
        "rate": round(half, 1),
        "records_per_s": round(records / seconds, 1),
        "client": s,
        "cpu": cpu(b, a, records),
        "lag": lags(
            stack,
            [x for x in res.samples if x.status == 202 and res.window[0] <= x.done < res.window[1]],
            f"e2e-half-{size}-run{run + 1}",
        ),
    }
    out["worker_peak_rss_mb"] = [procstat.peak_rss_mb(p) for p in stack.worker_pids()]
    # VmHWM is the api's peak since it started: after the 500-record phases it covers both sizes.
    out["api_peak_rss_mb_so_far"] = api_peak_rss_mb(stack)
    out["pushes"] = push_counts(stack)
    out["redis_used_mb_end"] = round(stack.r.info("memory")["used_memory"] / 2**20, 1)
    stack.stop_workers()
    return out


# -- headline numbers, medians, table -----------------------------------------------------------------------


def _warn_statuses(label: str, summary: dict[str, Any]) -> None:
    bad = {k: v for k, v in summary["statuses"].items() if not k.startswith("2")}
    if bad or summary["errors"]:
        print(f"  ! {label}: answers other than 2xx {bad}, connection errors {summary['errors']}", file=sys.stderr)


def headline(r: dict[str, Any]) -> dict[str, float | None]:
    def g(*path: str) -> Any:
        v: Any = r
        for p in path:
            if v is None:
                return None
            v = v.get(p)
        return v

    h: dict[str, float | None] = {
        "raw_push_s": g("raw", "ok_per_s"),
        "raw_rec_s": g("raw", "records_ok_per_s"),
        "raw_p50": g("raw", "latency_ms", "p50"),
        "raw_p99": g("raw", "latency_ms", "p99"),
        "api_push_s": g("api_full", "ok_per_s"),
        "api_rec_s": g("api_full", "records_ok_per_s"),
        "api_p50": g("api_full", "latency_ms", "p50"),
        "api_p99": g("api_full", "latency_ms", "p99"),
        "half_push_s": g("api_half", "ok_per_s"),
        "half_p50": g("api_half", "latency_ms", "p50"),
        "half_p99": g("api_half", "latency_ms", "p99"),
        "half_p90": g("api_half", "latency_ms", "p90"),
        "half_redis_stall": max((g("api_half", "redis_stalls_ms") or {}).values(), default=None),
        "half_busiest": g("api_half", "api_busiest_share"),
        "half_machine_stall": g("api_half", "machine_stall_ms"),
        "half_steal": g("api_half", "cpu", "steal_pct"),
        "writer_rec_s": g("writer", "records_per_s"),
        "e2e_rec_s": g("e2e_sat", "records_per_s"),
        "e2e_push_s": g("e2e_sat", "pushes_per_s"),
        "e2e_lag_p50": g("e2e_sat", "lag", "lag_ms", "p50"),
        "e2e_lag_p99": g("e2e_sat", "lag", "lag_ms", "p99"),
        "e2e_depth_mean": g("e2e_sat", "queue_depth", "mean"),
        "e2eh_rec_s": g("e2e_half", "records_per_s"),
        "e2eh_api_p50": g("e2e_half", "client", "latency_ms", "p50"),
        "e2eh_api_p99": g("e2e_half", "client", "latency_ms", "p99"),
        "lag_p50": g("e2e_half", "lag", "lag_ms", "p50"),
        "lag_p99": g("e2e_half", "lag", "lag_ms", "p99"),
        "cpu_api": g("e2e_sat", "cpu", "us_per_record", "api"),
        "cpu_workers": g("e2e_sat", "cpu", "us_per_record", "workers"),
        "cpu_redis": g("e2e_sat", "cpu", "us_per_record", "redis"),
        "cpu_postgres": g("e2e_sat", "cpu", "us_per_record", "postgres"),
        "cpu_client": g("e2e_sat", "cpu", "us_per_record", "client"),
        "cpu_api_alone": g("api_full", "cpu", "us_per_record", "api"),
        "cpu_raw_alone": g("raw", "cpu", "us_per_record", "raw_app"),
        "cpu_writer_alone": g("writer", "us_per_record", "writers"),
        "cpu_pg_writer_alone": g("writer", "us_per_record", "postgres"),
        "worker_rss": max((x or 0) for x in r.get("worker_peak_rss_mb") or [0]),
        "api_rss": r.get("api_peak_rss_mb_so_far"),
        "foreign_pct": max(
            (x or 0)
            for x in (
                g("raw", "cpu", "foreign_pct"),
                g("api_full", "cpu", "foreign_pct"),
                g("writer", "foreign_pct"),
                g("e2e_sat", "cpu", "foreign_pct"),
                g("e2e_half", "cpu", "foreign_pct"),
            )
        ),
    }
    a, w, raw, e = h["api_push_s"], h["writer_rec_s"], h["raw_push_s"], h["e2e_rec_s"]
    h["e2e_vs_writer"] = round(e / w, 3) if e and w else None
    h["api_vs_raw"] = round(a / raw, 3) if a and raw else None
    return h


def medians(values: list[dict[str, float | None]]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for k in values[0]:
        xs = [v[k] for v in values if v.get(k) is not None]
        out[k] = {
            "median": round(statistics.median(xs), 3) if xs else None,  # type: ignore[type-var]
            "min": min(xs) if xs else None,  # type: ignore[type-var]
            "max": max(xs) if xs else None,  # type: ignore[type-var]
        }
    return out


def _fmt(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "-"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


ROWS: list[tuple[str, str, int]] = [
    ("raw Redis push endpoint: pushes/s", "raw_push_s", 0),
    ("  records/s", "raw_rec_s", 0),
    ("  latency p50 / p99 ms", "raw_p50|raw_p99", 1),
    ("api full speed (no workers): pushes/s", "api_push_s", 0),
    ("  records/s", "api_rec_s", 0),
    ("  latency p50 / p99 ms", "api_p50|api_p99", 1),
    ("api at half rate: pushes/s", "half_push_s", 0),
    ("  latency p50 / p90 / p99 ms", "half_p50|half_p90|half_p99", 1),
    ("  longest Redis stall in the phase, ms", "half_redis_stall", 0),
    ("  longest stall of the machine itself, ms", "half_machine_stall", 0),
    ("  CPU stolen by the hypervisor, %", "half_steal", 1),
    ("  busiest api process's share of api CPU", "half_busiest", 2),
    ("writer alone (N procs): records/s", "writer_rec_s", 0),
    ("e2e sustained (flat queue): records/s", "e2e_rec_s", 0),
    ("  pushes/s", "e2e_push_s", 0),
    ("  lag 202->commit p50 / p99 ms", "e2e_lag_p50|e2e_lag_p99", 0),
    ("e2e at half rate: records/s", "e2eh_rec_s", 0),
    ("  lag 202->commit p50 / p99 ms", "lag_p50|lag_p99", 0),
    ("  api latency p50 / p99 ms (workers keeping up)", "e2eh_api_p50|e2eh_api_p99", 1),
    ("CPU us/record, e2e sustained: api", "cpu_api", 1),
    ("  workers (all N)", "cpu_workers", 1),
    ("  redis", "cpu_redis", 1),
    ("  postgres (cluster)", "cpu_postgres", 1),
    ("  load generator", "cpu_client", 1),
    ("CPU us/record, api alone", "cpu_api_alone", 1),
    ("CPU us/record, raw endpoint alone", "cpu_raw_alone", 1),
    ("CPU us/record, writer alone: writers", "cpu_writer_alone", 1),
    ("  postgres", "cpu_pg_writer_alone", 1),
    ("peak RSS MB, api (since start)", "api_rss", 0),
    ("peak RSS MB, worker (max of N)", "worker_rss", 0),
    ("noise: foreign CPU %, worst phase", "foreign_pct", 0),
]


def table(summary: dict[int, dict[str, dict[str, float | None]]], api_rss: float | None, cfg: Config) -> str:
    sizes = sorted(summary)
    w0 = 42
    lines = [f"{'':{w0}}" + "".join(f"{f'{s}-record pushes':>22}" for s in sizes)]
    for label, keys, digits in ROWS:
        cells = []
        for s in sizes:
            vals = [summary[s][k]["median"] for k in keys.split("|")]
            cells.append(" / ".join(_fmt(v, digits) for v in vals))
        lines.append(f"{label:{w0}}" + "".join(f"{c:>22}" for c in cells))
    lines.append("")
    lines.append("targets" + (f" (medians of {cfg.runs} runs)" if cfg.runs > 1 else ""))
    lines.extend(check_targets(summary, api_rss)["lines"])  # type: ignore[arg-type]
    return "\n".join(lines)


def check_targets(summary: dict[int, dict[str, dict[str, float | None]]], api_rss: float | None) -> dict[str, Any]:
    results: list[dict[str, Any]] = []

    def add(name: str, value: float | None, target: float, higher: bool) -> None:
        ok = None if value is None else (value >= target if higher else value < target)
        results.append({"name": name, "value": value, "target": target, "higher_is_better": higher, "met": ok})

    for s in sorted(summary):
        m = summary[s]
        if s in (100, 500):
            add(f"e2e / writer alone, {s}-record", m["e2e_vs_writer"]["median"], TARGETS[f"e2e_vs_writer_{s}"], True)
        else:
            add(f"e2e / writer alone, {s}-record", m["e2e_vs_writer"]["median"], TARGETS["e2e_vs_writer_100"], True)
    for s in sorted(summary):
        add(f"api / raw Redis endpoint, {s}-record", summary[s]["api_vs_raw"]["median"], TARGETS["api_vs_raw"], True)
    for s in sorted(summary):
        add(f"api p99 ms at half rate, {s}-record", summary[s]["half_p99"]["median"], TARGETS["api_half_p99_ms"], False)
    for s in sorted(summary):
        add(
            f"lag p99 ms at half e2e rate, {s}-record",
            summary[s]["lag_p99"]["median"],
            TARGETS["lag_half_p99_ms"],
            False,
        )
    add("api peak RSS MB", api_rss, TARGETS["api_rss_mb"], False)
    add(
        "worker peak RSS MB",
        max((summary[s]["worker_rss"]["median"] or 0) for s in summary),
        TARGETS["worker_rss_mb"],
        False,
    )
    lines = []
    for r in results:
        sign = ">=" if r["higher_is_better"] else "<"
        verdict = {True: "met", False: "NOT MET", None: "n/a"}[r["met"]]
        lines.append(f"  {r['name']:<42}{_fmt(r['value'], 2):>12}   target {sign} {r['target']:<8g} {verdict}")
    return {"results": results, "lines": lines}


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import msgspec
    import psycopg
    import redis
    import rq
    import starlette
    import uvicorn

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout
        except Exception:
            return ""

    # Porcelain lines are "XY path": the path starts at column 3.
    dirty = [line[3:] for line in git("status", "--porcelain").splitlines() if not line[3:].startswith("bench/")]
    return {
        "git_head": git("rev-parse", "--short", "HEAD").strip(),
        "git_dirty_files": dirty,
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": {
            "starlette": starlette.__version__,
            "uvicorn": uvicorn.__version__,
            "msgspec": msgspec.__version__,
            "redis-py": redis.__version__,
            "rq": rq.__version__,
            "psycopg": psycopg.__version__,
        },
        "loadavg_start": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="short phases (about 80 s in all)")
    p.add_argument("--sizes", default="100,500", help="records per push (default 100,500)")
    p.add_argument("--workers", type=int, default=4, help="worker processes (selftune-ingest worker -n N)")
    p.add_argument(
        "--api-procs",
        type=int,
        default=os.cpu_count() or 1,
        help="uvicorn processes for the api and for the raw endpoint alike (default: one per core)",
    )
    p.add_argument("--connections", type=int, default=32, help="connections at full speed")
    p.add_argument(
        "--pushes-per-connection",
        type=int,
        default=PUSHES_PER_CONNECTION,
        metavar="K",
        help=f"close each connection after K pushes and open a new one, as a CLI's sync does (default {PUSHES_PER_CONNECTION}; 0: keep them all phase long)",
    )
    p.add_argument("--duration", type=float, help="measured seconds per phase (default 12, --quick 3)")
    p.add_argument("--warmup", type=float, help="unmeasured seconds before each phase (default 2, --quick 1)")
    p.add_argument("--runs", type=int, default=1, help="repeat all phases; the table shows medians")
    p.add_argument("--profile", action="store_true", help="py-spy the api (api-full) and workers (e2e-sat)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        metavar="S",
        help="before each phase, wait up to S s for the machine to be under 30%% busy (shared machines)",
    )
    p.add_argument(
        "--pg-admin-url", default=os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    p.add_argument("--out", default=str(RESULTS / "latest.json"))
    p.add_argument("--keep-logs", action="store_true", help="keep the temp dir with the processes' logs")
    a = p.parse_args(argv)
    if a.pushes_per_connection < 0:
        p.error("--pushes-per-connection must be 0 or more")
    cfg = Config(
        sizes=[int(s) for s in a.sizes.split(",")],
        workers=a.workers,
        api_procs=a.api_procs,
        connections=a.connections,
        warmup=a.warmup if a.warmup is not None else (1.0 if a.quick else 2.0),
        duration=a.duration if a.duration is not None else (3.0 if a.quick else 12.0),
        runs=a.runs,
        profile=a.profile,
        seed=a.seed,
        quiet_wait=a.quiet_wait,
        pushes_per_connection=a.pushes_per_connection,
    )
    started = time.time()
    info = machine()
    print(f"selftune ingest bench: {info['nproc']} x {info['cpu_model']}, {cfg.workers} workers, "
          f"{cfg.api_procs} api process(es), {cfg.pushes_per_connection or 'all'} pushes per connection, "
          f"phases {cfg.warmup:g}+{cfg.duration:g} s, sizes {cfg.sizes}, runs {cfg.runs}"
          + (", PROFILING (py-spy attached: numbers are slower)" if cfg.profile else ""), flush=True)  # fmt: skip
    templates = {size: make_templates(size, seed=cfg.seed) for size in cfg.sizes}
    stack = Stack(a.pg_admin_url, workers=cfg.workers, keep_logs=a.keep_logs, api_procs=cfg.api_procs)
    runs: list[dict[int, dict[str, Any]]] = []
    api_rss = None
    try:
        stack.setup_database(WORKSPACES)
        stack.start_stall_probe()
        stack.start_redis()
        stack.start_api()
        stack.start_raw()
        print(f"stack: postgres {stack.database_url}, redis :{stack.redis_port}, api :{stack.api_port}, "
              f"raw endpoint :{stack.raw_port}, logs {stack.tmp}", flush=True)  # fmt: skip
        for run in range(cfg.runs):
            runs.append({size: run_size(stack, cfg, size, templates[size], run) for size in cfg.sizes})
        assert stack.api is not None
        api_rss = api_peak_rss_mb(stack)
    finally:
        stack.close()
    changed = code_digest(REPO) != stack.code_digest
    code_note = {
        "git_head": info["git_head"],
        "dirty_files": info["git_dirty_files"],
        "snapshot_digest": stack.code_digest,
        "work_tree_changed_during_run": changed,
    }
    summary = {size: medians([headline(r[size]) for r in runs]) for size in cfg.sizes}
    text = table(summary, api_rss, cfg)
    elapsed = time.time() - started
    print()
    print(text)
    print(f"\n{elapsed:.0f} s; load average now {os.getloadavg()[0]:.2f}; results in {a.out}")
    print(
        f"code: git {info['git_head']}"
        + (f" + {len(info['git_dirty_files'])} uncommitted files" if info["git_dirty_files"] else "")
        + f", snapshot {stack.code_digest}"
        + (" (the work tree changed during the run; the processes ran the snapshot)" if changed else "")
    )
    report = {
        "command": "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed, 1),
        "machine": {**info, "loadavg_end": os.getloadavg()},
        "code": code_note,
        "config": cfg.__dict__,
        "api_peak_rss_mb": api_rss,
        "summary": {str(k): v for k, v in summary.items()},
        "targets": check_targets(summary, api_rss)["results"],
        "table": text,
        "runs": [{str(k): v for k, v in r.items()} for r in runs],
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
