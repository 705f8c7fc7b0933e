"""deploy/haproxy/haproxy.cfg in front of two real apis (issue 17, item 2).

HAProxy is started with the example config as it ships (only its ports filled in,
through the environment variables it names) in front of two api processes. The
proxy closes what uvicorn alone kept open (a client trickling its headers at
1 byte/s, connections that never send a request), refuses a 1 MB header, passes
ordinary pushes, and when one api is SIGKILLed under load from CLIs that follow
SPEC 2.5, sends them to the other: no record is lost.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2
import pytest
from redis import Redis

from runtime.settings import Settings
from tests.conftest import IN_CI
from tests.e2e.faults.cli_client import CliFleet, CliLedger
from tests.e2e.faults.cli_harness import settle
from tests.e2e.faults.harness import ApiProcess, WorkerPool
from tests.e2e.stack import REPO, Stack, free_port

CONFIG = REPO / "deploy" / "haproxy" / "haproxy.cfg"
HEADER_TIMEOUT_S = 5  # the config's `timeout http-request`
IDLE_CONNECTIONS = 200


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or (Path("/usr/sbin/haproxy").exists() and "/usr/sbin/haproxy") or None
    if not found:
        message = "haproxy is not installed (Debian's haproxy); run 'scripts/services.sh up test'"
        if IN_CI:
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(message)
    return str(found)


class Proxy:
    """haproxy -db -f deploy/haproxy/haproxy.cfg on a free port, before the given apis."""

    def __init__(self, apis: list[ApiProcess], log: Path) -> None:
        self.port = free_port()
        env = {
            "LISTEN_PORT": str(self.port),
            "API_1": f"127.0.0.1:{apis[0].port}",
            "API_2": f"127.0.0.1:{apis[1].port}",
        }
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen([haproxy_binary(), "-db", "-f", str(CONFIG)], env=env, stdout=out, stderr=out)
        deadline = time.monotonic() + 20
        while not self._both_up():
            assert self.proc.poll() is None, f"haproxy exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"haproxy never had both apis up:\n{log.read_text()}"
            time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _both_up(self) -> bool:
        try:
            return all(httpx2.get(self.url + "/readyz", timeout=2).status_code == 200 for _ in range(4))
        except httpx2.TransportError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def proxied(stack: Stack, tmp_path: Path) -> Iterator[tuple[Proxy, list[ApiProcess]]]:
    apis = [ApiProcess.start(stack), ApiProcess.start(stack)]
    proxy = Proxy(apis, tmp_path / "haproxy.log")
    try:
        yield proxy, apis
    finally:
        proxy.stop()


def _closed_after(sock: socket.socket, limit_s: float, trickle: bytes = b"") -> tuple[float, bytes]:
    """Send `trickle` one byte a second until the peer closes (or `limit_s`); the time it took and what it said."""
    started = time.monotonic()
    sock.settimeout(1.0)
    answer = b""
    for byte in [trickle[i : i + 1] for i in range(len(trickle))] or [b""] * int(limit_s):
        if time.monotonic() - started > limit_s:
            break
        try:
            if byte:
                sock.sendall(byte)
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:  # reset by the peer
            return time.monotonic() - started, answer
        if not chunk:
            return time.monotonic() - started, answer
        answer += chunk
    return time.monotonic() - started, answer


def test_the_proxy_closes_slow_and_idle_clients_and_refuses_huge_headers(
    proxied: tuple[Proxy, list[ApiProcess]],
) -> None:
    proxy, _ = proxied
    big = socket.create_connection(("127.0.0.1", proxy.port))
    request = b"POST /v2/push HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
    reply = b""
    # Sent 16 kB at a time, reading between: the proxy answers as soon as the header is too
    # large, and a client still writing after that would have its answer reset away.
    for at in range(0, len(request), 16384):
        with contextlib.suppress(OSError):
            big.sendall(request[at : at + 16384])
        big.settimeout(0.2)
        with contextlib.suppress(TimeoutError):
            reply = big.recv(65536)
        if reply:
            break
    big.close()
    assert reply.split(b" ", 2)[1:2] in ([b"400"], [b"431"]), reply[:120]

    slow = socket.create_connection(("127.0.0.1", proxy.port))
    head = b"POST /v2/push HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 100
    took, answer = _closed_after(slow, 30.0, head)
    slow.close()
    assert took < 15, f"a 1 byte/s header was kept {took:.0f} s"
    assert took >= HEADER_TIMEOUT_S - 1 and answer.startswith(b"HTTP/1.1 408"), (took, answer[:80])

    # Past 100 at once or 50 new per 10 s from one address the proxy refuses them outright; the
    # rest it closes after its `timeout http-request`: none stays open.
    idle = [socket.create_connection(("127.0.0.1", proxy.port)) for _ in range(IDLE_CONNECTIONS)]
    time.sleep(HEADER_TIMEOUT_S + 2)
    still_open = 0
    for sock in idle:
        sock.settimeout(0.5)
        try:
            sock.recv(65536)  # b"" (closed), or the proxy's 408 before its close
        except TimeoutError:
            still_open += 1
        except OSError:  # reset: closed too
            pass
        sock.close()
    assert still_open == 0, f"{still_open} of {IDLE_CONNECTIONS} connections that sent nothing are still open"


def test_one_of_two_apis_sigkilled_behind_the_proxy(
    proxied: tuple[Proxy, list[ApiProcess]],
    stack: Stack,
    settings: Settings,
    workspace: tuple[str, list[str]],
    rq_redis: Redis,
    worker_pool: Callable[[int], WorkerPool],
) -> None:
    proxy, apis = proxied
    worker_pool(2)
    workspace_id, keys = workspace
    ledger = CliLedger()
    fleet = CliFleet(lambda: proxy.url, keys[:3], workspace_id, ledger, tag="lbkill", pause_s=0.05)

    def kill_one() -> None:
        fleet.sleep_until(3.0)
        apis[0].service.kill()

    fleet.run_for(12.0, during=kill_one)
    figures = settle("one of two apis SIGKILLed behind HAProxy", stack, settings, workspace_id, ledger, rq_redis)
    assert figures.acknowledged == figures.pushes > 0
