"""The Procfile deploys as it is (12-factor), and `make run` keeps it on loopback.

A platform runs the Procfile's `release` before each deploy and its `web` on
0.0.0.0:$PORT; `make run` migrates itself and must start only web and worker
(honcho starts every process it is not told otherwise, and a `release` that
exits would stop the others), with HOST=127.0.0.1.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

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


def test_procfile_has_release_web_and_worker() -> None:
    processes = _processes()
    assert set(processes) == {"release", "web", "worker"}
    assert shlex.split(processes["release"]) == ["selftune-ingest", "migrate"]


def test_web_listens_on_every_interface_at_port_unless_told() -> None:
    argv = shlex.split(_processes()["web"])
    assert argv[argv.index("--host") + 1] == "${HOST:-0.0.0.0}"
    assert argv[argv.index("--port") + 1] == "${PORT:-8000}"


def test_make_run_starts_web_and_worker_on_loopback() -> None:
    [honcho] = [line for line in _make_recipe("run") if "honcho start" in line]
    argv = shlex.split(honcho)
    assert argv[-2:] == ["web", "worker"], "make run must name its processes, or honcho runs release too"
    assert "HOST=$(RUN_HOST)" in argv
    assert re.search(r"^RUN_HOST \?= 127\.0\.0\.1$", (ROOT / "Makefile").read_text(), re.M)
