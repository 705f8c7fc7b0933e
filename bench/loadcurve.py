"""The api's CPU per record against its load: saturated, and paced at fractions of that rate.

`python -m bench.loadcurve [--size 500] [--fractions 1,0.5,0.15] [--reps 2]`

The main bench measures the api alone at full speed, but in its end-to-end phase
the api runs far below saturation (the workers and Postgres set the pace), and
there each record costs it ~1.4x as much CPU. This tool isolates that effect on
one stack (database `selftune_bench`, a private redis-server, the api; no
workers): a full-speed phase, then phases paced (open loop) at the given
fractions of its rate, alternating, each reporting the api's CPU per record and,
per push, its context switches and migrations between CPUs (from /proc), which
show how often the api's processes went to sleep and woke up elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from datetime import UTC, datetime
from typing import Any

from bench import load, procstat
from bench.gen import WORKSPACES, PushStream, make_templates
from bench.phase import PUSHES_PER_CONNECTION, RESULTS, Config, api_serving_pids, load_phase
from bench.report import machine
from bench.stack import DEFAULT_ADMIN_URL, Stack


def sched_counts(pid: int) -> tuple[int, int]:
    """(context switches, migrations between CPUs) of one process since it started; (0, 0) if gone.

    Context switches are voluntary (it slept: waited for a socket) plus involuntary (preempted),
    from /proc/<pid>/status; migrations are the scheduler's `se.nr_migrations` (/proc/<pid>/sched).
    """
    switches = migrations = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                    switches += int(line.split()[1])
        with open(f"/proc/{pid}/sched") as f:
            for line in f:
                if line.startswith("se.nr_migrations"):
                    migrations = int(line.split(":")[1])
    except (FileNotFoundError, ProcessLookupError):
        return 0, 0
    return switches, migrations


def _sched_total(pids: list[int]) -> tuple[int, int]:
    counts = [sched_counts(p) for p in pids]
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.loadcurve", description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=500, help="records per push (default 500)")
    p.add_argument("--fractions", default="1,0.5,0.15", help="of the full-speed rate; 1 = full speed (closed loop)")
    p.add_argument("--reps", type=int, default=2, help="rounds of all fractions")
    p.add_argument("--duration", type=float, default=8.0, help="measured seconds per phase (after 1 s warm-up)")
    p.add_argument("--api-procs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--pg-admin-url", default=os.environ.get("BENCH_PG_ADMIN_URL", DEFAULT_ADMIN_URL))
    p.add_argument("--out", help="default: bench/results/loadcurve-<size>.json")
    a = p.parse_args(argv)
    fractions = [float(x) for x in a.fractions.split(",")]
    if fractions[0] != 1 or not all(0 < f < 1 for f in fractions[1:]):
        p.error("--fractions: 1 first (the full-speed phase sets the rate), then fractions between 0 and 1")
    cfg = Config(
        sizes=[a.size], workers=0, api_procs=a.api_procs, connections=32, warmup=1.0,
        duration=a.duration, runs=1, profile=False, seed=1, pushes_per_connection=PUSHES_PER_CONNECTION,
    )  # fmt: skip
    templates = make_templates(a.size, seed=1)
    stack = Stack(a.pg_admin_url, api_procs=a.api_procs)
    phases: list[dict[str, Any]] = []
    full_rate: float | None = None
    try:
        stack.start_stall_probe()
        stack.setup_database(WORKSPACES)
        stack.start_redis()
        stack.start_api()
        assert stack.api is not None and stack.redis is not None
        probe = procstat.Probe(pids={"redis": stack.redis.pid}, trees={"api": stack.api.pid})
        serving = api_serving_pids(stack)
        n = 0
        for rep in range(a.reps):
            for fraction in fractions:
                stack.flush_redis()  # the same Redis size in every phase
                paced: dict[str, Any] = {}
                if fraction != 1:
                    assert full_rate is not None
                    paced = {"rate": full_rate * fraction, "connections": 64}
                s0 = _sched_total(serving)
                res, before, after, extra = load_phase(
                    stack, stack.api_port, PushStream(templates, n), probe, cfg, **paced
                )
                s1 = _sched_total(serving)
                n += 1
                s: dict[str, Any] = load.summarize(res)
                if fraction == 1 and full_rate is None:
                    full_rate = float(s["ok_per_s"])
                cpu: dict[str, Any] = procstat.cpu_report(before, after, s["records_ok"], os.cpu_count() or 1)
                requests = max(1, s["requests"])
                phase = {
                    "rep": rep + 1,
                    "fraction": fraction,
                    **s,
                    "api_us_per_record": cpu["us_per_record"]["api"],
                    # /proc counts over the whole phase (warm-up included), so per request sent.
                    "switches_per_push": round((s1[0] - s0[0]) / requests, 1),
                    "migrations_per_push": round((s1[1] - s0[1]) / requests, 2),
                    "machine_busy_pct": cpu["machine_busy_pct"],
                    "machine_stall_ms": extra["machine_stall_ms"],
                }
                phases.append(phase)
                lat: dict[str, float] = s["latency_ms"]
                print(
                    f"x{fraction:<5} {s['ok_per_s']:>7} pushes/s  api {phase['api_us_per_record']:>5} us/record"
                    f"  switches {phase['switches_per_push']:>5}/push  migrations {phase['migrations_per_push']:>5}/push"
                    f"  p50 {lat['p50']:>6} p99 {lat['p99']:>7} ms  machine stall {phase['machine_stall_ms']} ms",
                    flush=True,
                )
    finally:
        stack.close()
    print(f"\nmedians of {a.reps} phases, {a.size}-record pushes, {a.api_procs} api process(es)")
    medians: dict[str, dict[str, float]] = {}
    for fraction in fractions:
        mine = [x for x in phases if x["fraction"] == fraction]
        m = {k: statistics.median(x[k] for x in mine) for k in ("ok_per_s", "api_us_per_record", "switches_per_push")}
        medians[str(fraction)] = m
        print(
            f"  x{fraction:<5} {m['ok_per_s']:>7.0f} pushes/s  api {m['api_us_per_record']:>5.1f} us/record"
            f"  switches {m['switches_per_push']:>5.1f}/push"
        )
    report = {
        "command": "python -m bench.loadcurve " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "full_rate": full_rate,
        "medians": medians,
        "phases": phases,
    }
    with open(a.out or RESULTS / f"loadcurve-{a.size}.json", "w") as f:
        f.write(json.dumps(report, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
