"""The api's latency at a fixed push rate, with Redis persisting as in production and not at all.

`python -m bench.latency` (see bench/README.md) answers one question the main
bench cannot: how much of the api's tail latency at half its maximum rate is
Redis's append-only file (its writes, fsyncs, rewrite forks) and how much is
the api and the shared CPU. On one stack (database `selftune_bench`, a private
redis-server, the api; no workers) it runs short paced phases, alternating
Redis's persistence between the deployed setting (`appendonly yes`,
`appendfsync everysec`, no AOF rewrite before 1 GB), the same with Redis's
default rewrite threshold (64 MB) and `appendonly no`, and prints latency
percentiles per phase and medians per variant, with Redis's own longest
event-loop stall in each phase.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from typing import Any

from bench import load, procstat
from bench.gen import WORKSPACES, PushStream, make_templates
from bench.phase import PUSHES_PER_CONNECTION, RESULTS, Config, load_phase
from bench.report import machine
from bench.stack import DEFAULT_ADMIN_URL, Stack

VARIANTS: dict[str, dict[str, str]] = {
    "aof as deployed": {"appendonly": "yes", "appendfsync": "everysec", "auto-aof-rewrite-min-size": "1gb"},
    "aof, rewrite >64mb": {"appendonly": "yes", "appendfsync": "everysec", "auto-aof-rewrite-min-size": "64mb"},
    "aof off": {"appendonly": "no"},
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__)
    p.add_argument("--rate", type=float, help="pushes/s (default: half of a full-speed phase measured first)")
    p.add_argument("--api-procs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--size", type=int, default=100, help="records per push")
    p.add_argument("--reps", type=int, default=3, help="phases per variant")
    p.add_argument("--duration", type=float, default=6.0, help="measured seconds per phase (after 1 s warm-up)")
    p.add_argument(
        "--reuse-port",
        action="store_true",
        help="serve the api as N processes on N SO_REUSEPORT sockets (bench/reuseport_serve.py), not uvicorn --workers",
    )
    p.add_argument(
        "--pushes-per-connection",
        type=int,
        default=PUSHES_PER_CONNECTION,
        help=f"reconnect after this many pushes (0: never; default {PUSHES_PER_CONNECTION}, as bench.run)",
    )
    p.add_argument("--pg-admin-url", default=os.environ.get("BENCH_PG_ADMIN_URL", DEFAULT_ADMIN_URL))
    p.add_argument("--out", default=str(RESULTS / "latency.json"))
    a = p.parse_args(argv)
    cfg = Config(
        sizes=[a.size], workers=0, api_procs=a.api_procs, connections=32, warmup=1.0,
        duration=a.duration, runs=1, profile=False, seed=1, pushes_per_connection=a.pushes_per_connection,
    )  # fmt: skip
    templates = make_templates(a.size, seed=1)
    stack = Stack(a.pg_admin_url, api_procs=a.api_procs)
    phases: list[dict[str, Any]] = []
    try:
        stack.start_stall_probe()
        stack.setup_database(WORKSPACES)
        stack.start_redis()
        stack.start_api(reuse_port=a.reuse_port)
        assert stack.api is not None and stack.redis is not None
        probe = procstat.Probe(pids={"redis": stack.redis.pid}, trees={"api": stack.api.pid})
        rate = a.rate
        if rate is None:
            stack.flush_redis()
            full = load.summarize(load_phase(stack, stack.api_port, PushStream(templates, 0), probe, cfg)[0])
            rate = float(full["ok_per_s"]) / 2  # type: ignore[arg-type]
            print(f"full speed: {full['ok_per_s']} pushes/s; pacing at {rate:.0f}", flush=True)
        n = 1
        for rep in range(a.reps):
            for variant, config in VARIANTS.items():
                stack.flush_redis()
                for key, value in config.items():
                    stack.r.config_set(key, value)
                time.sleep(1)  # let the switch (and its AOF rewrite) settle
                res, _, _, extra = load_phase(
                    stack, stack.api_port, PushStream(templates, n), probe, cfg, rate=rate, connections=64
                )
                busiest = extra["api_busiest_share"]
                machine_stall = extra["machine_stall_ms"]
                n += 1
                s = load.summarize(res)
                lat: dict[str, float] = s["latency_ms"]  # type: ignore[assignment]
                stalls = extra["redis_stalls_ms"]
                phases.append(
                    {
                        "rep": rep + 1,
                        "variant": variant,
                        **s,
                        "redis_stalls_ms": stalls,
                        "busiest": busiest,
                        "machine_stall_ms": machine_stall,
                    }
                )
                print(
                    f"{variant:<17} {s['ok_per_s']:>7} pushes/s  p50 {lat['p50']:>6}  p90 {lat['p90']:>6}"
                    f"  p99 {lat['p99']:>7}  max {lat['max']:>7}  busiest api process {busiest}"
                    f"  machine stall {machine_stall} ms  redis stalls {stalls}",
                    flush=True,
                )
                stack.r.config_set("appendonly", "yes")
    finally:
        stack.close()
    print(f"\nmedians of {a.reps} phases at {rate:.0f} pushes/s, {a.api_procs} api process(es), {a.size}-record pushes")
    medians: dict[str, dict[str, float]] = {}
    for variant in VARIANTS:
        mine = [x["latency_ms"] for x in phases if x["variant"] == variant]
        medians[variant] = {q: statistics.median(m[q] for m in mine) for q in ("p50", "p90", "p99", "max")}
        m = medians[variant]
        print(f"  {variant:<17} p50 {m['p50']:>6.1f}  p90 {m['p90']:>6.1f}  p99 {m['p99']:>7.1f}  max {m['max']:>7.1f}")
    report = {
        "command": "python -m bench.latency " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "rate": rate,
        "api": f"{a.api_procs} processes, " + ("SO_REUSEPORT sockets" if a.reuse_port else "uvicorn --workers"),
        "medians": medians,
        "phases": phases,
    }
    with open(a.out, "w") as f:
        f.write(json.dumps(report, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
