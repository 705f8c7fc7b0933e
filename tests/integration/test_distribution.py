"""Distributed Postgres on paper (README, "Distributing by workspace"): what Citus would need of the schema and the reads.

Citus shards a distributed table by one column, here `workspace_id`: a unique constraint must
include it, and a query stays on one shard only when it filters by it. The record tables' keys
and indexes are read from pg_catalog on the migrated database; the read queries are the SQL the
api really sends, recorded while every read endpoint answers a request on real servers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from starlette.routing import Route
from starlette.testclient import TestClient

from api.app import create_app
from bench import samples
from runtime.settings import Settings
from tests.support import new_account, push_json, run_burst_worker
from workers.tables import TABLES

# Distributed by workspace_id: every record table, and the two tables of pushes and their rejects.
DISTRIBUTED = (*TABLES, "pushes", "quarantine")
# Small, read by something else than a workspace (a key's hash, a device code): reference tables.
REFERENCE = ("workspaces", "api_keys", "device_codes")

_INDEXES = """
SELECT i.relname, x.indisunique, array_agg(a.attname ORDER BY k.ord)
FROM pg_index x
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_class i ON i.oid = x.indexrelid
CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, ord)
LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
WHERE t.relname = %s AND t.relnamespace = current_schema()::regnamespace
GROUP BY i.relname, x.indisunique
"""


def indexes(db: psycopg.Connection, table: str) -> dict[str, tuple[bool, list[str | None]]]:
    """Each index of a table: (unique, its key columns in order; None for an expression)."""
    return {name: (unique, columns) for name, unique, columns in db.execute(_INDEXES, (table,))}


@pytest.mark.parametrize("table", list(TABLES))
def test_every_key_and_index_of_a_record_table_leads_with_workspace_id(db: psycopg.Connection, table: str) -> None:
    found = indexes(db, table)
    assert any(unique for unique, _ in found.values()), f"{table} has no unique key"
    leading = {name: columns[0] for name, (_, columns) in found.items()}
    assert leading == dict.fromkeys(found, "workspace_id")


@pytest.mark.parametrize("table", DISTRIBUTED)
def test_every_unique_key_of_a_distributed_table_includes_workspace_id(db: psycopg.Connection, table: str) -> None:
    """Citus's rule for a distributed table: a unique constraint includes the distribution column."""
    unique = {name: columns for name, (is_unique, columns) in indexes(db, table).items() if is_unique}
    assert unique and {name: "workspace_id" in columns for name, columns in unique.items()} == dict.fromkeys(
        unique, True
    )


# -- the read queries ------------------------------------------------------------------------

_KEYWORDS = {"where", "on", "using", "left", "right", "inner", "join", "cross", "group", "order", "limit", "union"}
_REFERENCE_RE = re.compile(r'\b(?:from|join)\s+"?(' + "|".join(DISTRIBUTED) + r')(?!\w)"?(?:\s+(?:as\s+)?(\w+))?', re.I)


def unscoped(query: str) -> list[str]:
    """The distributed tables a query reads without a `workspace_id =` condition for each reference.

    Each reference (FROM or JOIN, with its alias if it has one) must be matched by a condition
    on the workspace: `workspace_id = ...` for a table without an alias, `alias.workspace_id = ...`
    (or `= alias.workspace_id`) for one with. References and conditions are counted per alias.
    """
    references: dict[str | None, list[str]] = {}
    for match in _REFERENCE_RE.finditer(query):
        table, alias = match.group(1), match.group(2)
        alias = None if alias is None or alias.lower() in _KEYWORDS else alias
        references.setdefault(alias, []).append(table)
    missing = []
    for alias, tables in references.items():
        column = r'(?<![\w.])"?workspace_id"?' if alias is None else rf'\b{alias}\."?workspace_id"?'
        conditions = len(re.findall(rf"{column}\s*=|=\s*{column}", query))
        if conditions < len(tables):
            missing += tables
    return missing


