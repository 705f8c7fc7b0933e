"""CPU time and peak memory of processes, from /proc (Linux only).

CPU of a process *tree* is the sum, over its live members, of utime + stime +
cutime + cstime: a child that exited was reaped by a live member of the tree,
whose cutime/cstime then holds it, so every CPU second is counted once
(Postgres backends that disconnect, Redis's AOF-rewrite children, ...).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    return raw[raw.rindex(")") + 2 :].split()


def cpu_seconds(pid: int, children: bool = True) -> float:
    """utime + stime (+ cutime + cstime) of one process, in seconds; 0 if it is gone."""
    f = _stat_fields(pid)
    if f is None:
        return 0.0
    # After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    ticks = int(f[11]) + int(f[12])
    if children:
        ticks += int(f[13]) + int(f[14])
    return ticks / CLK_TCK


def ppid_of(pid: int) -> int | None:
    f = _stat_fields(pid)
    return int(f[1]) if f else None


def _all_ppids() -> dict[int, int]:
    out: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            parent = ppid_of(int(name))
            if parent is not None:
                out[int(name)] = parent
    return out


def children_of(pid: int, ppids: dict[int, int] | None = None) -> list[int]:
    ppids = ppids if ppids is not None else _all_ppids()
    return sorted(p for p, parent in ppids.items() if parent == pid)


def tree_of(root: int, ppids: dict[int, int] | None = None) -> list[int]:
    """root and all of its descendants that are alive now."""
    ppids = ppids if ppids is not None else _all_ppids()
    kids: dict[int, list[int]] = {}
    for p, parent in ppids.items():
        kids.setdefault(parent, []).append(p)
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        if p in ppids or p == root:
            out.append(p)
            todo.extend(kids.get(p, ()))
    return out


def tree_cpu_seconds(root: int) -> float:
    return sum(cpu_seconds(p) for p in tree_of(root))


def cmdline(pid: int) -> bytes:
    """A process's command line (NUL-separated), empty if it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return b""


def status_kb(pid: int, key: str) -> int | None:
    """A field of /proc/<pid>/status in kB (VmHWM = peak RSS, VmRSS = current RSS)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def peak_rss_mb(pid: int) -> float | None:
    kb = status_kb(pid, "VmHWM")
    return None if kb is None else kb / 1024


def machine_cpu() -> dict[str, float]:
    """Seconds of CPU the whole machine spent busy (all cores), and stolen by the hypervisor."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    v = [int(x) for x in parts] + [0] * (10 - len(parts))
    user, nice, system, _idle, _iowait, irq, softirq, steal = v[:8]
    return {"busy": (user + nice + system + irq + softirq) / CLK_TCK, "steal": steal / CLK_TCK}


@dataclass
class Probe:
    """Named processes (or trees) to measure; `snapshot()` reads them all at once."""

    pids: dict[str, int] = field(default_factory=dict)  # single processes
    trees: dict[str, int] = field(default_factory=dict)  # process trees, by root pid

    def snapshot(self) -> dict[str, float]:
        snap = {"t": time.monotonic(), "wall": time.time()}
        for name, pid in self.pids.items():
            snap[name] = cpu_seconds(pid)
        if self.trees:
            ppids = _all_ppids()
            for name, root in self.trees.items():
                snap[name] = sum(cpu_seconds(p) for p in tree_of(root, ppids))
        m = machine_cpu()
        snap["_machine_busy"] = m["busy"]
        snap["_machine_steal"] = m["steal"]
        return snap


def cpu_report(before: dict[str, float], after: dict[str, float], records: int, ncpu: int) -> dict[str, object]:
    """CPU per record (us) of each measured process, and how busy the machine was meanwhile."""
    seconds = after["t"] - before["t"]
    names = [k for k in before if not k.startswith("_") and k not in ("t", "wall")]
    used = {k: max(0.0, after[k] - before[k]) for k in names}
    ours = sum(used.values())
    busy = after["_machine_busy"] - before["_machine_busy"]
    steal = after["_machine_steal"] - before["_machine_steal"]
    cap = seconds * ncpu
    return {
        "seconds": round(seconds, 3),
        "cpu_s": {k: round(v, 3) for k, v in used.items()},
        "us_per_record": {k: (round(v / records * 1e6, 2) if records else None) for k, v in used.items()},
        "cores_used": {k: round(v / seconds, 3) for k, v in used.items()} if seconds else {},
        "machine_busy_pct": round(100 * busy / cap, 1) if cap else None,
        # Busy time not accounted to the processes above: other users of the machine (noise).
        "foreign_pct": round(100 * max(0.0, busy - ours) / cap, 1) if cap else None,
        "steal_pct": round(100 * steal / cap, 1) if cap else None,
    }


def alive(pids: Iterable[int]) -> list[int]:
    return [p for p in pids if _stat_fields(p) is not None]
