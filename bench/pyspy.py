"""py-spy attached to a process for one phase (`--profile`); the recording is rendered by bench/flame.py."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench import flame
from bench.phase import RESULTS
from bench.snapshot import BIN

Recording = tuple[subprocess.Popen[bytes], Path]


def start(pid: int, name: str, seconds: float, subprocesses: bool = False) -> Recording:
    """py-spy records `pid` (and its children) for `seconds` into bench/results/profile-NAME.txt."""
    if not (BIN / "py-spy").exists():
        raise SystemExit("--profile needs py-spy in .venv: .venv/bin/pip install py-spy")
    RESULTS.mkdir(parents=True, exist_ok=True)
    raw = RESULTS / f"profile-{name}.txt"
    argv = [str(BIN / "py-spy"), "record", "--pid", str(pid), "--rate", "100", "--duration", str(math.ceil(seconds)),
            "--format", "raw", "--nolineno", "--output", str(raw)]  # fmt: skip
    if subprocesses:
        argv.append("--subprocesses")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return proc, raw


def finish(handle: Recording | None, title: str, kind: str) -> dict[str, Any] | None:
    """Wait for the recording; render its top frames and flame graph (None without one)."""
    if handle is None:
        return None
    proc, raw = handle
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    if not raw.exists():
        print(f"  ! py-spy wrote nothing for {title}: {err.decode(errors='replace')[-300:]}", file=sys.stderr)
        return None
    return flame.render(raw, title, kind)
