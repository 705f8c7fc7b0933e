"""How fast the workers drain a full queue, for several WORKER_JOBS_PER_TAKE values in one run.

`python -m bench.drain [--pushes 1500] [--sizes 100,500] [--takes 1,8] [--rounds 2]`

For each batch size, the api fills the queue with `--pushes` fresh pushes (the
workers stopped), then `selftune-ingest worker -n N` is started with one
WORKER_JOBS_PER_TAKE value and timed until every push is processed. Variants
alternate (1, 8, 1, 8, ...) so the machine's drift hits them alike. Reported per
variant: records/s drained, and CPU microseconds per record of the workers,
Redis and Postgres over the drain. Needs what `bench.run` needs (bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from typing import Any

import uvloop

from bench import load, procstat
from bench.gen import WORKSPACES, PushStream, make_templates
from bench.landed import push_counts, wait_processed
from bench.stack import DEFAULT_ADMIN_URL, Stack


async def _fill(stack: Stack, stream: PushStream, pushes: int, connections: int = 16) -> int:
    """Send exactly `pushes` fresh pushes to the api; return the records accepted."""
    target = load.Target(stack.api_port, stack.keys)
    left, records = pushes, 0

    async def one() -> None:
        nonlocal left, records
        conn = await target.connect()
        while left > 0:
            left -= 1
            push = stream.fresh_push(pushes - left)
            status, body = await conn.request(target.head(push), push.body)
            if status != 202:
                raise RuntimeError(f"the api answered {status}: {body[:200]!r}")
            records += push.records
        assert conn.transport is not None
        conn.transport.close()

    await asyncio.gather(*(one() for _ in range(connections)))
    return records


def _drain(stack: Stack, take: int, pushes: int, records: int) -> dict[str, Any]:
    os.environ["WORKER_JOBS_PER_TAKE"] = str(take)  # Stack.env() passes os.environ on
    ncpu = os.cpu_count() or 1
    stack.start_workers()
    assert stack.worker is not None and stack.redis is not None
    probe = procstat.Probe(
        pids={"redis": stack.redis.pid}, trees={"workers": stack.worker.pid, "postgres": stack.postmaster_pid}
    )
    before, t0 = probe.snapshot(), time.perf_counter()
    ok = wait_processed(stack, pushes, timeout=600)
    seconds, after = time.perf_counter() - t0, probe.snapshot()
    stack.stop_workers()
    if not ok:
        raise RuntimeError(f"the workers did not drain the queue: {push_counts(stack)}")
    cpu = procstat.cpu_report(before, after, records, ncpu)
    return {"take": take, "seconds": round(seconds, 2), "records_per_s": round(records / seconds), "cpu": cpu}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pushes", type=int, default=1500)
    parser.add_argument("--sizes", default="100,500")
    parser.add_argument("--takes", default="1,8")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--pg-admin-url", default=os.environ.get("BENCH_PG_ADMIN_URL", DEFAULT_ADMIN_URL))
    args = parser.parse_args()
    stack = Stack(args.pg_admin_url, workers=args.workers)
    results: dict[tuple[int, int], list[dict[str, Any]]] = {}
    try:
        stack.setup_database(WORKSPACES)
        stack.start_redis()
        stack.start_api()
        phase = 0
        for size in (int(s) for s in args.sizes.split(",")):
            templates = make_templates(size)
            for _ in range(args.rounds):
                for take in (int(t) for t in args.takes.split(",")):
                    stack.truncate()
                    stack.flush_redis()
                    phase += 1
                    pushes = args.pushes if size <= 100 else max(1, args.pushes // 4)
                    records = uvloop.run(_fill(stack, PushStream(templates, 200 + phase), pushes))
                    r = _drain(stack, take, pushes, records)
                    results.setdefault((size, take), []).append(r)
                    print(
                        f"{size}-record, take {take}: {r['records_per_s']:,} records/s"
                        f" ({pushes} pushes in {r['seconds']} s); us/record {r['cpu']['us_per_record']}",
                        flush=True,
                    )
    finally:
        stack.close()
    print("\nmedians                       records/s   us/record: workers  redis  postgres")
    for (size, take), rs in results.items():
        us = [r["cpu"]["us_per_record"] for r in rs]
        print(
            f"{size:>4}-record, take {take:<3}"
            f"{statistics.median(r['records_per_s'] for r in rs):>15,.0f}"
            f"{statistics.median(u.get('workers', 0) for u in us):>20.1f}"
            f"{statistics.median(u.get('redis', 0) for u in us):>7.1f}"
            f"{statistics.median(u.get('postgres', 0) for u in us):>10.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
