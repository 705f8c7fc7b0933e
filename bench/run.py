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
With --baseline-ref REF, the code of git REF (exported beside the snapshot, its
own database, api and workers) then runs e2e-sat and e2e-half too, right after
the work tree's, in every run: new, old, new, old...

The modules: bench/stack.py (what runs), bench/phase.py (one phase of load),
bench/phases.py (the phases in order), bench/report.py (headline, table, targets).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.gen import WORKSPACES, make_templates
from bench.phase import PUSHES_PER_CONNECTION, RESULTS, Config, api_peak_rss_mb
from bench.phases import run_size
from bench.report import check_targets, headline, machine, medians, table
from bench.snapshot import REPO, code_digest
from bench.stack import Stack


def parse_args(argv: list[str] | None) -> tuple[Config, argparse.Namespace]:
    """The command line as a Config (and the options that are not the phases': --pg-admin-url, --out, --keep-logs)."""
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
    p.add_argument(
        "--baseline-ref",
        default="",
        metavar="REF",
        help="also run the e2e phases on the code of git REF (e.g. 73e85d7), alternated with the work tree's;"
        " the table adds the baseline's rows and new / baseline",
    )
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
        baseline_ref=a.baseline_ref,
    )
    return cfg, a


def main(argv: list[str] | None = None) -> int:
    """Run the bench; print the table; write the results JSON."""
    cfg, a = parse_args(argv)
    started = time.time()
    info = machine()
    print(f"selftune ingest bench: {info['nproc']} x {info['cpu_model']}, {cfg.workers} workers, "
          f"{cfg.api_procs} api process(es), {cfg.pushes_per_connection or 'all'} pushes per connection, "
          f"phases {cfg.warmup:g}+{cfg.duration:g} s, sizes {cfg.sizes}, runs {cfg.runs}"
          + (f", baseline {cfg.baseline_ref}" if cfg.baseline_ref else "")
          + (", PROFILING (py-spy attached: numbers are slower)" if cfg.profile else ""), flush=True)  # fmt: skip
    templates = {size: make_templates(size, seed=cfg.seed) for size in cfg.sizes}
    stack = Stack(a.pg_admin_url, workers=cfg.workers, keep_logs=a.keep_logs, api_procs=cfg.api_procs)
    baseline: Stack | None = None
    runs: list[dict[int, dict[str, Any]]] = []
    api_rss = None
    try:
        stack.setup_database(WORKSPACES)
        stack.start_stall_probe()
        stack.start_redis()
        stack.start_api()
        stack.start_raw()
        print(f"stack: postgres {stack.database_url}, redis :{stack.redis.port}, api :{stack.api_port}, "
              f"raw endpoint :{stack.raw_port}, logs {stack.tmp}", flush=True)  # fmt: skip
        if cfg.baseline_ref:
            baseline = stack.baseline(cfg.baseline_ref)
            baseline.setup_database(WORKSPACES)
            baseline.start_api()
            print(f"baseline: git {cfg.baseline_ref} = {baseline.ref} (snapshot {baseline.code_digest}), postgres "
                  f"{baseline.database_url}, api :{baseline.api_port}, code {baseline.src}", flush=True)  # fmt: skip
        for run in range(cfg.runs):
            runs.append({size: run_size(stack, cfg, size, templates[size], run, baseline) for size in cfg.sizes})
        api_rss = api_peak_rss_mb(stack)
    finally:
        if baseline is not None:
            baseline.close()
        stack.close()
    changed = code_digest(REPO) != stack.code_digest
    code_note: dict[str, Any] = {
        "git_head": info["git_head"],
        "dirty_files": info["git_dirty_files"],
        "snapshot_digest": stack.code_digest,
        "work_tree_changed_during_run": changed,
    }
    if baseline is not None:
        code_note["baseline"] = {"ref": cfg.baseline_ref, "commit": baseline.ref, "digest": baseline.code_digest}
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
        + (f"; baseline git {baseline.ref}, snapshot {baseline.code_digest}" if baseline is not None else "")
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
