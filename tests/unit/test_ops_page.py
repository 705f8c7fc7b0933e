"""GET /ops and /ops/state.json in-process (fakeredis): off without OPS_TOKEN, the token's three ways in, the history."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace

import fakeredis
import msgspec
import pytest
from starlette.testclient import TestClient

from api.app import create_app
from api.backpressure import QueueWatch
from api.ops import COOKIE
from api.ops_history import HISTORY_KEY, KEEP_S, OpsHistory, read_history
from runtime.settings import Settings

TOKEN = "ops-" + "t" * 28


def client_for(token: str) -> TestClient:
    settings = replace(
        Settings.from_env(), ops_token=token, spool_max_bytes=0, redis_memory_high_pct=0
    )  # fakeredis: no INFO
    return TestClient(create_app(settings, redis=fakeredis.FakeAsyncRedis(), keys=None), follow_redirects=False)


@pytest.fixture
def client() -> Iterator[TestClient]:
    with client_for(TOKEN) as c:
        yield c


@pytest.mark.parametrize("path", ["/ops", "/ops/state.json"])
def test_the_page_is_off_without_a_token(path: str) -> None:
    with client_for("") as c:
        resp = c.get(path, headers={"Authorization": "Bearer anything"})
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("auth", [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x"])
def test_a_missing_or_wrong_token_is_a_401(client: TestClient, auth: str | None) -> None:
    resp = client.get("/ops/state.json", headers={"Authorization": auth} if auth else {})
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == "Bearer"
    assert "OPS_TOKEN" in resp.json()["error"]["message"]


def test_the_bearer_token_opens_the_page_and_its_figures(client: TestClient) -> None:
    resp = client.get("/ops", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    assert "script-src 'nonce-" in resp.headers["content-security-policy"]
    assert resp.headers["cache-control"] == "no-store"
    assert 'id="f-queue_depth"' in resp.text
    assert "<script src" not in resp.text and "http://" not in resp.text.replace("http://www.w3.org/2000/svg", "")
    state = client.get("/ops/state.json", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert state["queue"]["queue_depth"] == 0
    assert state["queue"]["workers_suspended"] == 0
    assert state["problems"] == ["postgres: not configured"]
    assert state["pushes"] is None and state["spool"] is None


def test_token_in_the_query_sets_an_httponly_cookie_and_redirects_without_it(client: TestClient) -> None:
    resp = client.get(f"/ops?token={TOKEN}")
    assert resp.status_code == 303
    assert resp.headers["location"] == "/ops"
    cookie = resp.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Path=/ops" in cookie
    assert TOKEN not in cookie  # an HMAC of the token, not the token
    assert client.get("/ops").status_code == 200  # the client keeps the cookie
    assert client.get("/ops/state.json").status_code == 200


def test_a_wrong_token_in_the_query_sets_nothing(client: TestClient) -> None:
    resp = client.get("/ops?token=nope")
    assert resp.status_code == 401
    assert "set-cookie" not in resp.headers
    client.cookies.set(COOKIE, TOKEN)  # the token itself is not a valid cookie
    assert client.get("/ops").status_code == 401


def test_the_initial_state_cannot_close_its_script_element(client: TestClient) -> None:
    html = client.get("/ops", headers={"Authorization": f"Bearer {TOKEN}"}).text
    start = html.index('<script id="initial" type="application/json">')
    assert "</" not in html[start + 45 : html.index("</script>", start)]


def test_one_sample_per_interval_whatever_the_number_of_apis() -> None:
    async def run() -> list[bool]:
        redis = fakeredis.FakeAsyncRedis()
        settings = replace(Settings.from_env(), redis_memory_high_pct=0)
        apis = [OpsHistory(redis, QueueWatch(settings, redis)) for _ in range(3)]
        taken = [await api.sample_once(now=1_800_000_001.0) for api in apis]
        taken += [await apis[2].sample_once(now=1_800_000_011.0)]
        samples = await read_history(redis, now=1_800_000_012.0)
        assert [s.t for s in samples] == [1_800_000_001.0, 1_800_000_011.0]
        # an hour later the first is gone
        await apis[0].sample_once(now=1_800_000_001.0 + KEEP_S + 5)
        assert await redis.zcard(HISTORY_KEY) == 2
        raw = await redis.zrange(HISTORY_KEY, 0, -1)
        assert {msgspec.json.decode(r)["t"] for r in raw} == {1_800_000_011.0, 1_800_000_001.0 + KEEP_S + 5}
        return taken

    assert asyncio.run(run()) == [True, False, False, True]
