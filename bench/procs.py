"""The processes the bench starts: each in a session of its own, with its log, stopped by its group.

Every process runs in a session of its own and is stopped (SIGTERM, then
SIGKILL) by its process group id, however the benchmark ended.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

STOP_S = 15.0

T = TypeVar("T")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """A started process (its own session), with its log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path, cwd: Path) -> None:
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


def wait_for(what: str, condition: Callable[[], T], timeout: float = 30.0, proc: Service | None = None) -> T:
    """Poll `condition` until it returns a true value; fail early if `proc` exits, with its log's tail."""
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


def http_ok(port: int, path: str = "/healthz") -> bool:
    """Whether GET `path` on 127.0.0.1:port answers 200."""
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        return s.recv(64).startswith(b"HTTP/1.1 200")
