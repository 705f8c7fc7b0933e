"""The report of a bench run: headline numbers per run, their medians, the table and the targets.

Pure functions of the phases' result dicts (the `runs` of a results JSON), so a
recorded result can be re-tabled (tests/unit/test_bench_report.py), plus
`machine()`, the machine and code a run is on.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from typing import Any

from bench.phase import Config
from bench.snapshot import REPO

TARGETS = {
    "e2e_vs_writer_100": 0.6,
    "e2e_vs_writer_500": 0.8,
    "api_vs_raw": 0.5,
    "api_half_p99_ms": 15.0,
    "lag_half_p99_ms": 1000.0,
    "api_rss_mb": 150.0,
    "worker_rss_mb": 200.0,
    "e2e_vs_baseline": 1.5,  # issue 15: e2e sustained records/s of the new code / the old code's, same run
}

# The processes whose CPU per record the e2e phases split, as cpu_report names them.
CPU_SPLIT = ("api", "workers", "redis", "postgres", "client")

Summary = dict[int, dict[str, dict[str, float | None]]]


def _getter(r: dict[str, Any] | None) -> Any:
    def g(*path: str) -> Any:
        v: Any = r
        for p in path:
            if v is None:
                return None
            v = v.get(p)
        return v

    return g


def _ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
    return round(a / b, digits) if a and b else None


def e2e_headline(r: dict[str, Any]) -> dict[str, float | None]:
    """The e2e phases' numbers of one code (the work tree's, or a baseline's), CPU split per record included."""
    g = _getter(r)
    h: dict[str, float | None] = {
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
        **{f"cpu_{name}": g("e2e_sat", "cpu", "us_per_record", name) for name in CPU_SPLIT},
        "worker_rss": max((x or 0) for x in r.get("worker_peak_rss_mb") or [0]),
        "api_rss": r.get("api_peak_rss_mb_so_far"),
    }
    split = [h[f"cpu_{name}"] for name in CPU_SPLIT]
    h["cpu_total"] = round(sum(split), 2) if all(x is not None for x in split) else None  # type: ignore[arg-type]
    h["workers_vs_pg"] = _ratio(h["cpu_workers"], h["cpu_postgres"])
    return h


def headline(r: dict[str, Any]) -> dict[str, float | None]:
    """The numbers of one run of one batch size that the table shows (before the medians)."""
    g = _getter(r)
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
        **e2e_headline(r),
        "cpu_api_alone": g("api_full", "cpu", "us_per_record", "api"),
        "cpu_raw_alone": g("raw", "cpu", "us_per_record", "raw_app"),
        "cpu_writer_alone": g("writer", "us_per_record", "writers"),
        "cpu_pg_writer_alone": g("writer", "us_per_record", "postgres"),
    }
    foreign = [
        g("raw", "cpu", "foreign_pct"),
        g("api_full", "cpu", "foreign_pct"),
        g("writer", "foreign_pct"),
        g("e2e_sat", "cpu", "foreign_pct"),
        g("e2e_half", "cpu", "foreign_pct"),
        g("baseline", "e2e_sat", "cpu", "foreign_pct"),
        g("baseline", "e2e_half", "cpu", "foreign_pct"),
    ]
    h["foreign_pct"] = max((x or 0) for x in foreign)
    h["e2e_vs_writer"] = _ratio(h["e2e_rec_s"], h["writer_rec_s"])
    h["api_vs_raw"] = _ratio(h["api_push_s"], h["raw_push_s"])
    if r.get("baseline") is not None:
        h.update({f"base_{k}": v for k, v in e2e_headline(r["baseline"]).items()})
        h["e2e_vs_base"] = _ratio(h["e2e_rec_s"], h["base_e2e_rec_s"])
    return h


