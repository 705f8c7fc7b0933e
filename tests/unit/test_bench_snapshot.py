"""The bench runs a snapshot of every product package, and can run an old commit's tree with the same venv."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bench import snapshot

PYPROJECT = (snapshot.REPO / "pyproject.toml").read_text()


def test_the_snapshot_holds_every_package_pyproject_installs() -> None:
    top = [p.name for p in snapshot.REPO.iterdir() if (p / "__init__.py").is_file()]
    packages = snapshot.product_packages(PYPROJECT, top)
    assert {"api", "workers", "schema", "ops", "runtime", "store", "queueing", "spool"} <= set(packages)
    assert "bench" not in packages and "tests" not in packages


def test_a_pyproject_without_an_include_list_installs_all_but_bench_and_tests() -> None:
    assert snapshot.product_packages("[project]\nname = 'x'\n", ["api", "bench", "tests", "workers"]) == [
        "api",
        "workers",
    ]


def test_the_digest_covers_every_product_package(tmp_path: Path) -> None:
    digest = snapshot.snapshot_code(tmp_path)
    assert snapshot.code_digest(tmp_path) == digest
    schema_file = next((tmp_path / "schema").glob("*.py"))
    schema_file.write_text(schema_file.read_text() + "\n# changed\n")
    assert snapshot.code_digest(tmp_path) != digest


def _exported(tmp_path: Path) -> Path:
    if shutil.which("git") is None or not (snapshot.REPO / ".git").exists():
        pytest.fail("the bench's baseline needs git and the repository's history")
    dest = tmp_path / "old"
    commit, digest = snapshot.export_ref("HEAD", dest)
    assert len(commit) >= 7 and len(digest) == 12
    return dest


def test_an_exported_ref_shadows_the_editable_install(tmp_path: Path) -> None:
    dest = _exported(tmp_path)
    assert not (dest / "bench").exists() and (dest / "pyproject.toml").exists()
    env = {**os.environ, "PYTHONPATH": str(dest)}
    probe = "import api, ops, schema, store, workers; print('\\n'.join(m.__file__ for m in (api, ops, schema, store, workers)))"
    out = subprocess.run(
        [str(snapshot.BIN / "python"), "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    ).stdout
    assert all(Path(f).is_relative_to(dest) for f in out.split()), out


def test_the_exported_tree_runs_its_own_cli(tmp_path: Path) -> None:
    dest = _exported(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(dest)}
    argv = [*snapshot.cli_argv(dest), "--help"]
    proc = subprocess.run(argv, cwd=dest, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "worker" in proc.stdout and "migrate" in proc.stdout
    helps = snapshot.run_cli(dest, env, [["--help"], ["worker", "--help"]])
    assert len(helps) == 2 and "migrate" in helps[0] and "-n" in helps[1]


def test_a_failing_cli_command_names_itself(tmp_path: Path) -> None:
    dest = _exported(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(dest)}
    with pytest.raises(RuntimeError, match="no-such-command"):
        snapshot.run_cli(dest, env, [["--help"], ["no-such-command"]])


def test_an_unknown_ref_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="no-such-ref"):
        snapshot.export_ref("no-such-ref", tmp_path / "x")
