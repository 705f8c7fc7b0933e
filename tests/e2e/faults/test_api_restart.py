"""The api restarted under load (SPEC 2.3: never a 2xx unless the batch is safely in Redis).

The api process is stopped (SIGTERM: uvicorn finishes the requests in flight; or
SIGKILL: nothing finishes) and a new one started on the same port, as a deploy or
a crash-and-restart would. The load is a fleet of clients that behave as the real
CLI does (tests/e2e/faults/cli_client.py, SPEC 2.5): a push in flight that fails
with a connection error is retried within the CLI's ~15 s, with the same push id,
and never after. No client may give up, and every push acknowledged must land,
each record once. With SIGKILL, a push can be in Redis although its answer never
left the process: the retry then gets `200 duplicate`, not a second copy.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from redis import Redis

from runtime.settings import Settings
from tests.e2e.faults.cli_client import CliFleet, CliLedger
from tests.e2e.faults.cli_harness import settle
from tests.e2e.faults.harness import ApiProcess, WorkerPool
from tests.e2e.stack import Stack

FIRST_RESTART_S = 2.0


@pytest.mark.parametrize(
    ("how", "load_s", "restarts"),
    [
        pytest.param("SIGTERM", 10.0, 3, id="sigterm-3"),
        pytest.param("SIGKILL", 10.0, 3, id="sigkill-3"),
        pytest.param("SIGTERM", 60.0, 20, id="sigterm-20", marks=pytest.mark.slow),
        pytest.param("SIGKILL", 60.0, 20, id="sigkill-20", marks=pytest.mark.slow),
    ],
)
def test_api_restarted_under_load(
    stack: Stack,
    settings: Settings,
    workspace: tuple[str, list[str]],
    rq_redis: Redis,
    worker_pool: Callable[[int], WorkerPool],
    how: str,
    load_s: float,
    restarts: int,
) -> None:
    workspace_id, keys = workspace
    api = ApiProcess.start(stack)
    ledger = CliLedger()
    pool = worker_pool(2)
    load = CliFleet(lambda: api.url, keys[:-1], workspace_id, ledger, tag=f"api-{how.lower()}")
    every_s = (load_s - FIRST_RESTART_S - 2) / restarts

    def restart_api() -> None:
        nonlocal api
        for i in range(restarts):
            load.sleep_until(FIRST_RESTART_S + i * every_s)
            api = api.restart(kill=how == "SIGKILL")

    load.run_for(load_s, during=restart_api)
    figures = settle(
        f"{restarts} api restarts by {how}, same port", stack, settings, workspace_id, ledger, rq_redis,
        notes=f"{pool.replaced_after_exit} worker exits",
    )  # fmt: skip

    network_errors = sum(n for answer, n in ledger.attempts.items() if answer.startswith("network error"))
    assert network_errors > 0, "no client saw the api go away: the restarts were not under load"
    assert ledger.retried > 0 and figures.acknowledged == figures.pushes > 0, figures
    other = {a: n for a, n in ledger.attempts.items() if not a.startswith("network error") and a not in ("200", "202")}
    assert not other, f"answers other than 2xx and connection errors: {other}"
