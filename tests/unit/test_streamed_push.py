"""Pushes past MAX_BODY_BYTES: streamed to the spool, answered 202, drained into Redis in chunks (fakeredis).

The worker's side (splitting the body from Redis into Postgres) is in
tests/integration/test_streamed_jobs.py and tests/e2e/test_big_push.py.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import replace
from typing import Any

import fakeredis
import pytest
from rq import Queue
from starlette.testclient import TestClient

from bench.samples import prompt, session
from runtime.settings import MIB, Settings
from schema.batches import INGEST_STREAMED_JOB, body_key, decode_batch
from tests.unit.inprocess import WORKSPACE, make_client
from tests.unit.test_push_api import assert_error, post

BODY_LIMIT = 64 * 1024


@pytest.fixture
def settings() -> Settings:
    return replace(
        Settings.from_env(),
        max_body_bytes=BODY_LIMIT,
        max_compressed_body_bytes=16 * 1024,
        max_push_bytes=4 * MIB,
        max_record_bytes=256 * 1024,
    )


@pytest.fixture
def redis(server: fakeredis.FakeServer) -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=server)


def big_body(push_id: str = "big-1", big_text: int = 200_000, ordinary: int = 11) -> bytes:
    """`ordinary` prompts and sessions, and one prompt holding a pasted log of `big_text` characters."""
    records = [prompt(i) for i in range(ordinary - 1)] + [prompt(99, text_size=big_text)]
    return json.dumps(
        {"push_id": push_id, "client_version": "0.2.32", "canonical": {"sessions": [session(1)], "prompts": records}}
    ).encode()


def spool_stats(client: TestClient) -> Any:
    return client.portal.call(client.app.state.spool.stats)  # type: ignore[attr-defined]


def drain(client: TestClient) -> int:
    return client.portal.call(client.app.state.drainer.drain_once)  # type: ignore[attr-defined, no-any-return]


def test_a_body_past_max_body_bytes_is_spooled_answered_202_and_drained_into_redis_in_chunks(
    client: TestClient, queue: Queue, redis: fakeredis.FakeRedis
) -> None:
    body = big_body()
    assert len(body) > 3 * BODY_LIMIT
    resp = post(client, body, path="/api/v1/push")

    assert resp.status_code == 202, resp.text
    # The big prompt is within MAX_RECORD_BYTES here: every record is checked and counted by the api.
    assert resp.json() == {
        "ok": True,
        "success": True,
        "push_id": "big-1",
        "accepted": {"sessions": 1, "prompts": 11},
        "errors": [],
    }
    assert queue.count == 0 and spool_stats(client).batches == 1 and spool_stats(client).bytes >= len(body)
    again = post(client, body)
    assert again.status_code == 200 and again.json() == {**resp.json(), "duplicate": True}
    assert spool_stats(client).batches == 1  # the twin was not kept

    assert drain(client) == 1
    assert spool_stats(client).batches == 0 and spool_stats(client).bytes == 0
    [job] = queue.jobs
    assert job.func_name == INGEST_STREAMED_JOB
    batch = decode_batch(job.args[0])
    assert (batch.push_id, batch.workspace_id, batch.cli_version) == ("big-1", WORKSPACE, "0.2.32")
    assert batch.body_key == body_key(WORKSPACE, "big-1") and batch.body_bytes == len(body)
    assert redis.get(batch.body_key) == body  # byte for byte
    assert 0 < redis.ttl(batch.body_key) <= Settings.from_env().failed_ttl_s
    after = post(client, body)
    assert after.status_code == 200 and after.json()["duplicate"] is True
    assert drain(client) == 0 and queue.count == 1


def test_a_record_over_max_record_bytes_is_rejected_unread_and_the_rest_accepted(client: TestClient) -> None:
    # 1 MB of text is over this test's MAX_RECORD_BYTES (256 KiB).
    resp = post(client, big_body(big_text=1_000_000))
    assert resp.status_code == 202, resp.text
    answer = resp.json()
    assert answer["accepted"] == {"sessions": 1, "prompts": 10} and answer["rejected"] == {"prompts": 1}
    [error] = answer["errors"]
    assert error.startswith("canonical.prompts[10]: record of 1000") and "over MAX_RECORD_BYTES=262144" in error


def test_gzip_past_max_body_bytes_inflated_is_streamed_too(client: TestClient, redis: fakeredis.FakeRedis) -> None:
    body = big_body(push_id="gz-big")
    resp = post(client, gzip.compress(body), **{"Content-Encoding": "gzip"})
    assert resp.status_code == 202, resp.text
    assert resp.json()["accepted"] == {"sessions": 1, "prompts": 11}
    assert drain(client) == 1
    assert redis.get(body_key(WORKSPACE, "gz-big")) == body  # inflated, as the worker reads it


def test_a_body_sent_in_small_chunks_without_a_length_is_streamed(client: TestClient) -> None:
    body = big_body(push_id="chunked")

    def pieces() -> Any:
        for i in range(0, len(body), 7919):
            yield body[i : i + 7919]

    resp = client.post(
        "/v2/push",
        content=pieces(),
        headers={"Authorization": f"Bearer {make_key()}", "Content-Type": "application/json"},
    )
    assert resp.status_code == 202, resp.text
    assert resp.json()["accepted"] == {"sessions": 1, "prompts": 11}


def make_key() -> str:
    from tests.unit.test_push_api import KEY

    return KEY


def test_over_max_push_bytes_is_413_naming_the_setting(client: TestClient, settings: Settings) -> None:
    body = big_body(big_text=settings.max_push_bytes)
    assert_error(post(client, body), 413, "payload_too_large", "MAX_PUSH_BYTES")
    assert spool_stats(client).bytes == 0


def test_a_gzip_bomb_over_max_push_bytes_is_413_on_its_inflated_size(client: TestClient, settings: Settings) -> None:
    bomb = gzip.compress(b'{"data": {}, "pad": "' + b" " * (settings.max_push_bytes + 1) + b'"}')
    assert len(bomb) < settings.max_compressed_body_bytes
    assert_error(post(client, bomb, **{"Content-Encoding": "gzip"}), 413, "payload_too_large", "decompressed body")
    assert spool_stats(client).bytes == 0  # what was spooled before the limit is gone


@pytest.mark.parametrize(
    ("tail", "status", "code", "message"),
    [
        (b'], "x": tru}}', 400, "invalid_json", "JSON is malformed: invalid character"),
        (b"]", 400, "invalid_json", "truncated"),
        (b']}, "push_id": 5}', 422, "invalid_envelope", "push_id: Expected `str | null`, got `int`"),
        (b']}, "workspace_id": "ws_other"}', 403, "workspace_mismatch", ""),
        (b'], "x": "\xff"}}', 400, "invalid_json", "invalid UTF-8"),
    ],
)
def test_a_streamed_body_is_refused_like_any_other_and_not_kept(
    client: TestClient, queue: Queue, tail: bytes, status: int, code: str, message: str
) -> None:
    records = b",".join(json.dumps(prompt(i, text_size=20_000)).encode() for i in range(10))
    resp = post(client, b'{"data": {"prompts": [' + records + tail)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code and message in resp.json()["error"]["message"]
    assert spool_stats(client).bytes == 0 and spool_stats(client).batches == 0 and queue.count == 0


def test_too_many_records_in_a_streamed_body_is_413(settings: Settings, server: fakeredis.FakeServer) -> None:
    records = b",".join(json.dumps(prompt(i)).encode() for i in range(200))
    with make_client(replace(settings, max_records_per_push=100), fakeredis.FakeAsyncRedis(server=server)) as c:
        resp = post(c, b'{"data": {"prompts": [' + records + b"]}}")
        assert_error(resp, 413, "too_many_records", "MAX_RECORDS_PER_PUSH")
        assert spool_stats(c).bytes == 0


def test_without_a_spool_a_body_past_max_body_bytes_is_413_as_before(
    settings: Settings, server: fakeredis.FakeServer
) -> None:
    with make_client(replace(settings, spool_max_bytes=0), fakeredis.FakeAsyncRedis(server=server)) as c:
        assert_error(post(c, big_body()), 413, "payload_too_large", "MAX_BODY_BYTES")


def test_a_full_spool_is_503_with_retry_after(settings: Settings, server: fakeredis.FakeServer) -> None:
    with make_client(replace(settings, spool_max_bytes=200_000), fakeredis.FakeAsyncRedis(server=server)) as c:
        resp = post(c, big_body())
        assert resp.status_code == 503 and resp.headers["Retry-After"]
        assert "SPOOL_MAX_BYTES" in resp.json()["error"]["message"]
        assert spool_stats(c).bytes == 0
