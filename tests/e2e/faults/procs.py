"""The processes of a worker pool (`selftune-ingest worker -n N`), read from /proc, and RQ's view of them.

A pool is a supervisor with N worker children and one scheduler child; the test
stack starts each pool in a session of its own, so any process of that session
whose parent is not the supervisor (PPID 1: an orphan) was left behind by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from redis import Redis
from rq.scheduler import RQScheduler

from queueing.rq_compat import scheduler_key, workers_key
from runtime.settings import Settings


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    sid: int


def processes() -> list[Proc]:
    """Every live (not zombie) process on the machine."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        # pid (comm) state ppid pgrp session ...; comm may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] == "Z":
            continue
        found.append(Proc(int(entry.name), int(fields[1]), int(fields[3])))
    return found


def children(pid: int) -> list[int]:
    return sorted(p.pid for p in processes() if p.ppid == pid)


def session_strays(sid: int) -> list[Proc]:
    """Processes of the session started as `sid` other than its leader and the leader's children."""
    return [p for p in processes() if p.sid == sid and p.pid != sid and p.ppid != sid]


def rq_worker_pids(redis: Redis, settings: Settings) -> dict[int, str]:
    """pid -> state of each RQ worker registered for the queue whose hash still exists."""
    found = {}
    for key in redis.smembers(workers_key(settings.queue_name)):
        pid, state = redis.hmget(key, "pid", "state")
        if pid is not None:
            found[int(pid)] = state.decode() if isinstance(state, bytes) else str(state or "")
    return found


def scheduler_pid(redis: Redis, settings: Settings) -> int | None:
    """The pid of the scheduler holding the queue's scheduler lock, if one does and is registered."""
    name = redis.get(RQScheduler.get_locking_key(settings.queue_name))
    if name is None:
        return None
    pid = redis.hget(scheduler_key(name.decode() if isinstance(name, bytes) else name), "pid")
    return int(pid) if pid else None


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie, dead but not yet reaped, does not)."""
    return any(p.pid == pid for p in processes())
