"""The benchmark's own stack on 127.0.0.1: its database, its Redis, its api and workers.

- Postgres: the dev cluster (127.0.0.1:5432, `scripts/services.sh up dev`), in a
  database of its own, `selftune_bench`, created and migrated here, truncated
  between phases. The test database and the dev database are never touched.
- Redis: a redis-server started here on a free port (bench/redis_server.py).
- The api (uvicorn, uvloop, httptools, no access log), the raw Redis baseline
  endpoint (same), and `selftune-ingest worker -n N`, all running the
  snapshot of the code (bench/snapshot.py) and stopped by their process group
  (bench/procs.py), however the benchmark ended.
- With a baseline (`Stack.baseline(ref)`): a second stack for the code of a git
  ref, with its own exported tree, database (`selftune_bench_base`, migrated
  and given its workspaces and keys by that code's own CLI), api and workers,
  sharing this stack's Redis, stall probe and temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from bench import procstat
from bench.procs import Service, free_port, http_ok, wait_for
from bench.redis_server import QUEUE_KEYS, BenchRedis
from bench.snapshot import BIN, REPO, cli_argv, code_digest, export_ref, run_cli, snapshot_code
from bench.stallprobe import longest_stall_ms
from ops import accounts
from store.migrate import migrate
from workers.tables import TABLES

__all__ = ["BIN", "DEFAULT_ADMIN_URL", "QUEUE_KEYS", "REPO", "Stack", "code_digest"]

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
BENCH_DB = "selftune_bench"
BASELINE_DB = "selftune_bench_base"

# Tables emptied between phases (accounts stay); a baseline's tree may lack some.
DATA_TABLES = ["pushes", "quarantine", *(t.name for t in TABLES.values())]


class Stack:
    """Everything the benchmark starts; `close()` stops all of it."""

    def __init__(
        self,
        admin_url: str = DEFAULT_ADMIN_URL,
        workers: int = 4,
        keep_logs: bool = False,
        api_procs: int = 1,
        *,
        host: Stack | None = None,
        ref: str = "",
    ) -> None:
        """The stack of the work tree's code; with `host` and `ref`, a baseline's beside it (see baseline())."""
        self.admin_url = admin_url
        self.workers_n = workers
        self.api_procs = api_procs
        self.keep_logs = keep_logs
        self.host = host
        if host is None:
            self.tmp = Path(tempfile.mkdtemp(prefix="selftune-bench-"))
            self.src = self.tmp / "src"
            self.ref = ""
            self.code_digest = snapshot_code(self.src)
            self.redis = BenchRedis(self.tmp, self.env)
            self.machine_stalls_path = self.tmp / "machine-stalls.txt"
            database = BENCH_DB
        else:
            self.tmp = host.tmp / "baseline"
            self.tmp.mkdir()
            self.src = self.tmp / "src"
            self.ref, self.code_digest = export_ref(ref, self.src)
            self.redis = host.redis
            self.machine_stalls_path = host.machine_stalls_path
            database = BASELINE_DB
        self.database_url = urlunsplit(urlsplit(admin_url)._replace(path="/" + database))
        self.api: Service | None = None
        self.api_port = 0
        self.raw: Service | None = None
        self.raw_port = 0
        self.worker: Service | None = None
        self.stall_probe: Service | None = None
        self.workspaces: list[str] = []
        self.keys: list[str] = []
        self.data_tables = DATA_TABLES
        self.postmaster_pid = 0
        self._db: psycopg.Connection | None = None

    def baseline(self, ref: str) -> Stack:
        """A stack for the code of git `ref` (exported beside the snapshot), on this stack's Redis; close it first."""
        return Stack(self.admin_url, self.workers_n, self.keep_logs, self.api_procs, host=self, ref=ref)

    # -- environment -----------------------------------------------------------------

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def env(self) -> dict[str, str]:
        """The environment of every process: the code's tree first on the path, the bench's servers."""
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
        """Create and migrate the bench's database; fresh workspaces and keys; find the cluster's postmaster.

        The work tree's stack does it in-process; a baseline's, with its own code's CLI.
        """
        try:
            admin = psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as exc:
            raise RuntimeError(
                f"cannot reach Postgres at {self.admin_url} ({exc}).\n"
                "Start the dev services with `scripts/services.sh up dev` (or pass --pg-admin-url)."
            ) from None
        database = urlsplit(self.database_url).path.lstrip("/")
        with admin:
            exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
            if not exists:
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        if self.host is None:
            conn = psycopg.connect(self.database_url, connect_timeout=5)
            migrate(conn)
            conn.close()
        else:
            run_cli(self.src, self.env(), [["migrate"]])
        self._db = psycopg.connect(self.database_url, autocommit=True)
        self._db.execute("SET timezone TO 'UTC'")
        backend = self._db.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        self.postmaster_pid = procstat.ppid_of(backend) or 0
        if not self.postmaster_pid or not Path(f"/proc/{self.postmaster_pid}").exists():
            raise RuntimeError("Postgres must run on this machine (its CPU is read from /proc)")
        present = {r[0] for r in self._db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        self.data_tables = [t for t in DATA_TABLES if t in present]
        tables = sql.SQL(", ").join(sql.Identifier(t) for t in [*self.data_tables, "api_keys", "workspaces"])
        self._db.execute(sql.SQL("TRUNCATE {} CASCADE").format(tables))
        self.workspaces, self.keys = [], []
        names = [f"bench-{i}" for i in range(workspaces)]
        if self.host is None:
            for name in names:
                ws = accounts.create_workspace(self._db, name)
                self.workspaces.append(ws)
                self.keys.append(accounts.create_key(self._db, ws)[1])
        else:  # the CLI prints "id<TAB>name" and "key id<TAB>key"
            made = run_cli(self.src, self.env(), [["workspace", "create", name] for name in names])
            self.workspaces = [line.split("\t")[0].strip() for line in made]
            keys = run_cli(self.src, self.env(), [["key", "create", ws] for ws in self.workspaces])
            self.keys = [line.split("\t")[1].strip() for line in keys]

    @property
    def db(self) -> psycopg.Connection:
        assert self._db is not None
        return self._db

    def truncate(self) -> None:
        """Empty the record tables, pushes and quarantine; checkpoint so no checkpoint lands mid-phase."""
        tables = sql.SQL(", ").join(sql.Identifier(t) for t in self.data_tables)
        self.db.execute(sql.SQL("TRUNCATE {}").format(tables))
        with contextlib.suppress(psycopg.Error):  # needs superuser; skipped if the admin URL is not one
            self.db.execute("CHECKPOINT")

    # -- Redis (shared with a baseline) ---------------------------------------------------

    def start_redis(self) -> None:
        self.redis.start()

    @property
    def r(self) -> Any:
        """The redis client (redis.Redis)."""
        return self.redis.client

    def flush_redis(self) -> None:
        """Empty Redis and shrink its append-only file (so phases start alike)."""
        self.redis.flush()

    def reset_redis_stalls(self) -> None:
        self.redis.reset_stalls()

    def slow_commands(self, n: int = 5) -> list[dict[str, Any]]:
        """Redis's slowest commands since the last reset: see BenchRedis.slow_commands."""
        return self.redis.slow_commands(n)

    def redis_stalls(self) -> dict[str, int]:
        """The longest stall (ms) of Redis's event loop per kind since the last reset."""
        return self.redis.stalls()

    def queue_depth(self) -> int:
        pipe = self.r.pipeline(transaction=False)
        for key in QUEUE_KEYS:
            pipe.llen(key)
        return sum(int(n) for n in pipe.execute())

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
        wait_for(f"{name} GET /healthz on :{port}", lambda: http_ok(port), proc=svc)
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
            lambda: http_ok(port) and len(procstat.tree_of(self.api.pid)) > self.api_procs,  # type: ignore[union-attr]
            proc=self.api,
        )
        time.sleep(2)

    def start_raw(self) -> None:
        self.raw, self.raw_port = self._uvicorn("raw-redis", "bench.raw_redis_app:create_app")

    def start_workers(self, n: int | None = None) -> None:
        """`selftune-ingest worker -n N` of this stack's code, once its N workers have registered."""
        n = n or self.workers_n
        self.worker = Service("workers", [*cli_argv(self.src), "worker", "-n", str(n)], self.env(), self.tmp, self.src)
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
        probe = self.stall_probe if self.host is None else self.host.stall_probe
        if probe is None:
            return None
        return longest_stall_ms(self.machine_stalls_path, since, until)

    def close(self) -> None:
        """Stop what this stack started; the Redis, probe and temp dir are its host's, if it has one."""
        for svc in (self.stall_probe, self.worker, self.raw, self.api):
            if svc is not None:
                with contextlib.suppress(Exception):
                    svc.stop()
        if self.host is None:
            self.redis.close()
        if self._db is not None:
            self._db.close()
        if self.host is None and not self.keep_logs:
            shutil.rmtree(self.tmp, ignore_errors=True)
