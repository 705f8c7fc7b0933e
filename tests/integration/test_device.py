"""The real CLI's account endpoints through the real app: device-code enrollment and alpha/verify.

The operator's side runs through `selftune-ingest` itself (`ops.cli.main`).
Waiting out a poll interval or an expiry is done by moving the stored times
back, not by sleeping.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from datetime import datetime
from typing import Any

import psycopg
import pytest
from redis import Redis
from starlette.testclient import TestClient

import workers.jobs
from api import device
from api.app import create_app
from bench import samples
from ops import accounts, cli
from runtime.settings import Settings
from workers import db as worker_db
from workers.worker import make_worker

USER_CODE = re.compile(r"[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}")


@pytest.fixture
def ops(monkeypatch: pytest.MonkeyPatch, settings: Settings, capsys: pytest.CaptureFixture[str]) -> Any:
    """Run `selftune-ingest ARGS...` against the test database; returns (exit code, stdout, stderr)."""
    monkeypatch.setenv("DATABASE_URL", settings.database_url)

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def acme(db: psycopg.Connection) -> str:
    return accounts.create_workspace(db, "acme")


def request_code(client: TestClient, prefix: str = "/api/v1") -> dict[str, Any]:
    resp = client.post(f"{prefix}/device-code", json={"client_id": "selftune-cli", "scope": "push read"})
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def poll(client: TestClient, device_code: str, prefix: str = "/api/v1") -> dict[str, Any]:
    # The CLI sends its client_id too.
    resp = client.post(f"{prefix}/device-code/poll", json={"device_code": device_code, "client_id": "selftune-cli"})
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def wait_interval(db: psycopg.Connection) -> None:
    """As if the CLI had waited its interval since its last poll."""
    db.execute("UPDATE device_codes SET last_polled_at = last_polled_at - interval '2 minutes'")


def test_enrollment_approved_from_the_ops_cli_yields_a_working_key_once(
    client: TestClient, db: psycopg.Connection, ops: Any, acme: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    grant = request_code(client)
    assert set(grant) == {"device_code", "user_code", "verification_url", "expires_in", "interval"}
    assert USER_CODE.fullmatch(grant["user_code"])
    assert (grant["expires_in"], grant["interval"]) == (900, 5)
    assert grant["verification_url"] == "http://testserver/device"
    assert "selftune-ingest device approve" in client.get(grant["verification_url"]).text
    # Only the device code's hash is stored.
    stored = db.execute("SELECT device_code_hash, user_code FROM device_codes").fetchall()
    assert stored == [(hashlib.sha256(grant["device_code"].encode()).hexdigest(), grant["user_code"])]

    assert poll(client, grant["device_code"]) == {"status": "pending", "interval": 5}
    # Too soon: slow down, and the interval grows by 5 s (RFC 8628 3.5).
    assert poll(client, grant["device_code"]) == {"status": "slow_down", "interval": 10}
    assert poll(client, grant["device_code"]) == {"status": "slow_down", "interval": 15}
    wait_interval(db)
    assert poll(client, grant["device_code"]) == {"status": "pending", "interval": 15}

    code, out, _ = ops("device", "list")
    assert code == 0 and grant["user_code"] in out and "selftune-cli" in out
    # People type codes as they like: lower case, no dash.
    code, out, _ = ops("device", "approve", grant["user_code"].replace("-", "").lower(), "--workspace", "acme")
    assert code == 0 and f"approved {grant['user_code']} for workspace {acme}" in out
    assert accounts.list_keys(db) == []  # the key is made when the CLI collects it
    code, out, _ = ops("device", "list")
    assert grant["user_code"] not in out

    wait_interval(db)
    approved = poll(client, grant["device_code"])
    assert approved["status"] == "approved" and approved["org_id"] == acme
    api_key = approved["api_key"]
    assert re.fullmatch(r"st_live_[A-Za-z0-9_-]{43}", api_key)
    [key] = accounts.list_keys(db)
    assert key.key_id == approved["cloud_user_id"] and key.workspace_id == acme
    stored_hash = db.execute("SELECT key_hash FROM api_keys").fetchone()
    assert stored_hash == (hashlib.sha256(api_key.encode()).hexdigest(),)

    # Exactly once: any later poll, however patient, never sees the key again.
    for _ in range(2):
        wait_interval(db)
        again = poll(client, grant["device_code"])
        assert again["status"] == "expired" and "api_key" not in again
    assert len(accounts.list_keys(db)) == 1

    # The key works: a push with it lands, and verify reflects it.
    headers = {"Authorization": f"Bearer {api_key}"}
    body = {"push_id": "first-sync", "data": {"sessions": [samples.session(1)]}}
    assert client.post("/api/v1/push", content=json.dumps(body), headers=headers).status_code == 202
    monkeypatch.setattr(workers.jobs, "_settings", settings)
    worker_db.close()
    make_worker(settings, connection=Redis.from_url(settings.redis_url)).work(burst=True)
    worker_db.close()
    verified = client.get("/api/v1/alpha/verify", headers=headers).json()
    assert verified["enrolled"] is True and verified["total_pushes"] == 1
    assert verified["last_push_status"] == "processed"
    assert db.execute("SELECT count(*) FROM sessions WHERE workspace_id = %s", (acme,)).fetchone() == (1,)


def test_a_code_expires_unapproved_and_cannot_be_approved_late(
    client: TestClient, db: psycopg.Connection, ops: Any, acme: str
) -> None:
    grant = request_code(client, "/v2")
    db.execute("UPDATE device_codes SET expires_at = now() - interval '1 second'")
    assert poll(client, grant["device_code"], "/v2")["status"] == "expired"

    code, _, err = ops("device", "approve", grant["user_code"], "--workspace", "acme")
    assert code == 1 and "expired" in err
    assert ops("device", "list")[1].count("\n") == 1  # the header only


def test_an_approved_code_not_collected_in_time_expires_without_a_key(
    client: TestClient, db: psycopg.Connection, ops: Any, acme: str
) -> None:
    grant = request_code(client)
    assert ops("device", "approve", grant["user_code"], "--workspace", acme)[0] == 0
    db.execute("UPDATE device_codes SET expires_at = now() - interval '1 second'")
    assert poll(client, grant["device_code"])["status"] == "expired"
    assert accounts.list_keys(db) == []


def test_a_denied_code_is_denied_and_stays_denied(
    client: TestClient, db: psycopg.Connection, ops: Any, acme: str
) -> None:
    grant = request_code(client)
    code, out, _ = ops("device", "deny", grant["user_code"])
    assert code == 0 and f"denied {grant['user_code']}" in out
    assert poll(client, grant["device_code"])["status"] == "denied"

    code, _, err = ops("device", "approve", grant["user_code"], "--workspace", "acme")
    assert code == 1 and "already denied" in err
    wait_interval(db)
    assert poll(client, grant["device_code"])["status"] == "denied"
    assert accounts.list_keys(db) == []


def test_the_ops_cli_names_what_is_wrong(client: TestClient, ops: Any, acme: str) -> None:
    grant = request_code(client)
    code, _, err = ops("device", "approve", "BCDF-GHJK", "--workspace", "acme")
    assert code == 1 and "no enrollment with user code BCDF-GHJK" in err
    code, _, err = ops("device", "approve", "nope", "--workspace", "acme")
    assert code == 2 and "not a user code" in err
    code, _, err = ops("device", "approve", grant["user_code"], "--workspace", "initech")
    assert code == 1 and "no workspace named or with id 'initech'" in err
    code, out, _ = ops("--json", "device", "list")
    assert code == 0 and [p["user_code"] for p in json.loads(out)] == [grant["user_code"]]


def test_a_workspace_named_like_another_workspaces_id_is_refused(db: psycopg.Connection, acme: str) -> None:
    # Commands take a workspace by name or id: such a name could send a new key to acme.
    with pytest.raises(accounts.AccountError, match="has the shape of a workspace id"):
        accounts.create_workspace(db, acme)
    # A name made before the check (inserted directly here) never shadows the id it looks like.
    db.execute("INSERT INTO workspaces (workspace_id, name) VALUES ('ws_impostor', %s)", (acme,))
    assert accounts.find_workspace(db, acme) == acme
    key_id, _ = accounts.create_key(db, acme)
    assert [k.workspace_id for k in accounts.list_keys(db) if k.key_id == key_id] == [acme]


def test_device_code_requests_are_checked(client: TestClient) -> None:
    missing = client.post("/api/v1/device-code", json={"scope": "push"})
    assert missing.status_code == 422 and "client_id" in missing.json()["error"]["message"]
    not_json = client.post("/api/v1/device-code", content=b"client_id=selftune-cli")
    assert not_json.status_code == 400 and not_json.json()["ok"] is False
    assert client.post("/v2/device-code/poll", json={}).status_code == 422
    unknown = poll(client, "never-issued")
    assert unknown["status"] == "expired" and "api_key" not in unknown


def test_user_codes_are_unambiguous() -> None:
    codes = {device.new_user_code() for _ in range(2000)}
    assert len(codes) > 1990
    assert all(USER_CODE.fullmatch(c) for c in codes)


# -- alpha/verify ------------------------------------------------------------------------------------------------------


def test_verify_describes_the_calling_key_and_its_own_pushes(
    client: TestClient, db: psycopg.Connection, acme: str
) -> None:
    key_id, key = accounts.create_key(db, "acme")
    laptop_id, _ = accounts.create_key(db, "acme")  # another machine of the same workspace
    accounts.create_workspace(db, "globex")
    globex_key_id, _ = accounts.create_key(db, "globex")
    headers = {"Authorization": f"Bearer {key}"}

    fresh = client.get("/api/v1/alpha/verify", headers=headers).json()
    [info] = [k for k in accounts.list_keys(db, "acme") if k.key_id == key_id]
    assert datetime.fromisoformat(fresh.pop("key_created_at")) == info.created_at
    assert fresh == {
        "enrolled": True,
        "workspace_id": acme,
        "key_prefix": key[:12],
        "total_pushes": 0,
        "last_push_at": None,
        "last_push_status": None,
    }

    globex = accounts.find_workspace(db, "globex")
    pushes = [
        (acme, key_id, "p1", "processed", "2026-11-28T10:00:00Z"),
        (acme, key_id, "p2", "failed", "2026-11-28T11:00:00Z"),
        (acme, laptop_id, "p3", "processed", "2026-11-28T11:30:00Z"),  # the workspace's, not this key's
        (acme, None, "p4", "processed", "2026-11-28T11:40:00Z"),  # from before pushes recorded their key
        (globex, globex_key_id, "p5", "processed", "2026-11-28T12:00:00Z"),  # not acme's
    ]
    for workspace_id, pushed_by, push_id, status, received_at in pushes:
        db.execute(
            "INSERT INTO pushes (workspace_id, key_id, push_id, status, received_at) VALUES (%s, %s, %s, %s, %s)",
            (workspace_id, pushed_by, push_id, status, received_at),
        )
    for path in ("/api/v1/alpha/verify", "/v2/alpha/verify"):
        after = client.get(path, headers=headers).json()
        assert (after["total_pushes"], after["last_push_at"], after["last_push_status"]) == (
            2,
            "2026-11-28T11:00:00Z",
            "failed",
        )


def test_verify_counts_what_each_key_pushed_through_the_queue(
    client: TestClient, db: psycopg.Connection, acme: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two machines of one workspace: each sees its own pushes, as the api queued and a worker wrote them."""
    desk = {"Authorization": f"Bearer {accounts.create_key(db, 'acme')[1]}"}
    laptop = {"Authorization": f"Bearer {accounts.create_key(db, 'acme')[1]}"}
    for push_id, headers in (("desk-1", desk), ("desk-2", desk), ("laptop-1", laptop)):
        body = {"push_id": push_id, "data": {"sessions": [samples.session(len(push_id))]}}
        assert client.post("/v2/push", content=json.dumps(body), headers=headers).status_code == 202
    monkeypatch.setattr(workers.jobs, "_settings", settings)
    worker_db.close()
    make_worker(settings, connection=Redis.from_url(settings.redis_url)).work(burst=True)
    worker_db.close()

    seen = {
        name: client.get("/api/v1/alpha/verify", headers=headers).json()
        for name, headers in (("desk", desk), ("laptop", laptop))
    }
    assert (seen["desk"]["total_pushes"], seen["laptop"]["total_pushes"]) == (2, 1)
    assert seen["desk"]["last_push_status"] == seen["laptop"]["last_push_status"] == "processed"
    [desk_last] = db.execute("SELECT max(received_at) FROM pushes WHERE push_id LIKE 'desk-%%'").fetchone()
    assert datetime.fromisoformat(seen["desk"]["last_push_at"]) == desk_last
    # Every push row written from a queued batch names the key that sent it.
    assert db.execute("SELECT count(*) FROM pushes WHERE key_id IS NULL").fetchone() == (0,)


def test_verify_needs_a_live_key(client: TestClient, db: psycopg.Connection, acme: str, settings: Settings) -> None:
    assert client.get("/api/v1/alpha/verify").status_code == 401
    key_id, key = accounts.create_key(db, "acme")
    accounts.revoke_key(db, key_id)
    resp = client.get("/api/v1/alpha/verify", headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "unauthorized"


def test_verification_url_uses_public_base_url_when_set(settings: Settings, db: psycopg.Connection) -> None:
    db.execute("TRUNCATE device_codes")
    proxied = dataclasses.replace(settings, public_base_url="https://ingest.example.com/")
    with TestClient(create_app(proxied)) as c:
        assert request_code(c)["verification_url"] == "https://ingest.example.com/device"
