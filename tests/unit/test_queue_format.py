"""What a job carries: a batch queued now and one queued by an earlier build both read back (schema.batches)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import msgspec

from bench import samples
from schema.batches import decode_batch, encode_batch, queued_batch
from schema.validation import validate_push
from tests.support import legacy_payload

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def test_a_wholly_valid_push_is_queued_as_its_body_and_reads_back_whole() -> None:
    body = json.dumps({"data": samples.one_of_each(1), "cli_version": "0.2.32"}).encode()
    batch = decode_batch(
        encode_batch(queued_batch(validate_push(body), workspace_id="w", push_id="p", received_at=NOW))
    )
    assert batch.body == body and batch.records == {} and batch.rejected == []
    assert batch.cli_version == "0.2.32" and batch.pushed_at == NOW
    assert {k: [msgspec.json.decode(r) for r in v] for k, v in batch.raw_records().items()} == samples.one_of_each(1)


def test_a_push_with_a_bad_record_is_queued_record_by_record() -> None:
    records = {"prompts": [samples.prompt(1), samples.prompt(2, prompt_kind="shouting")]}
    batch = decode_batch(
        encode_batch(
            queued_batch(
                validate_push(json.dumps({"data": records}).encode()), workspace_id="w", push_id="p", received_at=NOW
            )
        )
    )
    assert batch.body is None
    assert [json.loads(r) for r in batch.records["prompts"]] == [samples.prompt(1)]
    assert [(r.record_type, r.index, json.loads(r.raw)) for r in batch.rejected] == [
        ("prompts", 1, samples.prompt(2, prompt_kind="shouting"))
    ]


def test_a_batch_queued_as_json_by_an_earlier_build_still_reads_back() -> None:
    records = {"sessions": [samples.session(1)], "prompts": [samples.prompt(1), samples.prompt(2)]}
    batch = decode_batch(legacy_payload(records, "p-old", "ws_old"))
    assert (batch.workspace_id, batch.push_id, batch.cli_version, batch.body) == ("ws_old", "p-old", "0.2.31", None)
    assert {k: [msgspec.json.decode(r) for r in v] for k, v in batch.raw_records().items()} == records
    assert [(r.record_type, r.index, r.raw) for r in batch.rejected] == [("prompts", 9, b"{}")]


def test_a_batch_names_the_key_that_pushed_it_and_one_queued_before_keys_were_recorded_still_reads() -> None:
    body = json.dumps({"data": {"sessions": [samples.session(1)]}}).encode()
    keyed = queued_batch(validate_push(body), workspace_id="w", push_id="p", received_at=NOW, key_id="key_1")
    assert decode_batch(encode_batch(keyed)).key_id == "key_1"
    # An earlier api's batch (msgpack without the field, or JSON): no key, and no error.
    earlier = {k: v for k, v in msgspec.structs.asdict(keyed).items() if k != "key_id"}
    assert decode_batch(msgspec.msgpack.encode(earlier)).key_id is None
    assert decode_batch(legacy_payload({"sessions": [samples.session(1)]}, "p", "w")).key_id is None
