"""The import direction (STYLE 1, issue 14): contract <- runtime <- api / workers <- ops.

Every import in every product module, read with `ast` (imports inside functions too):
`schema` (the contract) imports msgspec and the standard library only; the runtime
packages import the contract and each other, never api, workers or ops; api and
workers never import each other (the api enqueues a job by its dotted path); ops may
import anything, and nothing imports ops. tests/ and bench/ are exempt.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = {"schema"}
RUNTIME = {"runtime", "store", "queueing", "spool"}
PRODUCT = CONTRACT | RUNTIME | {"api", "workers", "ops"}
# What each package may import of the product (besides itself); any third-party library is allowed
# except in the contract, which may use only these and the standard library.
ALLOWED = {
    "schema": CONTRACT,
    **{name: CONTRACT | RUNTIME for name in RUNTIME},
    "api": CONTRACT | RUNTIME,
    "workers": CONTRACT | RUNTIME,
    "ops": PRODUCT,
}
CONTRACT_LIBRARIES = {"msgspec"}


def imported_packages(path: Path) -> set[str]:
    """The top-level names a module imports, wherever in the module the import is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (write the package's name)"
            assert node.module is not None
            found.add(node.module.split(".")[0])
    return found


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(PRODUCT))
def test_imports_follow_the_data_flow(package: str) -> None:
    assert modules(package), f"no modules under {package}/"
    wrong = {}
    for path in modules(package):
        bad = {name for name in imported_packages(path) & PRODUCT if name not in ALLOWED[package] | {package}}
        if bad:
            wrong[str(path.relative_to(ROOT))] = sorted(bad)
    assert not wrong, f"{package} may import only {sorted(ALLOWED[package])} of the product: {wrong}"


def test_the_contract_imports_no_io_library() -> None:
    wrong = {}
    for path in modules("schema"):
        outside = imported_packages(path) - CONTRACT - CONTRACT_LIBRARIES - set(sys.stdlib_module_names)
        outside.discard("__future__")
        if outside:
            wrong[str(path.relative_to(ROOT))] = sorted(outside)
    assert not wrong, f"schema/ imports msgspec and the standard library only: {wrong}"


def test_every_product_package_is_checked() -> None:
    """A new top-level package must be placed in the direction above before it can be imported."""
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages - {"tests", "bench"} == PRODUCT
