"""How long the machine itself keeps a ready process from running: a real-time priority probe.

`python -m bench.stallprobe FILE` runs one probe per CPU, each pinned to its
CPU: it sleeps 1 ms in a loop at SCHED_FIFO priority (falling back to normal
priority where that is not allowed) and appends to FILE every wake-up that came
`STALL_MS` or more late, as "unix-time late-ms cpu" (after a first line,
"policy fifo|normal cpu N"). A real-time process
preempts every ordinary one, so what it sees late is the machine (the
hypervisor, the kernel, neighbours on the host), not our processes'
contention; pinned, each sees the stalls of its own vCPU (a host can stop one
vCPU and not the other). `bench.run` and `bench.latency` report the longest per phase.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

STALL_MS = 5.0


def longest_stall_ms(path: Path, since: float, until: float) -> float | None:
    """The longest stall the probes logged in [since, until) (0 if none); None if a probe ran without real-time priority."""
    if not path.exists():
        return 0.0
    longest = 0.0
    for line in path.read_text().splitlines():
        fields = line.split()
        if fields[:1] == ["policy"]:
            if fields[1] != "fifo":
                return None  # it also saw our own processes' contention: not the machine's stalls
            continue
        try:
            at, ms = float(fields[0]), float(fields[1])
        except (IndexError, ValueError):  # a line being written while we read
            continue
        if since <= at < until:
            longest = max(longest, ms)
    return longest


def probe(out: Path, cpu: int) -> None:
    """Watch one CPU until killed."""
    os.sched_setaffinity(0, {cpu})
    # Where real-time priority is not allowed it runs at normal priority, and then also
    # sees the contention of our own processes.
    with contextlib.suppress(OSError):
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    policy = "fifo" if os.sched_getscheduler(0) == os.SCHED_FIFO else "normal"
    with out.open("a") as f:
        f.write(f"policy {policy} cpu {cpu}\n")
        f.flush()
        while True:
            t = time.perf_counter()
            time.sleep(0.001)
            late = (time.perf_counter() - t - 0.001) * 1000
            if late >= STALL_MS:
                f.write(f"{time.time():.3f} {late:.1f} {cpu}\n")
                f.flush()


def main() -> int:
    out = Path(sys.argv[1])
    cpus = sorted(os.sched_getaffinity(0))
    for cpu in cpus[1:]:
        if os.fork() == 0:
            try:
                probe(out, cpu)
            finally:
                os._exit(1)
    probe(out, cpus[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
