"""Kill, stop and restart the test Redis and PostgreSQL for real.

The servers are found from the URLs the tests use (TEST_REDIS_URL and
TEST_ADMIN_DATABASE_URL, by default ports 56379 and 55432 as `make test` starts
them), and each one is asked where its data lives (`CONFIG GET dir`,
`SHOW data_directory`) and, for Redis, its pid: so a test stops the very server
it runs against, never one guessed from a default path. They are started again
the way `scripts/services.sh up test` starts them, with TEST_REDIS_PORT,
TEST_PG_PORT and DATA_DIR set to what the servers themselves reported (Redis
with `appendonly yes`, `appendfsync everysec` and `noeviction`, from the same
data directory, so it reloads its append-only file).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from redis import Redis
from redis.exceptions import BusyLoadingError

from tests.conftest import ADMIN_URL, REDIS_URL
from tests.e2e.stack import REPO

PGBIN = Path(os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin"))
SERVICES = REPO / "scripts" / "services.sh"
COMMAND_TIMEOUT_S = 120.0
GONE_TIMEOUT_S = 10.0
LOAD_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class RedisFacts:
    pid: int
    data_dir: Path
    appendonly: str
    appendfsync: str
    maxmemory_policy: str


def _run(argv: list[str], env: dict[str, str] | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, env=env, cwd=REPO)
    assert done.returncode == 0, f"{' '.join(argv)} exited with {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers signal 0: it is dead for our purposes.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    return False


class Servers:
    """The test Redis and PostgreSQL of this run, and how to fault them."""

    def __init__(self, redis_url: str = REDIS_URL, admin_url: str = ADMIN_URL) -> None:
        redis_info = Redis.from_url(redis_url).connection_pool.connection_kwargs
        self.redis_host = str(redis_info.get("host", "127.0.0.1"))
        self.redis_port = int(redis_info.get("port", 6379))
        pg = psycopg.conninfo.conninfo_to_dict(admin_url)
        self.admin_url = admin_url
        self.pg_port = int(pg.get("port") or 5432)
        self.redis = self.redis_facts()
        self.pg_data_dir = self._pg_data_dir()
        self.redis_killed = False
        self.pg_stopped = False
        self._check_layout()

    # -- what the servers say about themselves -------------------------------------------------

    def _redis_client(self) -> Redis:
        return Redis(host=self.redis_host, port=self.redis_port, socket_timeout=5, socket_connect_timeout=2)

    def redis_facts(self) -> RedisFacts:
        client = self._redis_client()
        try:
            config: dict[str, str] = {}
            for name in ("dir", "appendonly", "appendfsync", "maxmemory-policy"):
                config |= {str(k): str(v) for k, v in client.config_get(name).items()}
            pid = int(client.info("server")["process_id"])
        finally:
            client.close()
        return RedisFacts(
            pid, Path(config["dir"]), config["appendonly"], config["appendfsync"], config["maxmemory-policy"]
        )

    def redis_persistence(self) -> dict[str, int | str]:
        """INFO persistence: aof_delayed_fsync counts acknowledged writes not yet write(2)-ten when answered."""
        client = self._redis_client()
        try:
            info = client.info("persistence")
        finally:
            client.close()
        return {k: info[k] for k in ("aof_enabled", "aof_delayed_fsync", "aof_last_write_status") if k in info}

    def _pg_data_dir(self) -> Path:
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=3) as conn:
            row = conn.execute("SHOW data_directory").fetchone()
        assert row is not None
        return Path(row[0])

    def _check_layout(self) -> None:
        """Both servers must be the ones `services.sh up test` runs from one DATA_DIR (else we cannot restart them)."""
        data = self.pg_data_dir.parent
        problems = []
        if self.pg_data_dir.name != "postgres" or self.redis.data_dir != data / "redis":
            problems.append(
                f"PostgreSQL keeps its data in {self.pg_data_dir} and Redis in {self.redis.data_dir}:"
                " not the <DATA_DIR>/postgres and <DATA_DIR>/redis that scripts/services.sh uses"
            )
        for name, expected in (("DATA_DIR", data), ("TEST_PG_DATA", self.pg_data_dir)):
            given = os.environ.get(name)
            if given and Path(given).resolve() != expected.resolve():
                problems.append(f"{name}={given}, but the server on the test port runs from {expected}")
        if self.redis.appendonly != "yes":
            problems.append(f"Redis runs with appendonly={self.redis.appendonly}: start it with scripts/services.sh")
        assert not problems, "; ".join(problems)

    @property
    def data_dir(self) -> Path:
        return self.pg_data_dir.parent

    def services_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "TEST_REDIS_PORT": str(self.redis_port),
            "TEST_PG_PORT": str(self.pg_port),
            "DATA_DIR": str(self.data_dir),
        }

    # -- faults ------------------------------------------------------------------------------------

    def kill_redis(self) -> int:
        """SIGKILL redis-server (nothing gets flushed or saved on the way out); return once it is gone."""
        pid = self.redis_facts().pid
        self.redis_killed = True
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + GONE_TIMEOUT_S
        while not _pid_gone(pid):
            assert time.monotonic() < deadline, (
                f"redis-server (pid {pid}) still there {GONE_TIMEOUT_S:g} s after SIGKILL"
            )
            time.sleep(0.02)
        return pid

    def stop_postgres(self) -> None:
        as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.pg_stopped = True
        _run([*as_owner, str(PGBIN / "pg_ctl"), "-D", str(self.pg_data_dir), "-m", "fast", "-w", "stop"])

    def start(self) -> None:
        """`scripts/services.sh up test` for these servers: idempotent, returns once both serve.

        services.sh waits for Redis to answer PING, which it does (with a LOADING error)
        while it replays its append-only file: wait for that to end as well.
        """
        _run([str(SERVICES), "up", "test"], env=self.services_env())
        self._wait_redis_loaded()
        facts = self.redis_facts()
        assert facts.data_dir == self.redis.data_dir and facts.appendonly == "yes", facts
        self.redis = facts
        self.redis_killed = self.pg_stopped = False

    def _wait_redis_loaded(self) -> None:
        client = self._redis_client()
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        try:
            while True:
                try:
                    client.ping()
                    return
                except BusyLoadingError:
                    assert time.monotonic() < deadline, f"Redis still loading its data {LOAD_TIMEOUT_S:g} s after start"
                    time.sleep(0.05)
        finally:
            client.close()

    def restore(self) -> None:
        """Bring back whatever a test took down (teardown, pass or fail)."""
        if self.redis_killed or self.pg_stopped:
            self.start()

    def redis_log_tail(self, lines: int = 30) -> str:
        log = self.redis.data_dir / "redis.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])
