"""The code the bench's processes run: a snapshot of the work tree, or the tree of a git ref.

The snapshot: the product packages (those pyproject.toml installs) and bench/
are copied to the run's temporary directory when the stack is made, and every
process runs from there (cwd and PYTHONPATH), so edits to the work tree during
a run (another session, your editor) cannot mix two versions of the code in
one result.

A baseline (`--baseline-ref REF`): the product packages of REF's tree are
exported with `git archive` beside the snapshot, and the baseline's processes
run from there with the same venv. The venv's editable install of the work
tree is a finder appended to `sys.meta_path`, after the PYTHONPATH entries, so
the exported packages shadow it (tests/unit/test_bench_snapshot.py checks it).
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"
CLI_NAME = "selftune-ingest"


def product_packages(pyproject: str, top_level: list[str]) -> list[str]:
    """The names in `top_level` (a tree's top-level packages) that pyproject.toml's package find includes.

    A tree whose pyproject.toml names no include list installs every top-level package
    but the bench and the tests.
    """
    conf = tomllib.loads(pyproject)
    include = conf.get("tool", {}).get("setuptools", {}).get("packages", {}).get("find", {}).get("include")
    if not include:
        return sorted(n for n in top_level if n not in ("bench", "tests"))
    return sorted(n for n in top_level if any(fnmatch.fnmatchcase(n, pattern) for pattern in include))


def entry_point(pyproject: str, name: str = CLI_NAME) -> str:
    """The `module:function` of a console script of pyproject.toml (the ops CLI by default)."""
    scripts = tomllib.loads(pyproject).get("project", {}).get("scripts", {})
    if name not in scripts:
        raise RuntimeError(f"pyproject.toml has no [project.scripts] {name}")
    return str(scripts[name])


def _entry(root: Path) -> tuple[str, str]:
    module, _, function = entry_point((root / "pyproject.toml").read_text()).partition(":")
    return module, function


def cli_argv(root: Path) -> list[str]:
    """argv running the ops CLI of the tree at `root` (its own entry point, not the venv's script)."""
    module, function = _entry(root)
    launcher = f"import sys; from {module} import {function}; sys.argv[0] = {CLI_NAME!r}; sys.exit({function}())"
    return [str(BIN / "python"), "-c", launcher]


# Runs the commands (a JSON list of argv lists, on stdin) in one process, one Python start for all;
# prints the JSON list of their outputs.
_BATCH = """
import contextlib, io, json, sys
from {module} import {function} as main
outputs = []
for args in json.load(sys.stdin):
    sys.argv = [{name!r}, *args]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = main()
        except SystemExit as exc:
            code = exc.code
    if code not in (0, None):
        sys.exit(f"{name} {{' '.join(args)}} exited with {{code}}")
    outputs.append(out.getvalue())
print(json.dumps(outputs))
"""


def run_cli(root: Path, env: dict[str, str], commands: list[list[str]]) -> list[str]:
    """Run ops CLI commands of the tree at `root` in one process (cwd root, `env`); their stdouts, in order."""
    module, function = _entry(root)
    launcher = _BATCH.format(module=module, function=function, name=CLI_NAME)
    proc = subprocess.run(
        [str(BIN / "python"), "-c", launcher],
        input=json.dumps(commands),
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the ops CLI of {root} failed:\n{proc.stderr[-2000:]}")
    return [str(x) for x in json.loads(proc.stdout.strip().splitlines()[-1])]


def _packages_in(root: Path) -> list[str]:
    top = [p.name for p in root.iterdir() if p.is_dir() and (p / "__init__.py").is_file()]
    return product_packages((root / "pyproject.toml").read_text(), top)


def code_digest(root: Path) -> str:
    """sha256 (12 hex digits) of the product code under root: every product package's .py and .sql files."""
    digest = hashlib.sha256()
    for name in _packages_in(root):
        for path in sorted((root / name).rglob("*")):
            if path.is_file() and path.suffix in (".py", ".sql") and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(root)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def snapshot_code(dest: Path) -> str:
    """Copy the code the processes run (product packages, bench/, pyproject.toml) to `dest`; return its digest."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "results")
    for name in [*_packages_in(REPO), "bench"]:
        shutil.copytree(REPO / name, dest / name, ignore=ignore)
    shutil.copy2(REPO / "pyproject.toml", dest / "pyproject.toml")
    return code_digest(dest)


def _git(*args: str) -> bytes:
    proc = subprocess.run(["git", *args], cwd=REPO, capture_output=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def export_ref(ref: str, dest: Path) -> tuple[str, str]:
    """Export the product packages and pyproject.toml of git `ref` to `dest`; return (short commit, digest)."""
    commit = _git("rev-parse", "--short", f"{ref}^{{commit}}").decode().strip()
    pyproject = _git("show", f"{commit}:pyproject.toml").decode()
    files = _git("ls-tree", "-r", "--name-only", commit).decode().splitlines()
    top = sorted({f.split("/", 1)[0] for f in files if f.count("/") == 1 and f.endswith("/__init__.py")})
    packages = product_packages(pyproject, top)
    archive = _git("archive", "--format=tar", commit, "pyproject.toml", *packages)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return commit, code_digest(dest)
