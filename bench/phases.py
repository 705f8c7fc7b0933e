"""The phases of one batch size, in order: raw, api-full, api-half, writer, e2e-sat, e2e-half.

Each returns the result dict of its phase (the shapes `bench.report.headline`
reads). The end-to-end phases take the stack to run on, so a baseline's code
(`--baseline-ref`) runs them too, on its own api, workers and database.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from bench import load, procstat, pyspy
from bench.gen import PushStream, Template, describe
from bench.landed import lags, processed_between, push_counts, wait_processed
from bench.phase import Config, api_peak_rss_mb, dump_samples, load_phase, wait_quiet
from bench.stack import Stack

Log = Callable[[str], None]


def _cpu(before: dict[str, Any], after: dict[str, Any], records: int) -> dict[str, Any]:
    return procstat.cpu_report(before, after, records, os.cpu_count() or 1)


def _warn_statuses(label: str, summary: dict[str, Any]) -> None:
    bad = {k: v for k, v in summary["statuses"].items() if not k.startswith("2")}
    if bad or summary["errors"]:
        print(f"  ! {label}: answers other than 2xx {bad}, connection errors {summary['errors']}", file=sys.stderr)


def _redis_mb(stack: Stack) -> float:
    return round(float(stack.r.info("memory")["used_memory"]) / 2**20, 1)


def raw_phase(stack: Stack, cfg: Config, templates: list[Template], phase: int, tag: str, log: Log) -> dict[str, Any]:
    """The raw Redis endpoint at full speed (the api's baseline)."""
    assert stack.raw is not None
    stack.truncate()
    stack.flush_redis()
    wait_quiet(cfg, log)
    log("raw redis endpoint, full speed")
    probe = procstat.Probe(pids={"redis": stack.redis.pid, "client": os.getpid()}, trees={"raw_app": stack.raw.pid})
    res, b, a, _ = load_phase(stack, stack.raw_port, PushStream(templates, phase), probe, cfg)
    s = load.summarize(res)
    dump_samples(stack, f"raw-{tag}", res)
    _warn_statuses("raw", s)
    return {**s, "cpu": _cpu(b, a, s["records_ok"])}  # type: ignore[arg-type]


def api_phases(
    stack: Stack, cfg: Config, size: int, templates: list[Template], phase: int, tag: str, log: Log
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The api with the workers stopped: at full speed, then paced at half of that (phases `phase`, `phase + 1`)."""
    assert stack.api is not None
    stack.flush_redis()
    wait_quiet(cfg, log)
    log("api full speed (workers stopped)")
    probe = procstat.Probe(pids={"redis": stack.redis.pid, "client": os.getpid()}, trees={"api": stack.api.pid})
    seconds = cfg.warmup + cfg.duration
    prof = pyspy.start(stack.api.pid, f"api-{size}", seconds, subprocesses=cfg.api_procs > 1) if cfg.profile else None
    res, b, a, _ = load_phase(stack, stack.api_port, PushStream(templates, phase), probe, cfg)
    s = load.summarize(res)
    dump_samples(stack, f"api-full-{tag}", res)
    full = {**s, "cpu": _cpu(b, a, s["records_ok"])}  # type: ignore[arg-type]
    _warn_statuses("api-full", s)
    full["profile"] = pyspy.finish(prof, f"api, {size}-record pushes at full speed", "api")
    full["redis_used_mb"] = _redis_mb(stack)

    stack.flush_redis()
    rate = max(1.0, s["ok_per_s"] / 2)  # type: ignore[operator]
    wait_quiet(cfg, log)
    log(f"api paced at half: {rate:.0f} pushes/s")
    res, b, a, d = load_phase(
        stack, stack.api_port, PushStream(templates, phase + 1), probe, cfg, rate=rate, connections=64
    )
    s = load.summarize(res)
    dump_samples(stack, f"api-half-{tag}", res)
    half = {
        "rate": round(rate, 1),
        **s,
        "cpu": _cpu(b, a, s["records_ok"]),  # type: ignore[arg-type]
        "redis_stalls_ms": d["redis_stalls_ms"],
        "redis_slow_commands": d["redis_slow_commands"],
        "machine_stall_ms": d["machine_stall_ms"],
        "api_busiest_share": d["api_busiest_share"],
    }
    _warn_statuses("api-half", s)
    return full, half


def writer_phase(stack: Stack, cfg: Config, size: int, phase: int, log: Log) -> dict[str, Any]:
    """bench/writer.py: the workers' Postgres writer alone, as many processes as workers (the e2e's baseline)."""
    stack.flush_redis()
    stack.truncate()
    wait_quiet(cfg, log)
    log(f"postgres writer alone, {cfg.workers} processes")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.writer", "--database-url", stack.database_url,
         "--workspaces", ",".join(stack.workspaces), "--size", str(size), "--procs", str(cfg.workers),
         "--duration", str(cfg.duration), "--phase", str(phase), "--seed", str(cfg.seed),
         "--postmaster-pid", str(stack.postmaster_pid)],
        cwd=stack.src, capture_output=True, text=True, timeout=cfg.duration + 900, env=stack.env(),
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"bench.writer failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def e2e_phases(
    stack: Stack, cfg: Config, size: int, templates: list[Template], phase: int, tag: str, log: Log
) -> dict[str, Any]:
    """api + N workers of `stack`'s code on fresh tables: sustained with a flat queue, then at half that rate.

    Returns e2e_sat, e2e_half, the workers' and api's peak RSS and the pushes' final counts.
    """
    assert stack.api is not None
    out: dict[str, Any] = {}
    stack.truncate()
    stack.flush_redis()
    stack.start_workers(cfg.workers)
    assert stack.worker is not None
    high = max(2 * cfg.workers, math.ceil(4000 / size))
    gate = (high, high // 2)
    wait_quiet(cfg, log)
    log(f"end to end, saturated (queue held between {gate[1]} and {gate[0]} jobs)")
    probe = procstat.Probe(
        pids={"redis": stack.redis.pid, "client": os.getpid()},
        trees={"api": stack.api.pid, "workers": stack.worker.pid, "postgres": stack.postmaster_pid},
    )
    seconds = cfg.warmup + cfg.duration
    prof = pyspy.start(stack.worker.pid, f"workers-{size}", seconds, subprocesses=True) if cfg.profile else None
    res, b, a, depth = load_phase(stack, stack.api_port, PushStream(templates, phase), probe, cfg, gate_jobs=gate)
    s = load.summarize(res)
    dump_samples(stack, f"e2e-sat-{tag}", res)
    _warn_statuses("e2e-sat", s)
    sent_202 = sum(1 for x in res.samples if x.status == 202)
    pushes, records = processed_between(stack, *res.wall_window)
    window = res.wall_window[1] - res.wall_window[0]
    out["e2e_sat"] = {
        "pushes_per_s": round(pushes / window, 1),
        "records_per_s": round(records / window, 1),
        "client": s,
        "queue_depth": depth,
        "cpu": _cpu(b, a, records),
    }
    out["e2e_sat"]["profile"] = pyspy.finish(prof, f"workers, {size}-record pushes, end to end saturated", "workers")
    wait_processed(stack, sent_202, timeout=120)
    out["e2e_sat"]["lag"] = lags(
        stack, [x for x in res.samples if x.status == 202 and res.window[0] <= x.done], f"e2e-sat-{tag}"
    )
    out["e2e_sat"]["redis_used_mb_after"] = _redis_mb(stack)

    rate = max(1.0, s["ok_per_s"] / 2)  # type: ignore[operator]
    wait_quiet(cfg, log)
    log(f"end to end, paced at half: {rate:.0f} pushes/s")
    before_counts = push_counts(stack).get("processed", 0)
    res, b, a, depth = load_phase(
        stack, stack.api_port, PushStream(templates, phase + 1), probe, cfg, rate=rate, connections=64
    )
    s = load.summarize(res)
    dump_samples(stack, f"e2e-half-{tag}", res)
    _warn_statuses("e2e-half", s)
    sent_202 = sum(1 for x in res.samples if x.status == 202)
    wait_processed(stack, before_counts + sent_202, timeout=120)
    pushes, records = processed_between(stack, *res.wall_window)
    window = res.wall_window[1] - res.wall_window[0]
    out["e2e_half"] = {
        "rate": round(rate, 1),
        "records_per_s": round(records / window, 1),
        "client": s,
        "cpu": _cpu(b, a, records),
        "lag": lags(
            stack,
            [x for x in res.samples if x.status == 202 and res.window[0] <= x.done < res.window[1]],
            f"e2e-half-{tag}",
        ),
    }
    out["worker_peak_rss_mb"] = [procstat.peak_rss_mb(p) for p in stack.worker_pids()]
    # VmHWM is the api's peak since it started: after the 500-record phases it covers both sizes.
    out["api_peak_rss_mb_so_far"] = api_peak_rss_mb(stack)
    out["pushes"] = push_counts(stack)
    out["redis_used_mb_end"] = _redis_mb(stack)
    stack.stop_workers()
    return out


def run_size(
    stack: Stack, cfg: Config, size: int, templates: list[Template], run: int, baseline: Stack | None = None
) -> dict[str, Any]:
    """Every phase of one batch size on the work tree's code; then, with a baseline, its e2e phases (in `baseline`)."""
    phase_base = (run * 32 + cfg.sizes.index(size) * 8) & 0xFF  # each phase its own tokens
    tag = f"{size}-run{run + 1}"

    def log(msg: str) -> None:
        print(f"[run {run + 1} | {size}-record] {msg}", flush=True)

    out: dict[str, Any] = {"batch": describe(templates)}
    out["raw"] = raw_phase(stack, cfg, templates, phase_base + 0, tag, log)
    out["api_full"], out["api_half"] = api_phases(stack, cfg, size, templates, phase_base + 1, tag, log)
    out["writer"] = writer_phase(stack, cfg, size, phase_base + 3, log)
    out.update(e2e_phases(stack, cfg, size, templates, phase_base + 4, tag, log))
    if baseline is not None:

        def base_log(msg: str) -> None:
            log(f"baseline {baseline.ref}: {msg}")

        # The same pushes as the work tree's e2e phases (same tokens), on the baseline's own fresh tables.
        out["baseline"] = e2e_phases(baseline, cfg, size, templates, phase_base + 4, f"base-{tag}", base_log)
    return out
