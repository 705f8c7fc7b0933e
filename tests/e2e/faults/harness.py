"""What every fault scenario shares: the api and worker processes, the queue's state, the rows.

The scenarios drive the service with clients that behave as the real CLI does
(tests/e2e/faults/cli_client.py, SPEC 2.5) and settle and count the outcome with
tests/e2e/faults/cli_harness.py: every push a client saw acknowledged must be
`processed` in `pushes`, every record table must hold exactly the records sent,
each once, and no client may have given up on a push (its records would be lost).
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import psycopg
from psycopg import sql
from redis import Redis

from queueing.queue_state import QueueState, read_snapshot
from runtime.settings import Settings
from tests.e2e.rows import ID_COLUMNS
from tests.e2e.stack import BIN, REPO, Service, Stack, answers_healthz, free_port, log_config_args

# How long the queue may take to drain after a fault. Abandoned batches wait out the job timeout
# (5 s) + grace (10 s); a batch whose worker died between taking it and starting it waits in RQ's
# intermediate queue for 60 s; after Redis restarts, retries wait for RQ's scheduler lock to expire
# (scheduler interval + 60 s); then the backlog.
DRAIN_TIMEOUT_S = 120.0
SUPERVISE_S = 0.2
RESTART_BACKOFF_S = 1.0  # a worker that exited is restarted at most this often (as systemd's RestartSec)


@dataclass
class ApiProcess:
    """A running api; the port stays the same across restarts, as behind a load balancer."""

    stack: Stack
    port: int
    service: Service
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, stack: Stack, port: int | None = None, **env: str) -> ApiProcess:
        port = port or free_port()
        argv = [str(BIN / "uvicorn"), "api.app:create_app", "--factory", "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--no-access-log", *log_config_args(Path(stack.env.get("PYTHONPATH") or REPO))]
        api = cls(stack, port, stack.start("api", argv, **env), env)
        stack.wait_until(api.healthy, f"the api on port {port} answers GET /healthz")
        return api

    def healthy(self) -> bool:
        return answers_healthz(self.service, self.url)

    def restart(self, kill: bool = False) -> ApiProcess:
        """SIGTERM (graceful: in-flight requests finish) or SIGKILL, then a new api on the same port."""
        if kill:
            self.service.kill()
        self.service.stop()
        return ApiProcess.start(self.stack, self.port, **self.env)


class WorkerPool:
    """Keeps `size` worker processes running, as a process manager would, and counts what it did.

    A thread checks every SUPERVISE_S that each worker is alive and starts a new one
    for each that exited on its own (e.g. on losing Redis), at most one per
    RESTART_BACKOFF_S. `close()` stops watching
    (the `worker_pool` fixture calls it before the stack stops the processes).
    """

    def __init__(self, stack: Stack, size: int) -> None:
        self.stack = stack
        self._lock = threading.Lock()
        self.workers: list[Service] = [stack.start_worker() for _ in range(size)]
        self.replaced_after_exit = 0
        self._closed = threading.Event()
        self._last_restart = 0.0
        self._thread = threading.Thread(target=self._watch, name="worker-pool", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._closed.wait(SUPERVISE_S):
            with self._lock:
                if self._closed.is_set():
                    return
                dead = [w for w in self.workers if not w.alive()]
                if dead and time.monotonic() - self._last_restart >= RESTART_BACKOFF_S:
                    self._last_restart = time.monotonic()
                    self.replaced_after_exit += 1
                    self._replace(dead[0])

    def _replace(self, worker: Service) -> Service:
        self.workers.remove(worker)
        new = self.stack.start_worker()
        self.workers.append(new)
        return new

    def oldest(self) -> Service:
        with self._lock:
            return self.workers[0]

    def kill_and_replace(self, victim: Service) -> Service:
        """SIGKILL one worker process alone (as the OOM killer would) and start a replacement at once."""
        with self._lock:
            victim.kill()
            return self._replace(victim)

    def close(self) -> None:
        with self._lock:
            self._closed.set()
        self._thread.join(timeout=10)


def queue_state(redis: Redis, settings: Settings) -> QueueState:
    return read_snapshot(redis, settings.queues, time.time())  # every shard, and the unsharded queue


def queue_quiet(redis: Redis, settings: Settings) -> bool:
    """Nothing queued, being written or waiting for a retry (failed batches may remain)."""
    s = queue_state(redis, settings)
    return s.depth == 0 and s.started == 0 and s.scheduled == 0


def push_rows(conn: psycopg.Connection, workspace_id: str) -> dict[str, tuple[str, dict[str, int], str | None]]:
    rows = conn.execute(
        "SELECT push_id, status, accepted, error FROM pushes WHERE workspace_id = %s", (workspace_id,)
    ).fetchall()
    return {push_id: (status, accepted, error) for push_id, status, accepted, error in rows}


def record_ids(conn: psycopg.Connection, workspace_id: str) -> dict[str, list[str]]:
    found = {}
    for table, column in ID_COLUMNS.items():
        query = sql.SQL("SELECT {id} FROM {table} WHERE workspace_id = %s ORDER BY 1").format(
            id=sql.Identifier(column), table=sql.Identifier(table)
        )
        found[table] = [row[0] for row in conn.execute(query, (workspace_id,))]
    return found


def replay_failed(stack: Stack, redis: Redis, settings: Settings) -> int:
    """`selftune-ingest replay --all` (after a dry run that must list the same batches); returns how many."""
    failed = queue_state(redis, settings).failed
    if failed == 0:
        return 0
    env = {**stack.env}
    dry = _cli(["replay", "--all", "--dry-run"], env)
    assert len(dry["would_replay"]) == failed, dry
    done = _cli(["replay", "--all"], env)
    assert done["replayed"] == failed, done
    return int(done["replayed"])


def _cli(args: list[str], env: dict[str, str]) -> Any:
    done = subprocess.run(
        [str(BIN / "selftune-ingest"), "--json", *args], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, f"selftune-ingest {' '.join(args)} exited {done.returncode}: {done.stderr}"
    return msgspec.json.decode(done.stdout)
