"""A ~20 MB push (one 17 MB pasted log among 11 ordinary records): real api and worker processes, HTTP in, rows out.

Past MAX_BODY_BYTES the api streams the body to its spool and answers 202; the
drainer moves it into Redis in chunks and a worker splits it: the 11 records
land, the 17 MB one (over MAX_RECORD_BYTES) is quarantined byte for byte.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx2
import psycopg

from bench import samples
from tests.e2e.rows import all_processed, ids_in, push_row
from tests.e2e.stack import Stack
from tests.support import Account

MIB = 1 << 20
BIG_PROMPT_CHARS = 17_000_000


def big_push(push_id: str) -> tuple[bytes, bytes]:
    """6 prompts and 5 sessions of ~270 KB each, and one 17 MB prompt; the body and the 17 MB record's bytes."""
    big = json.dumps(samples.prompt(99, text_size=BIG_PROMPT_CHARS)).encode()
    prompts = [json.dumps(samples.prompt(i, text_size=270_000)).encode() for i in range(6)] + [big]
    sessions = [
        json.dumps(samples.session(i, raw_source_ref={"path": "/x", "metadata": {"log": "y" * 270_000}})).encode()
        for i in range(5)
    ]
    body = b'{"push_id": "%s", "client_version": "0.2.32", "canonical": {"prompts": [%s], "sessions": [%s]}}' % (
        push_id.encode(),
        b",".join(prompts),
        b",".join(sessions),
    )
    return body, big


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def post(url: str, key: str, body: bytes) -> httpx2.Response:
    return httpx2.post(
        url + "/api/v1/push",
        content=body,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=60,
    )


def test_a_20_mb_push_with_a_17_mb_record_lands_and_the_big_record_is_quarantined_verbatim(
    stack: Stack, account: Account, db: psycopg.Connection, tmp_path: Path
) -> None:
    limits = {"MAX_PUSH_BYTES": str(24 * MIB), "JOB_TIMEOUT_S": "60", "SPOOL_PATH": str(tmp_path / "spool.sqlite3")}
    api = stack.start_api(**limits)
    body, big = big_push("p-20mb")
    assert 19 * MIB < len(body) < 22 * MIB
    # Warm the api up (imports, first connections) so the peak measured below is the big push's.
    assert post(api.url, account.key, b'{"push_id": "warm", "canonical": {}}').status_code == 202
    before = peak_rss_bytes(api.service.pid)

    resp = post(api.url, account.key, body)

    assert resp.status_code == 202, resp.text
    answer = resp.json()
    assert answer["success"] is True and answer["push_id"] == "p-20mb"
    assert answer["accepted"] == {"prompts": 6, "sessions": 5} and answer["rejected"] == {"prompts": 1}
    assert "canonical.prompts[6]: record of" in answer["errors"][0] and "MAX_RECORD_BYTES" in answer["errors"][0]
    grown = peak_rss_bytes(api.service.pid) - before
    print(f"\napi peak RSS grew by {grown / MIB:.1f} MiB while streaming a {len(body) / MIB:.1f} MiB body")
    # Bounded by what is held at once, not by the body: a chunk or two, the spool's page cache, and the
    # record being read (up to MAX_RECORD_BYTES, 4 MiB, with a copy when its buffer grows).
    assert grown < min(len(body), 3 * 4 * MIB + 4 * MIB), f"the api's peak RSS grew by {grown} bytes"

    stack.start_worker(**limits)
    workspace = account.workspace_id
    stack.wait_until(lambda: all_processed(db, workspace, ["p-20mb"]), "the worker processed the 20 MB push", 90)
    assert ids_in(db, "prompts", workspace) == [f"prompt-{i}" for i in range(6)]
    assert len(ids_in(db, "sessions", workspace)) == 5
    [(raw, error, index)] = db.execute(
        "SELECT raw, error, record_index FROM quarantine WHERE workspace_id = %s", (workspace,)
    ).fetchall()
    assert bytes(raw) == big and index == 6  # byte for byte, as sent
    assert (
        error == f"prompts[6]: record of {len(big)} bytes is over MAX_RECORD_BYTES={4 * MIB}; kept unread in quarantine"
    )
    assert push_row(db, workspace, "p-20mb") == ("processed", {"prompts": 6, "sessions": 5}, {"prompts": 1})
    status = httpx2.get(
        api.url + "/v2/pushes/p-20mb", headers={"Authorization": f"Bearer {account.key}"}, timeout=10
    ).json()
    assert status["status"] == "processed"
    assert status["accepted"] == {"prompts": 6, "sessions": 5} and status["rejected"] == {"prompts": 1}

    again = post(api.url, account.key, body)
    assert again.status_code == 200 and again.json() == {**answer, "duplicate": True}


def test_a_push_over_max_push_bytes_is_413(stack: Stack, account: Account, tmp_path: Path) -> None:
    api = stack.start_api(MAX_PUSH_BYTES=str(18 * MIB), SPOOL_PATH=str(tmp_path / "spool.sqlite3"))
    body, _ = big_push("p-too-big")
    result: dict[str, httpx2.Response | Exception] = {}

    def send() -> None:
        try:
            result["r"] = post(api.url, account.key, body)
        except httpx2.TransportError as exc:  # the api may answer and close before the body is all sent
            result["r"] = exc

    sender = threading.Thread(target=send)
    sender.start()
    sender.join(60)
    resp = result["r"]
    assert isinstance(resp, httpx2.Response), resp
    assert resp.status_code == 413 and "MAX_PUSH_BYTES" in resp.text, resp.text
    time.sleep(0.1)
