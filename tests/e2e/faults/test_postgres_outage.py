"""PostgreSQL stopped under load, then started again (SPEC 5: transient failures retried, then replayable).

While Postgres is down the api keeps accepting every push: keys it has not
cached (KEY_CACHE_TTL_S, 5 s here) are checked against the key mirror in Redis.
Workers fail their batches, retry them with backoff, and a batch out of retries
lands in RQ's failed registry. Once Postgres is back, the operator
runs `selftune-ingest replay --all` (after a dry run listing the same batches),
and every acknowledged push must land exactly once. The load is a fleet of
clients that behave as the real CLI does (SPEC 2.5, tests/e2e/faults/cli_client.py):
a push refused for ~15 s would be lost, so none may be.

The retries here are short (3 retries, 1 + 1 + 2 s) so that the batches of the
first seconds of the outage run out of them while Postgres is still down: both
paths, "ridden out by retries" and "failed, then replayed", are taken.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from redis import Redis

from runtime.settings import Settings
from tests.e2e.faults.cli_client import CliFleet, CliLedger
from tests.e2e.faults.cli_harness import settle
from tests.e2e.faults.harness import DRAIN_TIMEOUT_S, ApiProcess, WorkerPool, queue_quiet, queue_state, replay_failed
from tests.e2e.servers import Servers
from tests.e2e.stack import Stack

OUTAGE_AT_S = 3.0


@pytest.mark.parametrize(
    ("load_s", "outage_s"),
    [pytest.param(16.0, 9.0, id="9s"), pytest.param(40.0, 30.0, id="30s", marks=pytest.mark.slow)],
)
def test_postgres_stopped_under_load_then_failed_batches_replayed(
    stack: Stack,
    settings: Settings,
    workspace: tuple[str, list[str]],
    rq_redis: Redis,
    worker_pool: Callable[[int], WorkerPool],
    servers: Servers,
    load_s: float,
    outage_s: float,
) -> None:
    workspace_id, keys = workspace
    # Retries are read by the api, which sets each job's Retry.
    api = ApiProcess.start(stack, JOB_RETRIES="3", JOB_RETRY_BACKOFF_S="1,1,2")
    ledger = CliLedger()
    pool = worker_pool(2)
    load = CliFleet(lambda: api.url, keys[:-1], workspace_id, ledger, tag="pgdown")

    def outage() -> None:
        load.sleep_until(OUTAGE_AT_S)
        try:
            servers.stop_postgres()
            load.sleep_until(OUTAGE_AT_S + outage_s)
        finally:
            servers.start()

    load.run_for(load_s, during=outage)
    # Every batch written, or out of retries in the failed registry.
    stack.wait_until(lambda: queue_quiet(rq_redis, settings), "the queue is drained", timeout=DRAIN_TIMEOUT_S)
    failed = queue_state(rq_redis, settings).failed
    replayed = replay_failed(stack, rq_redis, settings)
    figures = settle(
        f"Postgres stopped {outage_s:g} s", stack, settings, workspace_id, ledger, rq_redis,
        notes=f"{failed} batches reached the failed registry, {replayed} replayed with `selftune-ingest replay --all`;"
        f" {pool.replaced_after_exit} worker exits",
    )  # fmt: skip

    assert failed > 0, "no batch ran out of retries: the replay path was not exercised"
    # Keys past the cache TTL are checked against the key mirror in Redis: no push is refused, even once.
    assert figures.acknowledged == figures.pushes > 0, figures
    assert set(ledger.attempts) == {"202"}, (
        f"a push was not accepted at once while Postgres was down: {ledger.attempts}"
    )
    assert queue_state(rq_redis, settings).failed == 0
