"""/metrics stays right with several api processes (prometheus-client multiprocess mode)."""

from __future__ import annotations

from pathlib import Path

import httpx2

from bench import samples
from tests.e2e.stack import Stack
from tests.support import Account


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_two_api_processes_share_their_counters(stack: Stack, account: Account, tmp_path: Path) -> None:
    shared = tmp_path / "prometheus"
    shared.mkdir()
    first = stack.start_api(PROMETHEUS_MULTIPROC_DIR=str(shared))
    second = stack.start_api(PROMETHEUS_MULTIPROC_DIR=str(shared))
    for i, api in enumerate([first, first, first, second, second]):
        body = {"push_id": f"mp-{i}", "data": {"prompts": [samples.prompt(10 * i), samples.prompt(10 * i + 1)]}}
        assert api.push(account.key, body).status_code == 202

    # Either process answers for both: 5 pushes, 10 prompts.
    for api in (first, second):
        text = httpx2.get(api.url + "/metrics", timeout=10).text
        assert metric(text, 'selftune_ingest_pushes_total{code="202",outcome="accepted"}') == 5
        assert metric(text, 'selftune_ingest_records_accepted_total{type="prompts"}') == 10
        assert metric(text, 'selftune_ingest_queue_batches{scope="shared"}') == 5  # from Redis: no worker runs here