@pytest.fixture
def recorded_sql(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every statement the api sends to Postgres, as text, while the test runs."""
    seen: list[str] = []
    original = psycopg.AsyncCursor.execute

    async def execute(self: psycopg.AsyncCursor[Any], query: Any, params: Any = None, **kwargs: Any) -> Any:
        if isinstance(query, sql.Composable):
            seen.append(query.as_string(self.connection))
        else:
            seen.append(query.decode() if isinstance(query, bytes) else str(query))
        return await original(self, query, params, **kwargs)

    monkeypatch.setattr(psycopg.AsyncCursor, "execute", execute)
    yield seen


# Each request that reads a workspace's data (every read endpoint, with each of its filters).
READS = [
    ("GET", "/v2/pushes/p1", None),
    ("GET", "/v2/pushes/unknown", None),
    ("GET", "/v2/signals", None),
    ("GET", "/v2/signals?consumed=false", None),
    ("GET", "/v2/signals?consumed=true&skill=parser&signal_type=correction&since=2026-01-01&until=2027-01-01", None),
    ("GET", "/v2/signals?limit=1", None),  # then its next page, by cursor (below)
    ("POST", "/v2/signals/sig-1/consume", {"run_id": "run-1"}),
    ("POST", "/v2/signals/sig-1/consume", {"run_id": "run-2"}),  # an earlier consumption stands: the re-read
    ("GET", "/v2/skills", None),
    ("GET", "/v2/skills?limit=1", None),
    ("GET", "/v2/skills/parser/grading", None),
    ("GET", "/v2/skills/parser/grading?since=2026-01-01&until=2027-01-01&limit=1", None),
]
# Routes that read no workspace's records, and why.
NOT_WORKSPACE_READS = {
    "/v2/push": "the write path: enqueues, reads no table",
    "/api/v1/push": "the write path",
    "/healthz": "no table",
    "/readyz": "the migration version",
    "/readyz/database": "the migration version",
    "/metrics": "Redis counters",
    "/openapi.json": "no table",
    "/device": "a static page",
    "/v2/device-code": "device_codes, a reference table",
    "/api/v1/device-code": "device_codes, a reference table",
    "/v2/device-code/poll": "device_codes and api_keys, reference tables",
    "/api/v1/device-code/poll": "device_codes and api_keys, reference tables",
    "/ops": "the operator's page: every workspace's recent pushes, on purpose (a multi-shard query under Citus)",
    "/ops/state.json": "the operator's page's data, as /ops",
    "/v2/alpha/verify": "read per key: test_verify_filters_by_workspace below",
    "/api/v1/alpha/verify": "as /v2/alpha/verify",
}


@pytest.fixture
def populated(db: psycopg.Connection, settings: Settings, use_worker_settings: Any) -> str:
    """A workspace's key, with a push written holding a signal and a grading result of skill parser."""
    key = new_account(db, "acme").key
    records = {
        "sessions": [samples.session(1)],
        "improvement_signals": [samples.improvement_signal(i, mentioned_skill="parser") for i in (1, 2)],
        "grading_results": [samples.grading_result(i, skill_name="parser") for i in (1, 2)],
    }
    with TestClient(create_app(settings)) as c:
        assert push_json(c, key, records, "p1").status_code == 202
    run_burst_worker(settings)
    return key


def test_every_read_query_filters_by_workspace(
    populated: str, settings: Settings, recorded_sql: list[str], db: psycopg.Connection
) -> None:
    app = create_app(settings)
    routes = {r.path for r in app.routes if isinstance(r, Route)}
    read_paths = {
        "/v2/pushes/{push_id:text}",
        "/v2/signals",
        "/v2/signals/{signal_id:text}/consume",
        "/v2/skills",
        "/v2/skills/{skill_name:text}/grading",
    }
    # A new route is either walked here or says why it reads no workspace's records.
    assert routes == read_paths | set(NOT_WORKSPACE_READS)
    auth = {"Authorization": f"Bearer {populated}"}
    with TestClient(app) as c:
        for method, path, body in READS:
            answer = c.request(method, path, json=body, headers=auth)
            assert answer.status_code in (200, 404), (path, answer.text)
        cursor = c.get("/v2/signals?limit=1", headers=auth).json()["next_cursor"]
        assert cursor and c.get(f"/v2/signals?limit=1&cursor={cursor}", headers=auth).status_code == 200
    reads = [q for q in recorded_sql if _REFERENCE_RE.search(q)]
    assert len(reads) >= len(READS)  # every request above read a distributed table
    assert {q: unscoped(q) for q in reads} == {q: [] for q in reads}


def test_verify_filters_by_workspace(populated: str, settings: Settings, recorded_sql: list[str]) -> None:
    with TestClient(create_app(settings)) as c:
        assert c.get("/v2/alpha/verify", headers={"Authorization": f"Bearer {populated}"}).status_code == 200
    reads = [q for q in recorded_sql if _REFERENCE_RE.search(q)]
    assert reads and {q: unscoped(q) for q in reads} == {q: [] for q in reads}


def test_the_scope_check_catches_a_query_without_the_workspace() -> None:
    """The check itself: it would fail the reads above if one forgot its workspace."""
    assert unscoped("SELECT * FROM prompts WHERE workspace_id = %s") == []
    assert unscoped("SELECT * FROM prompts WHERE prompt_id = %s") == ["prompts"]
    assert unscoped('SELECT * FROM "prompts_by_day" d WHERE d.day = 1') == []  # not the prompts table
    assert unscoped("SELECT * FROM pushes p JOIN prompts q ON q.push_id = p.push_id WHERE p.workspace_id = %s") == [
        "prompts"
    ]
    assert unscoped("SELECT (SELECT x FROM sessions WHERE workspace_id = 1), (SELECT y FROM sessions)") == [
        "sessions",
        "sessions",
    ]
