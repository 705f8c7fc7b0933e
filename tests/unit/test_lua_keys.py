"""Every Lua script names each key it touches in KEYS (issue 17: Redis Cluster's rule, and a cleaner replica).

A key built inside a script ('rq:job:' .. id) works on one Redis and breaks on a
cluster, silently: this reads every `redis.call` of every script the product
sends, and each key argument must be a `KEYS[...]` reference.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from api import enqueue
from queueing import rq_compat

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = {
    "enqueue once": enqueue._ENQUEUE_ONCE,
    "queue snapshot": rq_compat.SNAPSHOT_SCRIPT,
    "take more": rq_compat._TAKE_MORE,
    "dequeue from the shards": rq_compat._MOVE_FIRST,
}
CALL = re.compile(r"redis\.call\(\s*'([A-Z]+)'\s*(?:,\s*([^,)]+))?(?:,\s*([^,)]+))?")
NO_KEY = {"TIME"}
TWO_KEYS = {"LMOVE"}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_key_a_script_touches_is_declared(name: str) -> None:
    calls = CALL.findall(SCRIPTS[name])
    assert calls, "no redis.call found: the pattern no longer reads this script"
    wrong = []
    for command, first, second in calls:
        if command in NO_KEY:
            continue
        keys = [first, second] if command in TWO_KEYS else [first]
        wrong += [f"{command} {k.strip()}" for k in keys if not k.strip().startswith("KEYS[")]
    assert not wrong, f"{name}: keys not taken from KEYS: {wrong}"


def test_every_script_of_the_product_is_checked() -> None:
    """A new script (anything calling redis.call) must be added to SCRIPTS above."""
    found = set()
    for package in ("api", "queueing", "workers", "ops", "spool", "store", "runtime"):
        for path in (ROOT / package).rglob("*.py"):
            if "redis.call(" in path.read_text():
                found.add(path.relative_to(ROOT).as_posix())
    assert found == {"api/enqueue.py", "queueing/rq_compat.py"}
