"""Bodies nested deeper than msgspec can follow (~1,000 levels): never a 500, never the whole push lost."""

from __future__ import annotations

import json

import pytest
from rq import Queue
from starlette.testclient import TestClient

from bench.samples import prompt, session
from schema.batches import decode_batch
from tests.unit.inprocess import KEY
from tests.unit.test_push_api import assert_error, post


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("depth", [1_000, 5_000, 100_000])
@pytest.mark.parametrize("where", ["free-form details", "unknown field"])
def test_one_record_nested_past_the_decoder_is_rejected_alone_and_kept_verbatim(
    client: TestClient, queue: Queue, depth: int, where: str
) -> None:
    records = [prompt(i) for i in range(5)]
    if where == "unknown field":
        records[3]["x_unknown"] = "MARK"
    else:
        records[3]["raw_source_ref"]["metadata"] = {"m": "MARK"}
    body = json.dumps({"push_id": f"deep-{depth}", "canonical": {"sessions": [session(1)], "prompts": records}})
    body = body.replace('"MARK"', nested(depth).decode())
    resp = post(client, body.encode())

    assert resp.status_code == 202, resp.text
    answer = resp.json()
    assert answer["accepted"] == {"sessions": 1, "prompts": 4} and answer["rejected"] == {"prompts": 1}
    assert answer["errors"] == ["canonical.prompts[3]: nested deeper than MAX_NESTING_DEPTH=32"]
    [job] = queue.jobs
    batch = decode_batch(job.args[0])
    assert [r.index for r in batch.rejected] == [3]
    sent = json.dumps(records[3]).replace('"MARK"', nested(depth).decode()).encode()
    assert batch.rejected[0].raw == sent  # byte for byte, for the quarantine
    assert [json.loads(r)["prompt_id"] for r in batch.records["prompts"]] == [f"prompt-{i}" for i in (0, 1, 2, 4)]


def test_deep_records_in_both_sections_count_on_across_them(client: TestClient) -> None:
    deep = b'{"raw_source_ref": {"metadata": {"m": ' + nested(3000) + b"}}}"
    good = json.dumps(prompt(1)).encode()
    body = b'{"data": {"prompts": [' + good + b']}, "canonical": {"prompts": [' + deep + b"," + deep + b"]}}"
    answer = post(client, body).json()
    assert answer["accepted"] == {"prompts": 1} and answer["rejected"] == {"prompts": 2}
    assert answer["errors"] == [
        "canonical.prompts[0]: nested deeper than MAX_NESTING_DEPTH=32",
        "canonical.prompts[1]: nested deeper than MAX_NESTING_DEPTH=32",
    ]


def test_a_deep_body_with_an_unpaired_surrogate_in_a_field_nobody_reads_keeps_that_record(
    client: TestClient, queue: Queue
) -> None:
    with_surrogate = json.dumps(session(2, field_from_a_newer_cli="LONE")).replace("LONE", "\\ud83d")
    deep = json.dumps(session(3, x_unknown="MARK")).replace('"MARK"', nested(2000).decode())
    body = '{"push_id": "mixed", "data": {"sessions": [' + with_surrogate + "," + deep + "]}}"
    answer = post(client, body.encode()).json()
    assert answer["accepted"] == {"sessions": 1} and answer["rejected"] == {"sessions": 1}
    assert answer["errors"] == ["data.sessions[1]: nested deeper than MAX_NESTING_DEPTH=32"]


def test_a_deep_body_that_is_not_json_is_still_400(client: TestClient) -> None:
    body = b'{"data": {"prompts": [' + nested(5000) + b", {]}}"
    assert_error(post(client, body), 400, "invalid_json", "JSON is malformed")


@pytest.mark.parametrize(
    "path",
    [
        "/v2/signals/sig-1/consume",
        "/v2/device-code",
        "/v2/device-code/poll",
        "/api/v1/device-code",
        "/api/v1/device-code/poll",
    ],
)
@pytest.mark.parametrize("depth", [33, 1_000, 20_000])
def test_small_json_endpoints_refuse_deep_bodies_with_400_naming_the_limit(
    client: TestClient, path: str, depth: int
) -> None:
    body = b'{"run_id": "r", "client_id": "c", "device_code": "d", "x": ' + nested(depth - 1) + b"}"
    resp = client.post(
        path, content=body, headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    )
    assert_error(resp, 400, "invalid_json", f"nested {depth} levels deep, deeper than MAX_SMALL_BODY_DEPTH=32")
