"""The lock files agree with pyproject.toml (no network, no install).

`make venv`, CI and the Dockerfile install from requirements-dev.lock and
requirements.lock (pip-compile's output, with hashes), then the project with
--no-deps: a dependency added or re-ranged in pyproject.toml and not locked
would be missing or at a version the project does not allow. `make lock`
rewrites both files; this test says when that was forgotten.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_LOCK = ROOT / "requirements.lock"
DEV_LOCK = ROOT / "requirements-dev.lock"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")

_project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
RUNTIME = [Requirement(r) for r in _project["dependencies"]]
DEV = [Requirement(r) for r in _project["optional-dependencies"]["dev"]]


def _pins(lock: Path) -> dict[str, Version]:
    """{canonical name: version} of every `name==version` line of a pip-compile lock."""
    pins: dict[str, Version] = {}
    for line in lock.read_text().splitlines():
        match = PIN.match(line)
        if match:
            name = canonicalize_name(match.group(1))
            assert name not in pins, f"{lock.name} pins {name} twice"
            pins[name] = Version(match.group(2))
    assert pins, f"{lock.name} pins nothing"
    return pins


def _entries(lock: Path) -> list[str]:
    """Each requirement of the lock with its continuation lines joined."""
    text = re.sub(r"\\\n", " ", lock.read_text())
    return [line for line in text.splitlines() if line and not line.lstrip().startswith("#")]


@pytest.mark.parametrize(
    ("lock", "requirements"),
    [(RUNTIME_LOCK, RUNTIME), (DEV_LOCK, RUNTIME), (DEV_LOCK, DEV)],
    ids=["runtime in requirements.lock", "runtime in requirements-dev.lock", "dev in requirements-dev.lock"],
)
def test_every_direct_dependency_is_locked_at_a_version_pyproject_allows(
    lock: Path, requirements: list[Requirement]
) -> None:
    pins = _pins(lock)
    for req in requirements:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is in pyproject.toml but not in {lock.name}: run make lock"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{lock.name} pins {name}=={pins[name]}, outside pyproject.toml's {req}: run make lock"
        )


def test_the_dev_lock_keeps_the_runtime_locks_versions() -> None:
    """The image (runtime lock) runs what the tests ran (dev lock)."""
    runtime, dev = _pins(RUNTIME_LOCK), _pins(DEV_LOCK)
    differ = {name: (str(v), str(dev.get(name))) for name, v in runtime.items() if dev.get(name) != v}
    assert not differ, f"runtime lock vs dev lock: {differ}: run make lock"


@pytest.mark.parametrize("lock", [RUNTIME_LOCK, DEV_LOCK], ids=lambda p: p.name)
def test_every_locked_package_has_hashes(lock: Path) -> None:
    """pip then installs in hash-checking mode: the same files on every build."""
    for entry in _entries(lock):
        assert PIN.match(entry), f"{lock.name}: not a pin: {entry[:80]}"
        assert "--hash=sha256:" in entry, f"{lock.name}: no hash for {entry.split()[0]}"


def test_every_direct_dependency_has_an_upper_bound() -> None:
    """A new major is taken on purpose (pyproject.toml, then make lock), never by a fresh resolve."""
    unbounded = [str(r) for r in RUNTIME + DEV if not any(s.operator in ("<", "<=", "==", "~=") for s in r.specifier)]
    assert not unbounded, f"no upper bound: {unbounded}"
    [rq] = [r for r in RUNTIME if r.name == "rq"]
    assert not rq.specifier.contains("2.9") and not rq.specifier.contains("4.0"), "rq is pinned to its tested major, 3"
