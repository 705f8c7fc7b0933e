"""The benchmark's own stack on 127.0.0.1: its database, its Redis, its api and workers.

- Postgres: the dev cluster (127.0.0.1:5432, `scripts/services.sh up dev`), in a
  database of its own, `selftune_bench`, created and migrated here, truncated
  between phases. The test database and the dev database are never touched.
- Redis: a redis-server started here on a free port, with its data in a
  temporary directory, configured as production (append-only, everysec,
  noeviction), and shut down at the end.
- The api (one uvicorn process, uvloop, httptools, no access log), the raw
  Redis baseline endpoint (same), and `selftune-ingest worker -n N`.

Every process runs in a session of its own and is stopped (SIGTERM, then
SIGKILL) by its process group id, however the benchmark ended.

The code they run is a snapshot: api/, workers/, schema/ and bench/ are copied
to a temporary directory when the stack is made, and every process runs from
there (cwd and PYTHONPATH), so edits to the work tree during a run (another
session, your editor) cannot mix two versions of the code in one result.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from redis import Redis

from bench import procstat
from bench.stallprobe import longest_stall_ms
from ops import accounts
from store.migrate import migrate
from workers.tables import TABLES

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
BENCH_DB = "selftune_bench"
QUEUE_KEY = "rq:queue:ingest"
STOP_S = 15.0

# Tables emptied between phases (accounts stay).
DATA_TABLES = ["pushes", "quarantine", *(t.name for t in TABLES.values())]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, condition, timeout: float = 30.0, proc: Service | None = None):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            value = condition()
            if value:
                return value
        if proc is not None and not proc.alive():
            raise RuntimeError(
                f"{proc.name} exited with {proc.proc.returncode} while waiting for {what}:\n{proc.tail()}"
            )
        if time.monotonic() > deadline:
            extra = f"\n{proc.tail()}" if proc else ""
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}{extra}")
        time.sleep(0.05)


SNAPSHOT_DIRS = ("api", "workers", "ops", "schema", "spool", "queueing", "runtime", "store", "bench")


def code_digest(root: Path) -> str:
    """sha256 (12 hex digits) of the product code under root: api/, workers/, schema/ (.py, .sql)."""
    digest = hashlib.sha256()
    for name in SNAPSHOT_DIRS[:3]:
        for path in sorted((root / name).rglob("*")):
            if path.is_file() and path.suffix in (".py", ".sql") and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(root)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def snapshot_code(dest: Path) -> str:
    """Copy the code the processes run to `dest`; return its code_digest."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "results")
    for name in SNAPSHOT_DIRS:
        shutil.copytree(REPO / name, dest / name, ignore=ignore)
    return code_digest(dest)


