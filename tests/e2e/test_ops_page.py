"""The ops page in a real headless chromium (selenium), against a real api and worker.

Pushes some batches (one with a bad record), opens /ops with `?token=` as an
operator would, and checks what the browser shows against /ops/state.json, the
database and /metrics: after a refresh by the page itself, and after `rq
suspend`. It saves a screenshot (OPS_SCREENSHOT=path to keep it elsewhere, e.g.
docs/ops-page.png).

chromium and chromium-driver are Debian's packages (scripts/services.sh up test
installs them); without them the test is skipped locally and fails under CI=true.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import psycopg
import pytest
from redis import Redis

from bench import samples
from tests.conftest import IN_CI
from tests.e2e.rows import all_processed
from tests.e2e.stack import Api, Stack
from tests.support import Account

TOKEN = "ops-e2e-" + uuid.uuid4().hex
PUSHES = 8
HISTORY_WAIT_S = 25.0  # a sample every 10 s
# Figures that hold still once every push is written (rates and ages move on by themselves).
STEADY = ("queue_depth", "in_progress", "stalled", "retrying", "failed", "workers_busy", "workers_idle")

webdriver = pytest.importorskip("selenium.webdriver")


def _missing(message: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless chromium through Debian's chromedriver (never a downloaded one: this machine has no internet)."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        _missing("chromium and chromium-driver are not installed; run 'scripts/services.sh up test'")
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1100"):
        options.add_argument(arg)
    drv = webdriver.Chrome(options=options, service=DriverService(executable_path=driver))
    try:
        yield drv
    finally:
        drv.quit()


def push_some(api: Api, account: Account) -> list[str]:
    push_ids = []
    for i in range(PUSHES):
        prompts = [samples.prompt(100 * i + n) for n in range(1 + i % 3)]
        if i == 2:
            prompts.append(samples.prompt(100 * i + 50, prompt_text=""))  # rejected: quarantined
        body = {"push_id": f"ops-page-{i}", "data": {"prompts": prompts, "sessions": [samples.session(100 + i)]}}
        response = api.push(account.key, body)
        assert response.status_code == 202, response.text
        push_ids.append(body["push_id"])
    return push_ids


def figures(browser: Any) -> dict[str, str]:
    """Each figure the page shows: `data-value` of every `#f-<name>`."""
    got: dict[str, str] = browser.execute_script(
        "const out = {}; for (const el of document.querySelectorAll('[id^=\"f-\"]'))"
        " out[el.id.slice(2)] = el.dataset.value; return out;"
    )
    return got


def shown_pushes(browser: Any) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = browser.execute_script(
        "return [...document.querySelectorAll('#pushes tbody tr[data-push-id]')].map((r) => ({"
        " id: r.dataset.pushId, status: r.cells[2].textContent, written: r.cells[4].textContent,"
        " rejected: r.cells[5].textContent}));"
    )
    return rows


def state_json(api: Api) -> dict[str, Any]:
    resp = httpx2.get(api.url + "/ops/state.json", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def metric(api: Api, name: str, labels: str = "") -> float:
    text = httpx2.get(api.url + "/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(f"{name}{labels} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{labels} not in /metrics")


def generated_at(browser: Any) -> str:
    return str(browser.execute_script("return document.body.dataset.generatedAt || ''"))


def test_the_ops_page_shows_what_the_api_says(
    stack: Stack, account: Account, db: psycopg.Connection, rq_redis: Redis, browser: Any, tmp_path: Path
) -> None:
    api = stack.start_api(OPS_TOKEN=TOKEN)
    stack.start_worker()
    push_ids = push_some(api, account)
    stack.wait_until(lambda: all_processed(db, account.workspace_id, push_ids), "the worker wrote every push")
    stack.wait_until(lambda: state_json(api)["queue"]["workers_idle"] == 1, "the worker is idle again")
    stack.wait_until(lambda: state_json(api)["history"], "a history sample", timeout=HISTORY_WAIT_S)

    # As an operator opens it: the token once in the address, then the cookie.
    browser.get(f"{api.url}/ops?token={TOKEN}")
    assert browser.current_url == f"{api.url}/ops"
    assert "selftune ingest" in browser.title
    assert TOKEN not in browser.page_source  # neither the token nor a copy of it in the page
    stack.wait_until(lambda: generated_at(browser), "the page rendered its figures")

    # The page refreshes itself from /ops/state.json.
    first = generated_at(browser)
    stack.wait_until(lambda: generated_at(browser) != first, "the page refreshed by itself", timeout=15)

    state = state_json(api)
    shown = figures(browser)
    for name in STEADY:
        assert shown[name] == str(state["queue"][name]), name
    assert shown["quarantined"] == str(state["quarantined"]) == "1"
    assert shown["workers_suspended"] == "0"
    assert shown["spool_batches"] == str(state["spool"]["batches"]) == "0"
    assert float(shown["written_records_per_s"]) > 0  # written within the last minute

    # ... and against /metrics and Postgres.
    assert float(shown["queue_depth"]) == metric(api, "selftune_ingest_queue_batches", '{scope="shared"}')
    assert float(shown["failed"]) == metric(api, "selftune_ingest_failed_batches", '{scope="shared"}')
    assert float(shown["workers_idle"]) == metric(api, "selftune_ingest_workers", '{scope="shared",state="idle"}')
    rows = db.execute(
        "SELECT push_id, status, (SELECT coalesce(sum(value::int), 0) FROM jsonb_each_text(accepted)),"
        " (SELECT coalesce(sum(value::int), 0) FROM jsonb_each_text(rejected))"
        " FROM pushes ORDER BY received_at DESC LIMIT 20"
    ).fetchall()
    table = [(r["id"], r["status"], int(r["written"]), int(r["rejected"])) for r in shown_pushes(browser)]
    assert table == [(p, s, int(w), int(r)) for p, s, w, r in rows]
    assert sorted(p for p, *_ in table) == sorted(push_ids)
    assert [p["push_id"] for p in state["pushes"]] == [p for p, *_ in table]

    # The plots have the last hour's samples.
    assert browser.execute_script("return document.querySelectorAll('#plot-rates path.series').length") == 2
    assert browser.execute_script("return document.querySelectorAll('#plot-lag path.series').length") == 1

    # `rq suspend`: the idle worker counts as suspended, on the page as in /metrics.
    rq_redis.set("rq:suspended", 1)
    try:
        stack.wait_until(lambda: figures(browser)["workers_suspended"] == "1", "the page shows the suspended worker")
        assert figures(browser)["workers_idle"] == "0"
        assert metric(api, "selftune_ingest_workers", '{scope="shared",state="suspended"}') == 1
        rq_redis.delete("rq:suspended")
        stack.wait_until(lambda: figures(browser)["workers_idle"] == "1", "the page shows the worker idle again")
    finally:
        rq_redis.delete("rq:suspended")

    shot = Path(os.environ.get("OPS_SCREENSHOT") or tmp_path / "ops-page.png")
    page = browser.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    shot.write_bytes(base64.b64decode(page["data"]))  # the whole page, not only the window
    assert shot.stat().st_size > 10_000
    # No script error on the page (a failed refresh shows in the header).
    assert "refresh failed" not in browser.find_element("id", "updated").text
    print(json.dumps({"screenshot": str(shot)}))


def test_the_page_refuses_a_browser_without_the_token(stack: Stack, browser: Any) -> None:
    api = stack.start_api(OPS_TOKEN=TOKEN)
    browser.get(f"{api.url}/ops")
    assert "OPS_TOKEN" in browser.page_source
    browser.get(f"{api.url}/ops?token=wrong")
    assert "wrong operator token" in browser.page_source
    assert browser.get_cookies() == []
