"""Redis SIGKILLed and restarted under load (SPEC 2.3 and 5: no 2xx unless the batch is safely in Redis).

redis-server is killed outright (nothing flushed or saved on the way out) and
started again from the same data directory with the same settings
(`scripts/services.sh`: `appendonly yes`, `appendfsync everysec`, `noeviction`),
so it reloads its append-only file. While it is down the api spools pushes (and
answers 202); what it acknowledged before must still be there. The load is a
fleet of clients that behave as the real CLI does (SPEC 2.5,
tests/e2e/faults/cli_client.py): none may give up on a push.
The workers start only after the first restart, so at the first kill a backlog of
acknowledged batches exists nowhere but in Redis: all of it must come back from
the append-only file.

Why a process kill loses nothing with `everysec`: Redis appends each write to its
AOF buffer and write(2)s that buffer to the file before it sends any reply (in
`beforeSleep`, ahead of the client writes), so an acknowledged write is in the
kernel's page cache, which outlives the process. `everysec` only bounds how long
it stays there before fsync: a crash of the machine or a power cut can lose about
the last second (up to 2 s when the disk is slow). One exception: when an fsync is
still running after a second, Redis postpones the write(2) for up to 2 s while it
keeps answering; a process kill in that window can lose those writes (INFO's
`aof_delayed_fsync` counts the times the postponement ran out). `appendfsync
always` fsyncs before replying, so neither a process kill nor a power cut loses
an acknowledged write, at the cost of an fsync per event-loop round.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from redis import Redis

from runtime.settings import Settings
from tests.e2e.faults.cli_client import CliFleet, CliLedger
from tests.e2e.faults.cli_harness import settle
from tests.e2e.faults.harness import ApiProcess, WorkerPool, queue_state
from tests.e2e.servers import Servers
from tests.e2e.stack import Stack

FIRST_KILL_S = 3.0


@pytest.mark.parametrize(
    ("load_s", "kills", "down_s"),
    [pytest.param(12.0, 1, 2.0, id="1-kill"), pytest.param(45.0, 4, 4.0, id="4-kills", marks=pytest.mark.slow)],
)
def test_redis_killed_and_restarted_under_load(
    stack: Stack,
    settings: Settings,
    workspace: tuple[str, list[str]],
    rq_redis: Redis,
    worker_pool: Callable[[int], WorkerPool],
    servers: Servers,
    load_s: float,
    kills: int,
    down_s: float,
) -> None:
    assert servers.redis.appendonly == "yes" and servers.redis.maxmemory_policy == "noeviction", servers.redis
    workspace_id, keys = workspace
    api = ApiProcess.start(stack)
    ledger = CliLedger()
    pools: list[WorkerPool] = []
    load = CliFleet(lambda: api.url, keys[:-1], workspace_id, ledger, tag="rkill")
    delayed_fsyncs, queued_at_kill = [], []
    acked_before_restart = queued_after_restart = 0
    every_s = (load_s - FIRST_KILL_S - down_s) / kills

    def kill_redis() -> None:
        for i in range(kills):
            load.sleep_until(FIRST_KILL_S + i * every_s)
            nonlocal acked_before_restart, queued_after_restart
            if not pools:  # acknowledged so far, all into Redis: no worker has taken any yet
                acked_before_restart = len(ledger.acknowledged)
            queued_at_kill.append(queue_state(rq_redis, settings).depth)
            delayed_fsyncs.append(int(servers.redis_persistence().get("aof_delayed_fsync", 0)))
            servers.kill_redis()
            time.sleep(down_s)
            if not pools:
                # No worker has run yet: every batch acknowledged before the kill must be back in
                # the queue once Redis has reloaded its append-only file (those acknowledged while
                # it was down are in the api's spool, and drain into it afterwards).
                servers.start()
                queued_after_restart = queue_state(rq_redis, settings).depth
                pools.append(worker_pool(2))
            else:
                servers.start()

    load.run_for(load_s, during=kill_redis)
    assert "append only file" in servers.redis_log_tail(200).lower(), servers.redis_log_tail()
    figures = settle(
        f"{kills} Redis SIGKILL(s), down {down_s:g} s each", stack, settings, workspace_id, ledger, rq_redis,
        notes=f"appendfsync {servers.redis.appendfsync} (aof_delayed_fsync before each kill: {delayed_fsyncs});"
        f" acknowledged batches queued in Redis at each kill: {queued_at_kill}, {queued_after_restart} after the"
        f" first restart; {pools[0].replaced_after_exit} worker restarts (exits on losing Redis, failed starts while"
        " it was down)",
    )  # fmt: skip

    # While Redis is down pushes go to the api's spool: none is refused (the CLI would drop it).
    assert "503" not in ledger.attempts, f"a push was refused while the spool could take it: {ledger.attempts}"
    assert figures.acknowledged == figures.pushes > 0, figures
    assert queued_at_kill[0] > 0, "no acknowledged batch was waiting in Redis when it was killed"
    assert queued_after_restart >= acked_before_restart, (
        f"{acked_before_restart} batches acknowledged before the first kill, {queued_after_restart} in the queue"
        " after Redis reloaded its append-only file"
    )