class Service:
    """A started process (its own session), with its log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path, cwd: Path = REPO) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=STOP_S)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=STOP_S)


def _http_ok(port: int, path: str = "/healthz") -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        return s.recv(64).startswith(b"HTTP/1.1 200")


REDIS_STALL_MS = 5


class Stack:
    """Everything the benchmark starts; `close()` stops all of it."""

    def __init__(
        self, admin_url: str = DEFAULT_ADMIN_URL, workers: int = 4, keep_logs: bool = False, api_procs: int = 1
    ) -> None:
        self.admin_url = admin_url
        self.workers_n = workers
        self.api_procs = api_procs
        self.tmp = Path(tempfile.mkdtemp(prefix="selftune-bench-"))
        self.src = self.tmp / "src"
        self.code_digest = snapshot_code(self.src)
        self.keep_logs = keep_logs
        parts = urlsplit(admin_url)
        self.database_url = urlunsplit(parts._replace(path="/" + BENCH_DB))
        self.redis: Service | None = None
        self.redis_port = 0
        self.api: Service | None = None
        self.api_port = 0
        self.raw: Service | None = None
        self.raw_port = 0
        self.worker: Service | None = None
        self.stall_probe: Service | None = None
        self.machine_stalls_path = self.tmp / "machine-stalls.txt"
        self.workspaces: list[str] = []
        self.keys: list[str] = []
        self.postmaster_pid = 0
        self._db: psycopg.Connection | None = None
        self._redis_client: Redis | None = None

    # -- environment -----------------------------------------------------------------

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONPATH": str(self.src),
            "PYTHONUNBUFFERED": "1",
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
            # The load stands for many CLIs, sent with a few keys: no per-key rate limit.
            "RATE_LIMIT_PUSHES_PER_S": "0",
        }

    # -- Postgres -----------------------------------------------------------------------

    def setup_database(self, workspaces: int) -> None:
        """Create and migrate selftune_bench; fresh workspaces and keys; find the cluster's postmaster."""
        try:
            admin = psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as exc:
            raise RuntimeError(
                f"cannot reach Postgres at {self.admin_url} ({exc}).\n"
                "Start the dev services with `scripts/services.sh up dev` (or pass --pg-admin-url)."
            ) from None
        with admin:
            exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (BENCH_DB,)).fetchone()
            if not exists:
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(BENCH_DB)))
        conn = psycopg.connect(self.database_url, connect_timeout=5)
        migrate(conn)
        conn.close()
        self._db = psycopg.connect(self.database_url, autocommit=True)
        self._db.execute("SET timezone TO 'UTC'")
        backend = self._db.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        self.postmaster_pid = procstat.ppid_of(backend) or 0
        if not self.postmaster_pid or not Path(f"/proc/{self.postmaster_pid}").exists():
            raise RuntimeError("Postgres must run on this machine (its CPU is read from /proc)")
        tables = sql.SQL(", ").join(sql.Identifier(t) for t in [*DATA_TABLES, "api_keys", "workspaces"])
        self._db.execute(sql.SQL("TRUNCATE {} CASCADE").format(tables))
        self.workspaces, self.keys = [], []
        for i in range(workspaces):
            ws = accounts.create_workspace(self._db, f"bench-{i}")
            _, key = accounts.create_key(self._db, ws)
            self.workspaces.append(ws)
            self.keys.append(key)

    @property
    def db(self) -> psycopg.Connection:
        assert self._db is not None
        return self._db

    def truncate(self) -> None:
        """Empty the record tables, pushes and quarantine; checkpoint so no checkpoint lands mid-phase."""
        tables = sql.SQL(", ").join(sql.Identifier(t) for t in DATA_TABLES)
        self.db.execute(sql.SQL("TRUNCATE {}").format(tables))
        with contextlib.suppress(psycopg.Error):  # needs superuser; skipped if the admin URL is not one
            self.db.execute("CHECKPOINT")

    # -- Redis -----------------------------------------------------------------------

    def start_redis(self) -> None:
        if not shutil.which("redis-server"):
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.redis_port = free_port()
        data = self.tmp / "redis"
        data.mkdir()
        argv = [
            "redis-server", "--bind", "127.0.0.1", "--port", str(self.redis_port), "--dir", str(data),
            "--daemonize", "no", "--appendonly", "yes", "--appendfsync", "everysec",
            "--maxmemory-policy", "noeviction", "--save", "", "--protected-mode", "yes", "--rdbcompression", "no",
            "--auto-aof-rewrite-min-size", "1gb",
            # Redis's own record of its event loop's stalls (a fork, an AOF write, a slow
            # command) of REDIS_STALL_MS or more: read per phase, to tell them from the api's.
            "--latency-monitor-threshold", str(REDIS_STALL_MS),
            "--slowlog-log-slower-than", str(REDIS_STALL_MS * 1000),
        ]  # fmt: skip
        self.redis = Service("redis", argv, self.env(), self.tmp)
        client = Redis.from_url(self.redis_url)
        wait_for("redis to answer PING", client.ping, proc=self.redis)
        self._redis_client = client

    @property
    def r(self) -> Redis:
        assert self._redis_client is not None
        return self._redis_client

    def flush_redis(self) -> None:
        """Empty Redis and shrink its append-only file (so phases start alike)."""
        self.r.flushall()
        # Hand the freed memory back to the OS now, not in the middle of the next phase.
        with contextlib.suppress(Exception):
            self.r.execute_command("MEMORY", "PURGE")
        with contextlib.suppress(Exception):
            self.r.bgrewriteaof()
        wait_for(
            "the AOF rewrite",
            lambda: (
                self.r.info("persistence").get("aof_rewrite_in_progress") == 0
                and self.r.info("persistence").get("aof_rewrite_scheduled") == 0
            ),
            timeout=60,
        )

    def reset_redis_stalls(self) -> None:
        self.r.execute_command("LATENCY", "RESET")
        self.r.slowlog_reset()

    def slow_commands(self, n: int = 5) -> list[dict[str, Any]]:
        """Redis's slowest commands since the last reset (SLOWLOG, REDIS_STALL_MS or more): ms and the command's head."""
        out = []
        for e in self.r.slowlog_get(128):
            head = e["command"][:60]
            out.append(
                {
                    "ms": round(e["duration"] / 1000, 1),
                    "at": e["start_time"],
                    "command": head.decode(errors="replace") if isinstance(head, bytes) else str(head),
                }
            )
        return sorted(out, key=lambda x: -x["ms"])[:n]

    def redis_stalls(self) -> dict[str, int]:
        """The longest stall (ms) of Redis's event loop per kind since the last reset (LATENCY LATEST)."""
        latest = self.r.execute_command("LATENCY", "LATEST")
        return {(e[0].decode() if isinstance(e[0], bytes) else str(e[0])): int(e[3]) for e in latest}

    def queue_depth(self) -> int:
        return int(self.r.llen(QUEUE_KEY))

    # -- api, baseline endpoint, workers ----------------------------------------------------

    def _served_env(self, name: str) -> dict[str, str]:
        """The environment of an app served by api_procs processes."""
        env = self.env()
        if self.api_procs > 1:  # the api's /metrics then shares counters between its processes
            metrics_dir = self.tmp / f"metrics-{name}"
            metrics_dir.mkdir(exist_ok=True)
            env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        return env

    def _uvicorn(self, name: str, app: str) -> tuple[Service, int]:
        port = free_port()
        argv = [
            str(BIN / "uvicorn"), app, "--factory", "--host", "127.0.0.1", "--port", str(port),
            "--no-access-log", "--loop", "uvloop", "--http", "httptools", "--workers", str(self.api_procs),
        ]  # fmt: skip
        svc = Service(name, argv, self._served_env(name), self.tmp, cwd=self.src)
        wait_for(f"{name} GET /healthz on :{port}", lambda: _http_ok(port), proc=svc)
        return svc, port

    def start_api(self, reuse_port: bool = False) -> None:
        """The api, as `uvicorn --workers N`; or, with reuse_port, N processes on N SO_REUSEPORT sockets."""
        if not reuse_port:
            self.api, self.api_port = self._uvicorn("api", "api.app:create_app")
            return
        port = free_port()
        argv = [str(BIN / "python"), "-m", "bench.reuseport_serve", str(self.api_procs), str(port)]
        self.api, self.api_port = Service("api", argv, self._served_env("api"), self.tmp, cwd=self.src), port
        # Every process must be listening before the load starts, or the first takes all connections.
        wait_for(
            f"{self.api_procs} api processes on :{port}",
            lambda: _http_ok(port) and len(procstat.tree_of(self.api.pid)) > self.api_procs,  # type: ignore[union-attr]
            proc=self.api,
        )
        time.sleep(2)

    def start_raw(self) -> None:
        self.raw, self.raw_port = self._uvicorn("raw-redis", "bench.raw_redis_app:create_app")

    def start_workers(self, n: int | None = None) -> None:
        n = n or self.workers_n
        argv = [str(BIN / "selftune-ingest"), "worker", "-n", str(n)]
        self.worker = Service("workers", argv, self.env(), self.tmp, cwd=self.src)
        wait_for(f"{n} RQ workers to register", lambda: self.r.scard("rq:workers") >= n, proc=self.worker)

    def worker_pids(self) -> list[int]:
        """The worker processes proper (children of `selftune-ingest worker -n N`; N=1 runs in it)."""
        if self.worker is None:
            return []
        kids = procstat.children_of(self.worker.pid)
        return kids or [self.worker.pid]

    def stop_workers(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        with contextlib.suppress(Exception):
            self.r.delete("rq:workers")

    # -- the machine's own stalls ------------------------------------------------------------

    def start_stall_probe(self) -> None:
        """Run bench/stallprobe.py (real-time priority) for the whole bench: see machine_stall_ms."""
        argv = [sys.executable, "-m", "bench.stallprobe", str(self.machine_stalls_path)]
        self.stall_probe = Service("stallprobe", argv, self.env(), self.tmp, cwd=self.src)

    def machine_stall_ms(self, since: float, until: float) -> float | None:
        """The longest time (ms) the machine kept a real-time process from running in [since, until) (wall clock).

        None without a probe, or when the probes could not get real-time priority.
        """
        if self.stall_probe is None:
            return None
        return longest_stall_ms(self.machine_stalls_path, since, until)

    def close(self) -> None:
        for svc in (self.stall_probe, self.worker, self.raw, self.api):
            if svc is not None:
                with contextlib.suppress(Exception):
                    svc.stop()
        if self._redis_client is not None:
            with contextlib.suppress(Exception):
                self._redis_client.shutdown(nosave=True)
            self._redis_client.close()
        if self.redis is not None:
            self.redis.stop()
        if self._db is not None:
            self._db.close()
        if not self.keep_logs:
            shutil.rmtree(self.tmp, ignore_errors=True)
