"""Real processes for the end-to-end tier: the api (uvicorn) and workers (`selftune-ingest worker`).

Each process runs in a session of its own (so a worker's scheduler child can be
stopped with it), writes its output to a log file under the test's tmp_path,
and is stopped at teardown however the test ended. Every bounded wait puts the
tail of those logs in its failure message, so a red test says why.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import msgspec

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"
WAIT_S = 30.0  # the longest any ordinary wait in this tier may take
STOP_S = 10.0  # how long a process gets to stop on SIGTERM before SIGKILL
POLL_S = 0.2

T = TypeVar("T")


class Service:
    """One started process, with its log."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                # cwd: uvicorn puts its working directory first on sys.path (--app-dir ".").
                argv,
                cwd=env.get("PYTHONPATH") or REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL this process alone, as the OOM killer would: nothing in it gets to clean up."""
        self.proc.kill()
        self.proc.wait(timeout=STOP_S)

    def stop(self) -> None:
        """SIGTERM the process's group, then SIGKILL whatever is left of it (e.g. an orphaned child)."""
        with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=STOP_S)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=STOP_S)


@dataclass(frozen=True)
class Api:
    """A running api process and how to push to it."""

    url: str
    service: Service

    def push(self, key: str, body: dict[str, Any] | bytes, path: str = "/v2/push") -> httpx2.Response:
        content = body if isinstance(body, bytes) else msgspec.json.encode(body)
        return httpx2.post(
            self.url + path,
            content=content,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            timeout=10,
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stack:
    """The processes of one test, all pointed at the test servers by `env`."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.services: list[Service] = []

    def start(self, name: str, argv: list[str], **env: str) -> Service:
        service = Service(name, argv, {**self.env, **env}, self.log_dir / f"{name}-{len(self.services)}.log")
        self.services.append(service)
        return service

    def start_api(self, **env: str) -> Api:
        """Start uvicorn on a free port; return once /healthz answers."""
        port = free_port()
        argv = [str(BIN / "uvicorn"), "api.app:create_app", "--factory", "--host", "127.0.0.1", "--port", str(port)]
        argv += log_config_args(Path(self.env.get("PYTHONPATH") or REPO))
        api = Api(f"http://127.0.0.1:{port}", self.start("api", argv, **env))
        self.wait_until(lambda: self._healthy(api), f"the api on port {port} answers GET /healthz")
        return api

    def start_worker(self, **env: str) -> Service:
        """Start one worker process (`selftune-ingest worker -n 1`)."""
        return self.start("worker", [str(BIN / "selftune-ingest"), "worker", "-n", "1"], **env)

    def _healthy(self, api: Api) -> bool:
        return answers_healthz(api.service, api.url)

    def wait_until(
        self,
        condition: Callable[[], T],
        what: str,
        timeout: float = WAIT_S,
        explain: Callable[[], str] | None = None,
    ) -> T:
        """Poll `condition` until it returns something truthy; fail naming `what` after `timeout` s.

        The failure message adds `explain()` (the state the test was waiting on) and the logs.
        """
        deadline = time.monotonic() + timeout
        while True:
            result = condition()
            if result:
                return result
            if time.monotonic() >= deadline:
                state = f"\n{explain()}" if explain else ""
                raise AssertionError(f"waited {timeout:g} s for: {what}{state}{self.logs()}")
            time.sleep(POLL_S)

    def logs(self) -> str:
        return "".join(f"\n--- {s.name} (pid {s.pid}) log, last lines ---\n{s.tail()}" for s in self.services)

    def stop_all(self) -> None:
        """Stop every process, even if stopping one of them fails."""
        errors = []
        for service in reversed(self.services):
            try:
                service.stop()
            except Exception as exc:
                errors.append(f"{service.name} (pid {service.pid}): {exc!r}")
        assert not errors, f"could not stop: {errors}"


def process_env(settings: Any, **overrides: str) -> dict[str, str]:
    """Environment of api and worker processes: this checkout's code, the test servers, quick retries."""
    return {
        **os.environ,
        # Run this checkout's code, whatever the venv was installed from (SELFTUNE_CODE_DIR: another
        # checkout's, e.g. the code before a change, run under the same tests for contrast).
        "PYTHONPATH": os.environ.get("SELFTUNE_CODE_DIR") or str(REPO),
        "PYTHONUNBUFFERED": "1",
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "QUEUE_NAME": settings.queue_name,
        "JOB_RETRIES": "3",
        "JOB_RETRY_BACKOFF_S": "1",
        "WORKER_MAINTENANCE_INTERVAL_S": "1",
        "JOB_TIMEOUT_S": "5",
        "KEY_CACHE_TTL_S": "1",
        **overrides,
    }


@contextlib.contextmanager
def running_stack(settings: Any, tmp_path: Path, **overrides: str) -> Iterator[Stack]:
    """A Stack whose processes are all stopped on exit, pass or fail."""
    processes = Stack(process_env(settings, **overrides), tmp_path)
    try:
        yield processes
    finally:
        processes.stop_all()


def log_config_args(code_dir: Path) -> list[str]:
    """uvicorn's --log-config, as the Procfile gives it (JSON lines, uvicorn's included), when that code has one."""
    config = code_dir / "api" / "uvicorn-logging.json"
    return ["--log-config", str(config)] if config.exists() else []


def answers_healthz(service: Service, url: str) -> bool:
    """Whether the api at `url` answers GET /healthz; fails at once if its process exited."""
    if not service.alive():
        raise AssertionError(f"the api exited with {service.proc.returncode}:\n{service.tail()}")
    try:
        return httpx2.get(url + "/healthz", timeout=1).status_code == 200
    except httpx2.TransportError:
        return False
