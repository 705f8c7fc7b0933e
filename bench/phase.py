"""One phase of load against the stack: the load itself, the CPU probe around its window, the api's processes.

`load_phase` runs bench/load.py's client for one phase (warm-up, then the
measured window), snapshots the probed processes' CPU at the window's edges,
optionally holds the client back while the queue is deep (the e2e phases), and
adds what Redis and the machine stalled meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any

import uvloop
from redis.asyncio import Redis as AsyncRedis

from bench import load, procstat
from bench.gen import PushStream
from bench.snapshot import REPO
from bench.stack import QUEUE_KEYS, Stack

RESULTS = REPO / "bench" / "results"

# A `selftune sync` opens a connection, sends its pending records in a few pushes
# and exits; the load's connections do the same, so uvicorn's processes share
# them as they would a fleet's. (Kept all phase long, the 64 connections opened
# at once may all be accepted by one process: bench/README.md.)
PUSHES_PER_CONNECTION = 8


@dataclass
class Config:
    """The options of a bench run (bench.run's command line)."""

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
    baseline_ref: str = ""  # a git ref whose code also runs the e2e phases, alternated with the work tree's


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
                pipe = r.pipeline(transaction=False)
                for key in QUEUE_KEYS:
                    pipe.llen(key)
                d = sum(int(n) for n in await pipe.execute())
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
