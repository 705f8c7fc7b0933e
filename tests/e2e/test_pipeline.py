"""HTTP in, rows out: pushes through a real api and a real worker land in Postgres."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg

from bench import samples
from tests.e2e.rows import all_processed, expected_ids, ids_in, push_row
from tests.e2e.stack import Api, Stack
from tests.support import Account, snapshot

EVERY_TYPE_ONCE = dict.fromkeys(samples.FACTORIES, 1)


def documented_envelope(workspace_id: str, records: dict[str, Any]) -> dict[str, Any]:
    """The envelope of the public documentation: records under `data`."""
    return {
        "workspace_id": workspace_id,
        "cli_version": "0.2.32",
        "pushed_at": "2026-11-28T10:00:00Z",
        "push_id": f"doc-{uuid.uuid4()}",
        "data": records,
    }


def cli_envelope(records: dict[str, Any]) -> dict[str, Any]:
    """The envelope the real CLI sends (PushPayloadV2): records under `canonical`."""
    return {
        "schema_version": "2.0",
        "client_version": "0.2.32",
        "push_id": str(uuid.uuid4()),
        "normalizer_version": "1.0.0",
        "canonical": records,
        "content_hashes": {"prompt:prompt-2": "0" * 64},
    }


def push_both(api: Api, account: Account, documented: dict[str, Any], cli: dict[str, Any]) -> list[str]:
    """Push the records in the documented envelope to /v2/push and in the CLI's to /api/v1/push."""
    push_ids = []
    for path, body in (
        ("/v2/push", documented_envelope(account.workspace_id, documented)),
        ("/api/v1/push", cli_envelope(cli)),
    ):
        response = api.push(account.key, body, path)
        assert response.status_code == 202, f"{path}: {response.status_code} {response.text}"
        answer = response.json()
        assert answer["success"] is True
        assert answer["accepted"] == EVERY_TYPE_ONCE
        assert answer["push_id"] == body["push_id"]
        push_ids.append(body["push_id"])
    return push_ids


def test_push_every_type_lands(stack: Stack, api: Api, account: Account, db: psycopg.Connection) -> None:
    stack.start_worker()
    documented, cli = samples.one_of_each(1), samples.one_of_each(2)
    workspace = account.workspace_id

    push_ids = push_both(api, account, documented, cli)
    stack.wait_until(lambda: all_processed(db, workspace, push_ids), f"the worker processed pushes {push_ids}")

    for table in samples.FACTORIES:
        assert ids_in(db, table, workspace) == expected_ids(table, documented, cli), table
    for push_id in push_ids:
        assert push_row(db, workspace, push_id) == ("processed", EVERY_TYPE_ONCE, {})

    # The CLI re-sends after a lost answer with a new push id: still one row per record.
    before = snapshot(db)
    again = push_both(api, account, documented, cli)
    stack.wait_until(lambda: all_processed(db, workspace, again), f"the worker processed re-pushes {again}")
    assert snapshot(db) == before
    for push_id in again:
        assert push_row(db, workspace, push_id) == ("processed", EVERY_TYPE_ONCE, {})


def test_invalid_record_quarantined_while_others_land(
    stack: Stack, api: Api, account: Account, db: psycopg.Connection
) -> None:
    stack.start_worker()
    good = [json.dumps(samples.prompt(1)).encode(), json.dumps(samples.prompt(3)).encode()]
    # Laid out unlike the server would write it: quarantine must keep the bytes as sent.
    bad = json.dumps(samples.prompt(2, prompt_text=""), indent=1).encode()
    body = b'{"push_id": "one-bad-prompt", "data": {"prompts": [' + b", ".join([good[0], bad, good[1]]) + b"]}}"

    response = api.push(account.key, body)

    assert response.status_code == 202, response.text
    answer = response.json()
    assert (answer["accepted"], answer["rejected"]) == ({"prompts": 2}, {"prompts": 1})
    assert answer["errors"] == ["data.prompts[1].prompt_text: Expected `str` of length >= 1"]

    workspace = account.workspace_id
    stack.wait_until(lambda: all_processed(db, workspace, ["one-bad-prompt"]), "the worker processed the push")
    assert ids_in(db, "prompts", workspace) == ["prompt-1", "prompt-3"]
    quarantined = db.execute(
        "SELECT push_id, record_type, record_index, error, raw FROM quarantine WHERE workspace_id = %s", (workspace,)
    ).fetchall()
    assert quarantined == [
        ("one-bad-prompt", "prompts", 1, "data.prompts[1].prompt_text: Expected `str` of length >= 1", bad)
    ]
    assert push_row(db, workspace, "one-bad-prompt") == ("processed", {"prompts": 2}, {"prompts": 1})
