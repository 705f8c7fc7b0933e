"""A push past MAX_BODY_BYTES on real servers: streamed by the api, split by a worker, the oversized record quarantined."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from redis import Redis
from starlette.testclient import TestClient

from api.app import create_app
from bench import samples
from runtime.settings import MIB, Settings
from schema.batches import body_key
from tests.support import count, run_burst_worker


@pytest.fixture
def small_limits(settings: Settings, use_worker_settings: Any) -> Settings:
    """In-memory limit 64 KiB, records 256 KiB: a 1 MB prompt makes a streamed push with an oversized record."""
    s = replace(settings, max_body_bytes=64 * 1024, max_push_bytes=8 * MIB, max_record_bytes=256 * 1024)
    use_worker_settings(s)
    return s


@pytest.fixture
def big_client(small_limits: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(small_limits)) as c:
        yield c


def big_push(push_id: str, big_text: int) -> tuple[bytes, bytes]:
    """Eleven ordinary records and one prompt holding a pasted log; returns the body and that prompt's bytes."""
    big = json.dumps(samples.prompt(99, text_size=big_text)).encode()
    prompts = b",".join([*(json.dumps(samples.prompt(i)).encode() for i in range(6)), big])
    sessions = b",".join(json.dumps(samples.session(i)).encode() for i in range(5))
    body = b'{"push_id": "%s", "canonical": {"prompts": [%s], "sessions": [%s]}}' % (
        push_id.encode(),
        prompts,
        sessions,
    )
    return body, big


def workspace_of(db: psycopg.Connection) -> str:
    row = db.execute("SELECT workspace_id FROM workspaces WHERE name = 'acme'").fetchone()
    assert row is not None
    return str(row[0])


def wait_drained(client: TestClient, redis: Redis, key: str) -> None:
    """Until the api's spool drainer (a background task) has moved the body into Redis."""
    deadline = time.monotonic() + 10
    while not redis.exists(key):
        assert time.monotonic() < deadline, "the drainer did not move the streamed body into Redis"
        time.sleep(0.1)


def test_a_streamed_push_lands_and_its_oversized_record_is_quarantined_byte_for_byte(
    big_client: TestClient, api_key: str, db: psycopg.Connection, small_limits: Settings
) -> None:
    body, big = big_push("p-big", 1_000_000)
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    resp = big_client.post("/api/v1/push", content=body, headers=headers)
    assert resp.status_code == 202, resp.text
    assert resp.json()["accepted"] == {"prompts": 6, "sessions": 5} and resp.json()["rejected"] == {"prompts": 1}
    redis = Redis.from_url(small_limits.redis_url)
    key = body_key(workspace_of(db), "p-big")
    wait_drained(big_client, redis, key)

    run_burst_worker(small_limits)
    assert count(db, "prompts") == 6 and count(db, "sessions") == 5
    raw, error, index = db.execute("SELECT raw, error, record_index FROM quarantine").fetchone()  # type: ignore[misc]
    assert bytes(raw) == big and index == 6
    assert error.startswith(f"prompts[6]: record of {len(big)} bytes is over MAX_RECORD_BYTES=262144")
    assert not redis.exists(key)  # deleted once the batch committed
    status = big_client.get("/v2/pushes/p-big", headers=headers).json()
    assert status["status"] == "processed"
    assert status["accepted"] == {"prompts": 6, "sessions": 5} and status["rejected"] == {"prompts": 1}

    again = big_client.post("/api/v1/push", content=body, headers=headers)
    assert again.status_code == 200 and again.json()["duplicate"] is True


def test_a_streamed_push_with_bad_and_too_deep_records_quarantines_them_and_writes_the_rest(
    big_client: TestClient, api_key: str, db: psycopg.Connection, small_limits: Settings
) -> None:
    good = [json.dumps(samples.prompt(i, text_size=30_000)).encode() for i in range(4)]
    bad = json.dumps(samples.prompt(50, prompt_kind="shouting")).encode()
    deep = json.dumps(samples.prompt(51, x_unknown="MARK")).replace('"MARK"', "[" * 5000 + "]" * 5000).encode()
    body = b'{"push_id": "p-mixed", "data": {"prompts": [' + b",".join([*good, bad, deep]) + b"]}}"
    assert len(body) > small_limits.max_body_bytes
    resp = big_client.post("/v2/push", content=body, headers={"Authorization": f"Bearer {api_key}"})
    assert resp.status_code == 202 and resp.json()["rejected"] == {"prompts": 2}, resp.text
    wait_drained(big_client, Redis.from_url(small_limits.redis_url), body_key(workspace_of(db), "p-mixed"))

    run_burst_worker(small_limits)
    assert count(db, "prompts") == 4
    rows = db.execute("SELECT record_index, raw, error FROM quarantine ORDER BY record_index").fetchall()
    assert [(i, bytes(raw)) for i, raw, _ in rows] == [(4, bad), (5, deep)]
    assert "prompt_kind" in rows[0][2] and "MAX_NESTING_DEPTH" in rows[1][2]


def test_a_streamed_push_whose_body_is_gone_fails_and_says_why(
    api_key: str, db: psycopg.Connection, small_limits: Settings, use_worker_settings: Any
) -> None:
    once = replace(small_limits, job_retries=0)  # the api sets a job's retries when it enqueues it
    use_worker_settings(once)
    body, _ = big_push("p-gone", 200_000)
    with TestClient(create_app(once)) as client:
        assert client.post("/v2/push", content=body, headers={"Authorization": f"Bearer {api_key}"}).status_code == 202
        redis = Redis.from_url(once.redis_url)
        key = body_key(workspace_of(db), "p-gone")
        wait_drained(client, redis, key)
    redis.delete(key)
    run_burst_worker(once)
    status, error = db.execute("SELECT status, error FROM pushes WHERE push_id = 'p-gone'").fetchone()  # type: ignore[misc]
    assert status == "failed" and "MissingBody" in error and "p-gone" in error
    assert count(db, "prompts") == 0
