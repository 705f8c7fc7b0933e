"""The push endpoint through the real Starlette stack, with fakeredis and an in-memory key store.

These are fast unit tests: no servers. What a CLI sees (status codes, bodies,
headers) and what lands in the queue (one RQ job per push id) are asserted.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import replace
from typing import Any

import fakeredis
import lz4.frame
import msgspec
import pytest
from redis.asyncio import Redis as AsyncRedis
from rq import Queue
from starlette.testclient import TestClient

from api.app import create_app
from api.auth import ApiKey
from bench.samples import one_of_each, prompt, session
from runtime.settings import Settings
from schema import validation
from schema.batches import INGEST_JOB, decode_batch
from tests.unit.inprocess import KEY, OTHER_KEY, WORKSPACE, MemoryKeys, make_client


@pytest.fixture
def settings() -> Settings:
    return replace(
        Settings.from_env(), max_body_bytes=64 * 1024, max_compressed_body_bytes=16 * 1024, max_push_bytes=1024 * 1024
    )


def post(client: TestClient, body: Any, path: str = "/v2/push", key: str | None = KEY, **headers: str) -> Any:
    hdrs = {"Content-Type": "application/json", **headers}
    if key is not None:
        hdrs["Authorization"] = f"Bearer {key}"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(path, content=content, headers=hdrs)


def assert_error(resp: Any, status: int, code: str, contains: str) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["ok"] is False and body["success"] is False
    assert body["error"]["code"] == code
    assert contains in body["error"]["message"]
    assert body["errors"] == [body["error"]["message"]]


# -- accepted -----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v2/push", "/api/v1/push"])
def test_push_of_every_type_is_accepted_and_queued_once(client: TestClient, queue: Queue, path: str) -> None:
    resp = post(client, {"cli_version": "0.2.32", "push_id": "p1", "data": one_of_each()}, path=path)

    assert resp.status_code == 202
    assert resp.json() == {
        "ok": True,
        "success": True,
        "push_id": "p1",
        "accepted": dict.fromkeys(one_of_each(), 1),
        "errors": [],
    }
    [job] = queue.jobs
    assert job.func_name == INGEST_JOB
    batch = decode_batch(job.args[0])
    assert (batch.workspace_id, batch.push_id, batch.cli_version) == (WORKSPACE, "p1", "0.2.32")
    assert {k: len(v) for k, v in batch.raw_records().items()} == dict.fromkeys(one_of_each(), 1)


def test_cli_envelope_is_accepted(client: TestClient, queue: Queue) -> None:
    body = {
        "schema_version": "2.0",
        "client_version": "0.2.40",
        "push_id": "0b8f7c9e-1111-4222-8333-444455556666",
        "normalizer_version": "1.0.0",
        "canonical": {"sessions": [session(1)], "prompts": [prompt(1), prompt(2)]},
        "content_hashes": {"prompt:prompt-1": "ab" * 32},
    }
    resp = post(client, body)
    assert resp.status_code == 202
    assert resp.json()["accepted"] == {"sessions": 1, "prompts": 2}
    assert decode_batch(queue.jobs[0].args[0]).cli_version == "0.2.40"


def test_job_carries_no_pickle_and_no_body_in_its_description(client: TestClient, queue: Queue) -> None:
    post(client, {"push_id": "p-desc", "data": {"prompts": [prompt(1, text_size=5000)]}})
    [job] = queue.jobs
    assert len(job.description) < 100 and "please refactor" not in job.description
    raw = queue.connection.hget(job.key, "data")
    assert raw.startswith(b"\x04\x22\x4d\x18")  # an lz4 frame (JOB_DATA_COMPRESSION=lz4) ...
    plain = lz4.frame.decompress(raw)
    assert plain.startswith(b"\x94") and len(raw) < len(plain) / 2  # ... of msgpack, not a pickle (0x80)
    batch = decode_batch(job.args[0])
    assert batch.push_id == "p-desc" and len(batch.raw_records()["prompts"]) == 1


def test_job_data_is_stored_as_sent_when_asked_and_reads_back_the_same(
    settings: Settings, server: fakeredis.FakeServer, queue: Queue
) -> None:
    body = {"push_id": "p-plain", "data": {"prompts": [prompt(1, text_size=5000)]}}
    with make_client(replace(settings, job_data_compression="none"), fakeredis.FakeAsyncRedis(server=server)) as c:
        assert post(c, body).status_code == 202
    [job] = queue.jobs
    raw = queue.connection.hget(job.key, "data")
    assert b"please refactor" in raw and raw.startswith(b"\x94")  # msgpack of RQ's 4-tuple
    batch = decode_batch(job.args[0])
    assert batch.push_id == "p-plain" and len(batch.raw_records()["prompts"]) == 1


def test_invalid_record_is_reported_with_its_path_and_kept_for_quarantine(client: TestClient, queue: Queue) -> None:
    bad = prompt(2, prompt_kind="shouting")
    resp = post(client, {"push_id": "p2", "data": {"prompts": [prompt(1), bad, prompt(3)]}})

    assert resp.status_code == 202
    body = resp.json()
    assert body["accepted"] == {"prompts": 2}
    assert body["rejected"] == {"prompts": 1}
    assert len(body["errors"]) == 1 and body["errors"][0].startswith("data.prompts[1].prompt_kind: Invalid enum value")
    batch = decode_batch(queue.jobs[0].args[0])
    [rejected] = batch.rejected
    assert (rejected.record_type, rejected.index) == ("prompts", 1)
    assert msgspec.json.decode(rejected.raw) == bad


def _with_escape(body: dict[str, Any], escape: str) -> bytes:
    """The body as JSON, with the placeholder LONE replaced by a raw escape (json.dumps would pair or refuse it)."""
    return json.dumps(body).replace("LONE", escape).encode()


def test_an_unpaired_surrogate_escape_rejects_its_record_not_the_batch(client: TestClient, queue: Queue) -> None:
    # JavaScript makes "\ud83d" by cutting a string inside an emoji; it is valid JSON, but not text.
    cut = prompt(2, prompt_text="a smile LONE")
    body = {
        "schema_version": "2.0",
        "push_id": "cut",
        "canonical": {"sessions": [session(1)], "prompts": [prompt(1), cut]},
    }
    resp = post(client, _with_escape(body, "\\ud83d"))

    assert resp.status_code == 202, resp.text
    assert resp.json()["accepted"] == {"sessions": 1, "prompts": 1}
    assert resp.json()["rejected"] == {"prompts": 1}
    assert resp.json()["errors"] == [
        "canonical.prompts[1].prompt_text: string holds an unpaired UTF-16 surrogate (\\ud83d), which is not text"
        " and cannot be stored"
    ]
    batch = decode_batch(queue.jobs[0].args[0])
    [rejected] = batch.rejected
    assert rejected.index == 1 and b"a smile \\ud83d" in rejected.raw  # kept as sent, for quarantine
    assert [msgspec.json.decode(r)["prompt_id"] for r in batch.raw_records()["prompts"]] == ["prompt-1"]


def test_an_unpaired_surrogate_in_an_ignored_field_is_ignored(client: TestClient) -> None:
    body = {"push_id": "hashes", "content_hashes": {"prompt:1": "LONE"}, "canonical": {"sessions": [session(1)]}}
    resp = post(client, _with_escape(body, "\\udc00"))
    assert resp.status_code == 202, resp.text
    assert resp.json()["accepted"] == {"sessions": 1} and "rejected" not in resp.json()


def test_an_unpaired_surrogate_in_a_record_field_nobody_reads_is_ignored(client: TestClient) -> None:
    newer = session(1, field_from_a_newer_cli="LONE")
    resp = post(client, _with_escape({"push_id": "newer", "canonical": {"sessions": [newer, session(2)]}}, "\\ud83d"))
    assert resp.status_code == 202, resp.text
    assert resp.json()["accepted"] == {"sessions": 2} and "rejected" not in resp.json()


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        # Deep, with a surrogate elsewhere: read by the scanner, and `data` is the misplaced array it is
        # (not a RecursionError, a 500, nor a 400 for the depth).
        (b'{"x": "\\udc00", "data": ' + b"[" * 5000 + b"]" * 5000 + b"}", 422, "data: Expected `object"),
        (b'{"x": "\\udc00", "data": ' + b"[" * 490 + b"1" + b"]" * 490 + b"}", 422, "data: Expected `object"),
        # A byte order mark, or broken JSON that merely holds "\ud": msgspec's own 400.
        (b'\xef\xbb\xbf{"push_id": "\\ud83d", "data": {}}', 400, "body is not valid JSON"),
        (
            b'{"path": "C:\\udata", "data": {',
            400,
            "not valid JSON: JSON is malformed: invalid character in unicode escape",
        ),
    ],
)
def test_a_body_holding_an_unpaired_surrogate_is_refused_like_any_other(
    client: TestClient, queue: Queue, body: bytes, status: int, message: str
) -> None:
    resp = post(client, body)
    assert resp.status_code == status, resp.text
    assert message in resp.json()["error"]["message"]
    assert queue.count == 0


def test_records_of_a_type_this_version_does_not_know_never_count_against_the_limit(
    settings: Settings, server: fakeredis.FakeServer
) -> None:
    body = {"x": "LONE", "data": {"sessions": [session(1)], "future_type": [{}] * 10}}
    with make_client(replace(settings, max_records_per_push=5), fakeredis.FakeAsyncRedis(server=server)) as client:
        with_surrogate = post(client, _with_escape(body, "\\ud83d"))
        without = post(client, _with_escape({**body, "push_id": "plain"}, "x"))
    for resp in (with_surrogate, without):
        assert resp.status_code == 202, resp.text
        assert resp.json()["accepted"] == {"sessions": 1}


def test_too_many_records_with_an_unpaired_surrogate_is_refused_before_any_record_is_validated(
    settings: Settings, server: fakeredis.FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[str] = []
    real = validation.check_record
    monkeypatch.setattr(validation, "check_record", lambda t, *a: checked.append(t) or real(t, *a))
    body = _with_escape({"x": "LONE", "data": {"sessions": [{}] * 20_000}}, "\\ud800")
    with make_client(replace(settings, max_body_bytes=1 << 20), fakeredis.FakeAsyncRedis(server=server)) as client:
        resp = post(client, body)
    assert_error(resp, 413, "too_many_records", "20000 records is over the limit of 10000 per push")
    assert checked == []


def test_an_unpaired_surrogate_in_the_push_id_is_422(client: TestClient, queue: Queue) -> None:
    resp = post(client, _with_escape({"push_id": "pLONE", "data": {"sessions": [session(1)]}}, "\\ud800"))
    assert_error(resp, 422, "invalid_envelope", "push_id: string holds an unpaired UTF-16 surrogate (\\ud800)")
    assert queue.count == 0


def test_repeated_push_id_is_answered_200_duplicate_and_not_queued_again(client: TestClient, queue: Queue) -> None:
    body = {"push_id": "same", "data": {"sessions": [session(1)]}}
    first = post(client, body)
    second = post(client, body)

    assert first.status_code == 202
    assert second.status_code == 200
    assert second.json() == {**first.json(), "duplicate": True}
    assert queue.count == 1


def test_past_the_memory_headroom_a_push_is_spooled_answered_and_drained_later(
    settings: Settings, server: fakeredis.FakeServer, queue: Queue
) -> None:
    with make_client(settings, fakeredis.FakeAsyncRedis(server=server)) as client:
        state = client.app.state  # type: ignore[attr-defined]
        state.queue_watch.memory = (90 * 2**20, 100 * 2**20)  # 90 % of maxmemory, over REDIS_MEMORY_HIGH_PCT=80
        first = post(client, {"push_id": "first", "data": {"sessions": [session(1)]}})
        again = post(client, {"push_id": "first", "data": {"sessions": [session(1)]}})
        assert queue.count == 0  # nothing went to Redis past the headroom
        assert client.portal.call(state.spool.stats).batches == 1
        state.queue_watch.memory = (10 * 2**20, 100 * 2**20)  # the workers drained Redis
        assert client.portal.call(state.drainer.drain_once) == 1
        after = post(client, {"push_id": "first", "data": {"sessions": [session(1)]}})

    assert first.status_code == 202 and first.json()["accepted"] == {"sessions": 1}
    assert again.status_code == 200 and again.json() == {**first.json(), "duplicate": True}
    assert after.status_code == 200 and after.json() == {**first.json(), "duplicate": True}
    assert queue.count == 1
    assert decode_batch(queue.jobs[0].args[0]).push_id == "first"


def test_queue_depth_is_never_a_reason_to_refuse(
    settings: Settings, server: fakeredis.FakeServer, queue: Queue
) -> None:
    no_info = replace(settings, redis_memory_high_pct=0)  # fakeredis has no INFO
    with make_client(no_info, fakeredis.FakeAsyncRedis(server=server)) as client:
        for i in range(30):
            assert post(client, {"push_id": f"deep-{i}", "data": {"sessions": [session(i)]}}).status_code == 202
        state = client.portal.call(client.app.state.queue_watch.refresh)  # type: ignore[attr-defined]
        assert state.depth == 30
        assert post(client, {"push_id": "one-more", "data": {"sessions": [session(99)]}}).status_code == 202
    assert queue.count == 31


@pytest.mark.parametrize(("retries", "pauses"), [(3, [1, 5, 30]), (7, [1, 5, 30, 120, 600, 600, 600])])
def test_a_queued_batch_is_retried_after_the_documented_pauses(
    settings: Settings, server: fakeredis.FakeServer, queue: Queue, retries: int, pauses: list[int]
) -> None:
    # JOB_RETRY_BACKOFF_S "1,5,30,120,600": the pauses in order, the last repeated, as many as JOB_RETRIES.
    retrying = replace(settings, job_retries=retries, job_retry_backoff_s=(1, 5, 30, 120, 600))
    with make_client(retrying, fakeredis.FakeAsyncRedis(server=server)) as client:
        assert post(client, {"data": {"sessions": [session(1)]}}).status_code == 202
    [job] = queue.jobs
    waits = []
    while job.retries_left:
        waits.append(job.get_retry_interval())  # what RQ waits before the next attempt
        job.retries_left -= 1
    assert waits == pauses


def test_same_push_id_in_another_workspace_is_a_different_push(client: TestClient, queue: Queue) -> None:
    body = {"push_id": "shared-id", "data": {"sessions": [session(1)]}}
    assert post(client, body).status_code == 202
    assert post(client, body, key=OTHER_KEY).status_code == 202
    # Each in its own workspace's shard (QUEUE_SHARDS): ws_test's and ws_other's differ.
    other = Queue(Settings.from_env().queues.for_workspace("ws_other"), connection=queue.connection)
    assert other.name != queue.name
    assert (queue.count, other.count) == (1, 1)


def test_idempotency_key_header_is_the_push_id_when_the_body_has_none(client: TestClient) -> None:
    resp = post(client, {"data": {}}, **{"Idempotency-Key": "hdr-1"})
    assert resp.json()["push_id"] == "hdr-1"
    resp = post(client, {"push_id": "body-1", "data": {}}, **{"Idempotency-Key": "hdr-2"})
    assert resp.json()["push_id"] == "body-1"
    generated = post(client, {"data": {}}).json()["push_id"]
    assert len(generated) == 36  # a uuid


def test_gzip_body_is_accepted(client: TestClient) -> None:
    raw = json.dumps({"data": {"sessions": [session(1)]}}).encode()
    resp = post(client, gzip.compress(raw), **{"Content-Encoding": "gzip"})
    assert resp.status_code == 202
    assert resp.json()["accepted"] == {"sessions": 1}


def test_matching_workspace_id_in_body_is_accepted(client: TestClient) -> None:
    assert post(client, {"workspace_id": WORKSPACE, "data": {}}).status_code == 202


# -- refused ------------------------------------------------------------------------


def test_missing_key_is_401(client: TestClient) -> None:
    resp = post(client, {"data": {}}, key=None)
    assert_error(resp, 401, "unauthorized", "missing Authorization header")
    assert resp.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("sk_live_" + "a" * 43, "malformed"),
        ("st_live_short", "malformed"),
        ("st_live_" + "c" * 43, "unknown or revoked"),
    ],
)
def test_bad_key_is_401_and_never_echoed(client: TestClient, key: str, message: str) -> None:
    resp = post(client, {"data": {}}, key=key)
    assert_error(resp, 401, "unauthorized", message)
    assert key not in resp.text


def test_other_workspace_in_body_is_403(client: TestClient, queue: Queue) -> None:
    resp = post(client, {"workspace_id": "ws_other", "data": {"sessions": [session(1)]}})
    assert_error(resp, 403, "workspace_mismatch", "not the API key's workspace")
    assert queue.count == 0


@pytest.mark.parametrize("body", [b"{", b"not json", b'{"data": {"sessions": [\xff]}}'])
def test_body_that_is_not_json_is_400(client: TestClient, body: bytes) -> None:
    assert_error(post(client, body), 400, "invalid_json", "not valid JSON")


def test_corrupt_gzip_is_400(client: TestClient) -> None:
    assert_error(post(client, b"\x1f\x8bnot gzip at all", **{"Content-Encoding": "gzip"}), 400, "bad_gzip", "gzip")


def test_truncated_gzip_is_400(client: TestClient) -> None:
    data = gzip.compress(json.dumps({"data": {"sessions": [session(1)]}}).encode())
    assert_error(post(client, data[:-12], **{"Content-Encoding": "gzip"}), 400, "bad_gzip", "truncated")


def test_body_over_the_hard_cap_is_413_naming_the_setting(client: TestClient, settings: Settings) -> None:
    # Between MAX_BODY_BYTES and MAX_PUSH_BYTES a body is streamed (tests/unit/test_streamed_push.py).
    body = json.dumps({"data": {"prompts": [prompt(1, text_size=settings.max_push_bytes)]}}).encode()
    assert_error(post(client, body), 413, "payload_too_large", "MAX_PUSH_BYTES")


def test_body_past_max_body_bytes_under_the_cap_is_accepted(client: TestClient, settings: Settings) -> None:
    body = json.dumps({"data": {"prompts": [prompt(1, text_size=settings.max_body_bytes)]}}).encode()
    resp = post(client, body)
    assert resp.status_code == 202, resp.text
    assert resp.json()["accepted"] == {"prompts": 1}


def test_gzip_bomb_is_413_on_its_decompressed_size(client: TestClient, settings: Settings) -> None:
    # 10 MB of spaces inside a JSON string compresses to ~10 KB: under the wire limit, far over the hard cap.
    bomb = gzip.compress(b'{"data": {}, "pad": "' + b" " * 10_000_000 + b'"}')
    assert len(bomb) < settings.max_compressed_body_bytes
    assert_error(post(client, bomb, **{"Content-Encoding": "gzip"}), 413, "payload_too_large", "decompressed body")


def test_compressed_body_over_the_wire_limit_is_413(client: TestClient, settings: Settings) -> None:
    import os

    noise = gzip.compress(os.urandom(settings.max_compressed_push_bytes + 1))
    resp = post(client, noise, **{"Content-Encoding": "gzip"})
    assert_error(resp, 413, "payload_too_large", "MAX_COMPRESSED_BODY_BYTES")


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"Content-Type": "text/plain"}, "Content-Type must be application/json"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, "Content-Type must be application/json"),
        ({"Content-Encoding": "br"}, "Content-Encoding must be gzip or identity"),
    ],
)
def test_unsupported_media_is_415(client: TestClient, headers: dict[str, str], message: str) -> None:
    assert_error(post(client, {"data": {}}, **headers), 415, headers and next(iter(_codes(headers))), message)


def _codes(headers: dict[str, str]) -> list[str]:
    return ["unsupported_encoding" if "Content-Encoding" in headers else "unsupported_media_type"]


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"data": []}, "data"),
        ({"data": {"sessions": {}}}, "data.sessions"),
        ({"canonical": {"prompts": "x"}}, "canonical.prompts"),
        ([], "Expected `object`"),
        ({"push_id": 5}, "push_id"),
        ({"push_id": "x" * 201}, "push_id"),
    ],
)
def test_malformed_envelope_is_422_with_the_path(client: TestClient, body: Any, path: str) -> None:
    assert_error(post(client, body), 422, "invalid_envelope", path)


@pytest.mark.parametrize(
    ("envelope", "path"),
    [
        ({"push_id": "a\x00b"}, "push_id"),
        ({"cli_version": "0.2.32\x00"}, "cli_version"),
        ({"client_version": "\x00"}, "client_version"),
        ({"normalizer_version": "1\x00"}, "normalizer_version"),
    ],
)
def test_nul_in_an_envelope_string_is_422_and_nothing_is_queued(
    client: TestClient, queue: Queue, envelope: dict[str, str], path: str
) -> None:
    # The push row stores these: accepted, the batch could never be written (the worker would fail it).
    resp = post(client, {**envelope, "data": {"sessions": [session(1)]}})
    assert_error(resp, 422, "invalid_envelope", f"{path}: string holds a NUL character")
    assert queue.count == 0


@pytest.mark.parametrize("pushed_at", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"])
def test_pushed_at_outside_the_years_1_to_9999_in_utc_is_422(client: TestClient, queue: Queue, pushed_at: str) -> None:
    for records in ({"sessions": [session(1)]}, {"sessions": [session(1), {"bad": True}]}):  # fast and slow paths
        resp = post(client, {"pushed_at": pushed_at, "data": records})
        assert_error(resp, 422, "invalid_envelope", "pushed_at: time is outside the years 1 to 9999 in UTC")
    assert queue.count == 0


def test_pushed_at_at_the_edge_of_the_range_is_accepted(client: TestClient, queue: Queue) -> None:
    resp = post(client, {"pushed_at": "9999-12-31T09:59:59-14:00", "data": {"sessions": [session(1)]}})
    assert resp.status_code == 202, resp.text
    assert decode_batch(queue.jobs[0].args[0]).pushed_at.year == 9999


def test_redis_down_a_push_is_spooled_and_drained_once_redis_is_back(
    settings: Settings, server: fakeredis.FakeServer, queue: Queue
) -> None:
    with make_client(settings, fakeredis.FakeAsyncRedis(server=server)) as client:
        state = client.app.state  # type: ignore[attr-defined]
        server.connected = False
        first = post(client, {"push_id": "while-down", "data": {"sessions": [session(1)]}})
        again = post(client, {"push_id": "while-down", "data": {"sessions": [session(1)]}})
        assert client.portal.call(state.drainer.drain_once) == 0  # Redis still down: nothing leaves the spool
        server.connected = True
        state.queue_watch.mark_up()  # as the next successful enqueue would
        assert client.portal.call(state.drainer.drain_once) == 1
        assert client.portal.call(state.spool.stats).batches == 0

    assert first.status_code == 202 and first.json()["success"] is True
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert queue.count == 1


def test_without_a_spool_redis_down_is_503_with_retry_after(settings: Settings) -> None:
    dead = AsyncRedis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    with make_client(replace(settings, spool_max_bytes=0), dead) as client:
        resp = post(client, {"data": {"sessions": [session(1)]}})
    assert_error(resp, 503, "unavailable", "this api has no spool (SPOOL_MAX_BYTES=0)")
    assert int(resp.headers["retry-after"]) > 0


def test_a_full_spool_is_503_and_counted(settings: Settings) -> None:
    dead = AsyncRedis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    with make_client(replace(settings, spool_max_bytes=2000), dead) as client:
        assert post(client, {"data": {"sessions": [session(1)]}}).status_code == 202
        resp = post(client, {"data": {"sessions": [session(i) for i in range(2, 9)]}})
        text = client.get("/metrics").text
    assert_error(resp, 503, "unavailable", "SPOOL_MAX_BYTES")
    assert 'selftune_ingest_refused_pushes_total{cause="spool_full"} 1.0' in text
    assert "selftune_ingest_spool_batches 1.0" in text


def test_healthz_answers_without_io_and_readyz_is_about_pushes(settings: Settings) -> None:
    dead = AsyncRedis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    with make_client(settings, dead) as client:
        assert client.get("/healthz").json() == {"ok": True}
        spooling = client.get("/readyz")
    with make_client(replace(settings, spool_max_bytes=0), dead) as client:
        ready = client.get("/readyz")
    # Redis down but the spool writable: pushes are still made durable, so the api stays in rotation.
    assert spooling.status_code == 200, spooling.text
    assert spooling.json()["pushes_go_to"] == "spool"
    assert any(e.startswith("redis:") for e in spooling.json()["degraded"])
    assert ready.status_code == 503
    assert any(e.startswith("redis:") for e in ready.json()["errors"])
    body = ready.json()  # the error body of every other endpoint too, each problem listed
    assert body["success"] is False and body["error"]["code"] == "not_ready"
    assert body["error"]["message"] == "; ".join(body["errors"])


def test_unknown_path_and_method_get_json_errors(client: TestClient) -> None:
    assert_error(client.get("/nope"), 404, "not_found", "no such endpoint")
    assert_error(client.get("/v2/push"), 405, "method_not_allowed", "not allowed")


def test_every_push_is_logged_as_json_with_its_outcome_and_never_the_key(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    from runtime.logs import JsonFormatter

    with caplog.at_level("INFO", logger="selftune.push"):
        post(client, {"push_id": "logged", "data": {"sessions": [session(1)]}})
        post(client, {"data": {}}, key="st_live_" + "z" * 43)
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name == "selftune.push"]
    assert [(entry["status"], entry["outcome"]) for entry in lines] == [(202, "accepted"), (401, "refused")]
    assert lines[0]["push_id"] == "logged" and lines[0]["workspace_id"] == WORKSPACE
    assert lines[0]["accepted"] == 1 and lines[0]["key_id"] == "key_1"
    text = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    assert KEY not in text and "z" * 43 not in text


def test_a_key_over_its_rate_limit_gets_429_with_retry_after(settings: Settings, server: fakeredis.FakeServer) -> None:
    limited = replace(settings, rate_limit_pushes_per_s=0.5, rate_limit_burst=2)
    with make_client(limited, fakeredis.FakeAsyncRedis(server=server)) as client:
        assert post(client, {"push_id": "r1", "data": {}}).status_code == 202
        assert post(client, {"push_id": "r2", "data": {}}).status_code == 202
        refused = post(client, {"push_id": "r3", "data": {}})
        assert_error(refused, 429, "rate_limited", "RATE_LIMIT_PUSHES_PER_S")
        assert 1 <= int(refused.headers["retry-after"]) <= 2
        assert post(client, {"push_id": "r1", "data": {}}).status_code == 200  # duplicates are still answered
        assert post(client, {"push_id": "o1", "data": {}}, key=OTHER_KEY).status_code == 202  # per key


def test_more_records_than_the_limit_is_413_naming_the_setting(
    settings: Settings, server: fakeredis.FakeServer
) -> None:
    small = replace(settings, max_records_per_push=3)
    with make_client(small, fakeredis.FakeAsyncRedis(server=server)) as client:
        assert post(client, {"data": {"prompts": [prompt(i) for i in range(3)]}}).status_code == 202
        resp = post(client, {"data": {"prompts": [prompt(i) for i in range(3)], "sessions": [session(1)]}})
    assert_error(resp, 413, "too_many_records", "MAX_RECORDS_PER_PUSH")
    assert resp.json()["error"]["message"].startswith("4 records is over the limit of 3 per push")


def test_too_many_records_is_refused_before_any_record_is_validated(
    settings: Settings, server: fakeredis.FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 200,000 empty (invalid) records are 600 kB, a few kB gzipped: validating each first
    # held the event loop for seconds and took hundreds of MB.
    checked: list[str] = []
    real = validation.check_record
    monkeypatch.setattr(
        validation, "check_record", lambda record_type, *a: checked.append(record_type) or real(record_type, *a)
    )
    body = gzip.compress(json.dumps({"data": {"sessions": [{}] * 200_000}}).encode())
    with make_client(
        replace(settings, max_compressed_body_bytes=1 << 20, max_body_bytes=1 << 20),
        fakeredis.FakeAsyncRedis(server=server),
    ) as client:
        resp = post(client, body, **{"Content-Encoding": "gzip"})
    assert_error(resp, 413, "too_many_records", "200000 records is over the limit of 10000 per push")
    assert checked == []


def test_string_and_nesting_limits_reject_the_record_not_the_batch(
    settings: Settings, server: fakeredis.FakeServer
) -> None:
    tight = replace(settings, max_string_chars=1000, max_nesting_depth=6)
    deep = session(2)
    deep["raw_source_ref"]["metadata"] = {"a": [[[[[[1]]]]]]}
    long_key = session(4)
    long_key["raw_source_ref"]["metadata"] = {"k" * 1001: 1}
    body = {"data": {"prompts": [prompt(1, text_size=1001), prompt(2)], "sessions": [deep, session(3), long_key]}}
    with make_client(tight, fakeredis.FakeAsyncRedis(server=server)) as client:
        resp = post(client, body)
    assert resp.status_code == 202
    answer = resp.json()
    assert answer["accepted"] == {"prompts": 1, "sessions": 1}
    assert sorted(answer["errors"]) == [
        "data.prompts[0].prompt_text: string of 1001 characters is over MAX_STRING_CHARS=1000",
        "data.sessions[0].raw_source_ref.metadata.a[0][0][0]: nested deeper than MAX_NESTING_DEPTH=6",
        "data.sessions[2].raw_source_ref.metadata: key of 1001 characters is over MAX_STRING_CHARS=1000",
    ]


def test_json_nested_beyond_what_the_decoder_reads_rejects_its_record_alone(client: TestClient, queue: Queue) -> None:
    # Was a 400 for the whole body (the real CLI drops a 4xx batch): now the scanner finds the record's end.
    deep = b'{"raw_source_ref": {"metadata": {"m": ' + b"[" * 5000 + b"]" * 5000 + b"}}}"
    body = b'{"push_id": "deep", "data": {"sessions": [' + deep + b", " + json.dumps(session(2)).encode() + b"]}}"
    resp = post(client, body)
    assert resp.status_code == 202, resp.text
    answer = resp.json()
    assert answer["accepted"] == {"sessions": 1} and answer["rejected"] == {"sessions": 1}
    assert answer["errors"] == ["data.sessions[0]: nested deeper than MAX_NESTING_DEPTH=32"]
    [rejected] = decode_batch(queue.jobs[0].args[0]).rejected
    assert rejected.raw == deep  # verbatim, for the worker's quarantine


def test_a_body_that_arrives_too_slowly_is_408(settings: Settings, server: fakeredis.FakeServer) -> None:
    import asyncio

    import httpx2

    slow = replace(settings, body_read_timeout_s=0.2)
    app = create_app(
        slow, redis=fakeredis.FakeAsyncRedis(server=server), keys=MemoryKeys({KEY: ApiKey("k", WORKSPACE)})
    )

    async def trickle():  # type: ignore[no-untyped-def]
        yield b'{"data": '
        await asyncio.sleep(1.0)
        yield b"{}}"

    async def run() -> Any:
        async with app.router.lifespan_context(app):
            transport = httpx2.ASGITransport(app=app)
            async with httpx2.AsyncClient(transport=transport, base_url="http://t") as c:
                return await c.post(
                    "/v2/push",
                    content=trickle(),
                    headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
                )

    resp = asyncio.run(run())
    assert_error(resp, 408, "request_timeout", "BODY_READ_TIMEOUT_S")


def test_past_max_inflight_requests_a_push_gets_the_usual_503_and_probes_still_answer(
    settings: Settings, server: fakeredis.FakeServer
) -> None:
    import asyncio

    import httpx2

    one = replace(settings, max_inflight_requests=1)
    app = create_app(one, redis=fakeredis.FakeAsyncRedis(server=server), keys=MemoryKeys({KEY: ApiKey("k", WORKSPACE)}))
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    body = json.dumps({"data": {"sessions": [session(1)]}}).encode()
    holding = asyncio.Event()

    async def slow_body():  # type: ignore[no-untyped-def]
        yield body[:10]
        holding.set()
        await asyncio.sleep(0.3)
        yield body[10:]

    async def run() -> tuple[Any, Any, Any, Any]:
        transport = httpx2.ASGITransport(app=app)
        async with app.router.lifespan_context(app), httpx2.AsyncClient(transport=transport, base_url="http://t") as c:
            first = asyncio.create_task(c.post("/v2/push", content=slow_body(), headers=headers))
            await holding.wait()
            refused = await c.post("/v2/push", content=body, headers=headers)
            health = await c.get("/healthz")
            accepted = await first
            return refused, health, accepted, await c.post("/v2/push", content=body, headers=headers)

    refused, health, first, after = asyncio.run(run())
    assert_error(refused, 503, "overloaded", "MAX_INFLIGHT_REQUESTS=1")
    assert refused.headers["retry-after"] == "1"
    assert health.status_code == 200
    assert first.status_code == 202 and after.status_code == 202