def medians(values: list[dict[str, float | None]]) -> dict[str, dict[str, float | None]]:
    """Per headline number: its median, min and max over the runs (None where no run has it)."""
    out: dict[str, dict[str, float | None]] = {}
    for k in values[0]:
        xs = [v[k] for v in values if v.get(k) is not None]
        out[k] = {
            "median": round(statistics.median(xs), 3) if xs else None,  # type: ignore[type-var, arg-type]
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


Row = tuple[str, str, int]  # (label, headline keys joined by "|", digits)


def _cpu_split_rows(title: str, prefix: str = "") -> list[Row]:
    """The e2e sustained phase's CPU per record, process by process, of one code."""
    return [
        (f"{title}: api", f"{prefix}cpu_api", 1),
        ("  workers (all N)", f"{prefix}cpu_workers", 1),
        ("  redis", f"{prefix}cpu_redis", 1),
        ("  postgres (cluster)", f"{prefix}cpu_postgres", 1),
        ("  load generator", f"{prefix}cpu_client", 1),
        ("  all of them", f"{prefix}cpu_total", 1),
        ("  workers / postgres", f"{prefix}workers_vs_pg", 2),
    ]


ROWS: list[Row] = [
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
    *_cpu_split_rows("CPU us/record, e2e sustained"),
    ("CPU us/record, api alone", "cpu_api_alone", 1),
    ("CPU us/record, raw endpoint alone", "cpu_raw_alone", 1),
    ("CPU us/record, writer alone: writers", "cpu_writer_alone", 1),
    ("  postgres", "cpu_pg_writer_alone", 1),
    ("peak RSS MB, api (since start)", "api_rss", 0),
    ("peak RSS MB, worker (max of N)", "worker_rss", 0),
    ("noise: foreign CPU %, worst phase", "foreign_pct", 0),
]

# With --baseline-ref: the baseline code's e2e phases, run in the same rounds.
BASELINE_ROWS: list[Row] = [
    ("baseline code, e2e sustained: records/s", "base_e2e_rec_s", 0),
    ("  new / baseline", "e2e_vs_base", 2),
    ("  lag 202->commit p50 / p99 ms", "base_e2e_lag_p50|base_e2e_lag_p99", 0),
    ("baseline code, e2e at half rate: records/s", "base_e2eh_rec_s", 0),
    ("  lag 202->commit p50 / p99 ms", "base_lag_p50|base_lag_p99", 0),
    *_cpu_split_rows("baseline CPU us/record, e2e sustained", "base_"),
    ("baseline peak RSS MB, worker (max of N)", "base_worker_rss", 0),
]


def _has_baseline(summary: Summary) -> bool:
    return any("e2e_vs_base" in summary[s] for s in summary)


def table(summary: Summary, api_rss: float | None, cfg: Config) -> str:
    """The printed table: one column per batch size (medians over the runs), then the targets."""
    sizes = sorted(summary)
    w0 = 42
    lines = [f"{'':{w0}}" + "".join(f"{f'{s}-record pushes':>22}" for s in sizes)]
    rows = ROWS + (BASELINE_ROWS if _has_baseline(summary) else [])
    for label, keys, digits in rows:
        cells = []
        for s in sizes:
            vals = [summary[s].get(k, {}).get("median") for k in keys.split("|")]
            cells.append(" / ".join(_fmt(v, digits) for v in vals))
        lines.append(f"{label:{w0}}" + "".join(f"{c:>22}" for c in cells))
    lines.append("")
    lines.append("targets" + (f" (medians of {cfg.runs} runs)" if cfg.runs > 1 else ""))
    lines.extend(check_targets(summary, api_rss)["lines"])
    return "\n".join(lines)


def check_targets(summary: Summary, api_rss: float | None) -> dict[str, Any]:
    """Each target with its value and verdict (`results`), and as printed lines (`lines`)."""
    results: list[dict[str, Any]] = []

    def add(name: str, value: float | None, target: float, higher: bool) -> None:
        ok = None if value is None else (value >= target if higher else value < target)
        results.append({"name": name, "value": value, "target": target, "higher_is_better": higher, "met": ok})

    sizes = sorted(summary)
    for s in sizes:
        key = f"e2e_vs_writer_{s}" if s in (100, 500) else "e2e_vs_writer_100"
        add(f"e2e / writer alone, {s}-record", summary[s]["e2e_vs_writer"]["median"], TARGETS[key], True)
    for s in sizes:
        add(f"api / raw Redis endpoint, {s}-record", summary[s]["api_vs_raw"]["median"], TARGETS["api_vs_raw"], True)
    for s in sizes:
        add(f"api p99 ms at half rate, {s}-record", summary[s]["half_p99"]["median"], TARGETS["api_half_p99_ms"], False)
    for s in sizes:
        add(
            f"lag p99 ms at half e2e rate, {s}-record",
            summary[s]["lag_p99"]["median"],
            TARGETS["lag_half_p99_ms"],
            False,
        )
    if _has_baseline(summary):
        for s in sizes:
            value = summary[s].get("e2e_vs_base", {}).get("median")
            add(f"e2e sustained new / baseline, {s}-record", value, TARGETS["e2e_vs_baseline"], True)
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
    """The machine, the git HEAD (and its uncommitted files outside bench/) and the libraries of a run."""
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
