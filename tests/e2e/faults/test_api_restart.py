"""The api restarted under load (SPEC 2.3: never a 2xx unless the batch is safely in Redis).

The api process is stopped (SIGTERM: uvicorn finishes the requests in flight; or
SIGKILL: nothing finishes) and a new one started on the same port, as a deploy or
a crash-and-restart would. Pushes in flight may fail with a connection error (the
client counts them as not acknowledged, and sends them again later with the same
push id); every 2xx must land. With SIGKILL, a push can be in Redis although its
answer never left the process: the resend then gets `200 duplicate`, not a second
copy.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from redis import Redis

from runtime.settings import Settings
from tests.e2e.faults.harness import ApiProcess, Scenario, WorkerPool
from tests.e2e.faults.load import Ledger, LoadGenerator, resend_unacked
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
    ledger = Ledger()
    scenario = Scenario(f"api {how}", stack, settings, workspace_id, ledger, rq_redis)
    pool = worker_pool(2)
    load = LoadGenerator(lambda: api.url, keys[:-1], workspace_id, ledger, tag=f"api-{how.lower()}")
    every_s = (load_s - FIRST_RESTART_S - 2) / restarts

    def restart_api() -> None:
        nonlocal api
        for i in range(restarts):
            load.sleep_until(FIRST_RESTART_S + i * every_s)
            api = api.restart(kill=how == "SIGKILL")

    load.run_for(load_s, during=restart_api)
    resend_unacked(api.url, keys[-1], ledger, deadline_s=30)
    scenario.wait_landed()
    figures = scenario.verify(
        f"{restarts} api restarts by {how}, same port; {pool.replaced_after_exit} worker exits", load.elapsed_s
    )

    assert figures.transport_errors > 0, "no client saw the api go away: the restarts were not under load"
    assert figures.other_status == 0, ledger.errors
