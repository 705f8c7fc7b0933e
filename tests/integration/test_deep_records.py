"""A record nested past what the decoder follows: rejected alone by the api, quarantined verbatim by a worker."""

from __future__ import annotations

import json
from typing import Any

import psycopg
from starlette.testclient import TestClient

from bench import samples
from runtime.settings import Settings
from tests.support import count, run_burst_worker


def test_a_record_nested_100k_deep_is_quarantined_verbatim_and_its_neighbours_land(
    client: TestClient, api_key: str, db: psycopg.Connection, settings: Settings, use_worker_settings: Any
) -> None:
    records = [samples.prompt(i) for i in range(4)]
    records[2]["x_unknown"] = "MARK"
    deep = "[" * 100_000 + "]" * 100_000
    body = json.dumps({"push_id": "p-deep", "canonical": {"prompts": records, "sessions": [samples.session(1)]}})
    resp = client.post(
        "/api/v1/push",
        content=body.replace('"MARK"', deep),
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
    )
    assert resp.status_code == 202, resp.text
    assert resp.json()["errors"] == ["canonical.prompts[2]: nested deeper than MAX_NESTING_DEPTH=32"]

    run_burst_worker(settings)
    assert count(db, "prompts") == 3 and count(db, "sessions") == 1
    raw, error, index = db.execute("SELECT raw, error, record_index FROM quarantine").fetchone()  # type: ignore[misc]
    assert bytes(raw) == json.dumps(records[2]).replace('"MARK"', deep).encode()
    assert (error, index) == ("canonical.prompts[2]: nested deeper than MAX_NESTING_DEPTH=32", 2)
    status, accepted, rejected = db.execute(
        "SELECT status, accepted, rejected FROM pushes WHERE push_id = 'p-deep'"
    ).fetchone()  # type: ignore[misc]
    assert (status, accepted, rejected) == ("processed", {"prompts": 3, "sessions": 1}, {"prompts": 1})
