"""The Procfile deploys as it is (12-factor), `make run` keeps it on loopback, and the HAProxy example loads.

A platform runs the Procfile's `release` before each deploy and its `web` on
0.0.0.0:$PORT, its `worker` and one `maintain` (retention, on a schedule);
`make run` migrates itself and must start only web, worker and maintain
(honcho starts every process it is not told otherwise, and a `release` that
exits would stop the others), with HOST=127.0.0.1.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parents[2]
PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")  # honcho's own pattern


def _processes() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return {m.group(1): m.group(2) for m in map(PROCFILE_LINE.match, lines) if m}


def _make_recipe(target: str) -> list[str]:
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = lines.index(next(line for line in lines if line.startswith(f"{target}:")))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def test_procfile_has_release_web_worker_and_maintain() -> None:
    processes = _processes()
    assert set(processes) == {"release", "web", "worker", "maintain"}
    assert shlex.split(processes["release"]) == ["selftune-ingest", "migrate"]
    maintain = shlex.split(processes["maintain"])
    assert maintain[:2] == ["selftune-ingest", "maintain"] and "--every" in maintain, "maintain must repeat itself"


def test_web_listens_on_every_interface_at_port_unless_told() -> None:
    argv = shlex.split(_processes()["web"])
    assert argv[argv.index("--host") + 1] == "${HOST:-0.0.0.0}"
    assert argv[argv.index("--port") + 1] == "${PORT:-8000}"


def test_make_run_starts_web_worker_and_maintain_on_loopback() -> None:
    [honcho] = [line for line in _make_recipe("run") if "honcho start" in line]
    argv = shlex.split(honcho)
    assert argv[-3:] == ["web", "worker", "maintain"], "make run must name its processes, or honcho runs release too"
    assert "HOST=$(RUN_HOST)" in argv
    assert re.search(r"^RUN_HOST \?= 127\.0\.0\.1$", (ROOT / "Makefile").read_text(), re.M)


def test_the_haproxy_example_is_a_valid_config() -> None:
    """deploy/haproxy/haproxy.cfg as it ships, its ports filled in, passes `haproxy -c` (CI installs haproxy)."""
    haproxy = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    if haproxy is None:
        if IN_CI:
            pytest.fail("CI=true and haproxy is not installed (scripts/services.sh up test installs it)")
        pytest.skip("haproxy is not installed (Debian's haproxy)")
    config = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
    env = {**os.environ, "LISTEN_PORT": "8080", "API_1": "10.0.0.1:8000", "API_2": "10.0.0.2:8000"}
    done = subprocess.run([haproxy, "-c", "-f", str(config)], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    text = config.read_text()
    for setting in ("timeout http-request", "tune.bufsize", "maxconn", "sc0_conn_cur", "option httpchk GET /readyz"):
        assert setting in text, f"the example lost its {setting!r}"
