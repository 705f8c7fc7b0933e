"""What every fault scenario shares: the processes, the drain, the final count, the summary line.

The invariant checked at the end of each scenario, once the queue is drained:

- every push id the client saw acknowledged (2xx) has one row in `pushes`, status
  `processed`, with the counts of the records it carried;
- every record table holds exactly the records of the processed pushes, each once
  (record ids are unique per push, so counts are exact);
- no push row and no record that the load generator did not send; nothing quarantined.

Pushes the client did not see acknowledged (503, another status, a transport error)
are sent again after the fault with the same push id and body, as the CLI's next
sync would; a `200 duplicate` answer shows the first attempt had landed although
its client saw an error. So at the end every push sent must be in Postgres exactly
once, and `lost` (acknowledged pushes or their records missing) must be 0.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import psycopg
from psycopg import sql
from redis import Redis

from ops.actions import failed_batches
from queueing.queue_state import QueueState, read_snapshot
from runtime.settings import Settings
from tests.e2e.faults.load import OTHER_STATUS, REFUSED_503, TRANSPORT, Ledger
from tests.e2e.rows import ID_COLUMNS
from tests.e2e.stack import BIN, REPO, Service, Stack, answers_healthz, free_port, log_config_args

# How long the queue may take to drain after a fault. Abandoned batches wait out the job timeout
# (5 s) + grace (10 s); a batch whose worker died between taking it and starting it waits in RQ's
# intermediate queue for 60 s; after Redis restarts, retries wait for RQ's scheduler lock to expire
# (scheduler interval + 60 s); then the backlog.
DRAIN_TIMEOUT_S = 120.0
SUPERVISE_S = 0.2
RESTART_BACKOFF_S = 1.0  # a worker that exited is restarted at most this often (as systemd's RestartSec)
SUMMARIES: list[str] = []  # one line per scenario run, printed at the end of the pytest run


@dataclass
class ApiProcess:
    """A running api; the port stays the same across restarts, as behind a load balancer."""

    stack: Stack
    port: int
    service: Service
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, stack: Stack, port: int | None = None, **env: str) -> ApiProcess:
        port = port or free_port()
        argv = [str(BIN / "uvicorn"), "api.app:create_app", "--factory", "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--no-access-log", *log_config_args(Path(stack.env.get("PYTHONPATH") or REPO))]
        api = cls(stack, port, stack.start("api", argv, **env), env)
        stack.wait_until(api.healthy, f"the api on port {port} answers GET /healthz")
        return api

    def healthy(self) -> bool:
        return answers_healthz(self.service, self.url)

    def restart(self, kill: bool = False) -> ApiProcess:
        """SIGTERM (graceful: in-flight requests finish) or SIGKILL, then a new api on the same port."""
        if kill:
            self.service.kill()
        self.service.stop()
        return ApiProcess.start(self.stack, self.port, **self.env)


class WorkerPool:
    """Keeps `size` worker processes running, as a process manager would, and counts what it did.

    A thread checks every SUPERVISE_S that each worker is alive and starts a new one
    for each that exited on its own (e.g. on losing Redis), at most one per
    RESTART_BACKOFF_S. `close()` stops watching
    (the `worker_pool` fixture calls it before the stack stops the processes).
    """

    def __init__(self, stack: Stack, size: int) -> None:
        self.stack = stack
        self._lock = threading.Lock()
        self.workers: list[Service] = [stack.start_worker() for _ in range(size)]
        self.replaced_after_exit = 0
        self._closed = threading.Event()
        self._last_restart = 0.0
        self._thread = threading.Thread(target=self._watch, name="worker-pool", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._closed.wait(SUPERVISE_S):
            with self._lock:
                if self._closed.is_set():
                    return
                dead = [w for w in self.workers if not w.alive()]
                if dead and time.monotonic() - self._last_restart >= RESTART_BACKOFF_S:
                    self._last_restart = time.monotonic()
                    self.replaced_after_exit += 1
                    self._replace(dead[0])

    def _replace(self, worker: Service) -> Service:
        self.workers.remove(worker)
        new = self.stack.start_worker()
        self.workers.append(new)
        return new

    def oldest(self) -> Service:
        with self._lock:
            return self.workers[0]

    def kill_and_replace(self, victim: Service) -> Service:
        """SIGKILL one worker process alone (as the OOM killer would) and start a replacement at once."""
        with self._lock:
            victim.kill()
            return self._replace(victim)

    def close(self) -> None:
        with self._lock:
            self._closed.set()
        self._thread.join(timeout=10)


@dataclass
class Figures:
    scenario: str
    load_s: float
    sent: int
    acked_in_load: int
    refused_503: int
    transport_errors: int
    other_status: int
    resent: int
    acked_on_resend: int
    landed_though_unacked: int
    records_expected: int
    records_found: int
    lost_pushes: int
    lost_records: int
    faults: str
    landed_s: float
    drain_s: float
    errors: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        return (
            f"{self.scenario}: {self.faults}; {self.sent} pushes in {self.load_s:.0f} s,"
            f" acked {self.acked_in_load}, refused 503 {self.refused_503},"
            f" connection errors {self.transport_errors}, other {self.other_status};"
            f" resent {self.resent} -> acked {self.acked_on_resend}"
            f" ({self.landed_though_unacked} had landed though unacknowledged);"
            f" records expected {self.records_expected}, found {self.records_found},"
            f" lost = {self.lost_pushes + self.lost_records};"
            f" all acked landed {self.landed_s:.0f} s after the load, queue quiet after {self.drain_s:.0f} s"
        )


def queue_state(redis: Redis, settings: Settings) -> QueueState:
    return read_snapshot(redis, settings.queues, time.time())  # every shard, and the unsharded queue


def queue_quiet(redis: Redis, settings: Settings) -> bool:
    """Nothing queued, being written or waiting for a retry (failed batches may remain)."""
    s = queue_state(redis, settings)
    return s.depth == 0 and s.started == 0 and s.scheduled == 0


def push_rows(conn: psycopg.Connection, workspace_id: str) -> dict[str, tuple[str, dict[str, int], str | None]]:
    rows = conn.execute(
        "SELECT push_id, status, accepted, error FROM pushes WHERE workspace_id = %s", (workspace_id,)
    ).fetchall()
    return {push_id: (status, accepted, error) for push_id, status, accepted, error in rows}


def record_ids(conn: psycopg.Connection, workspace_id: str) -> dict[str, list[str]]:
    found = {}
    for table, column in ID_COLUMNS.items():
        query = sql.SQL("SELECT {id} FROM {table} WHERE workspace_id = %s ORDER BY 1").format(
            id=sql.Identifier(column), table=sql.Identifier(table)
        )
        found[table] = [row[0] for row in conn.execute(query, (workspace_id,))]
    return found


class Scenario:
    """One scenario's stack, ledger and end-of-run checks."""

    def __init__(
        self, name: str, stack: Stack, settings: Settings, workspace_id: str, ledger: Ledger, redis: Redis
    ) -> None:
        self.name = name
        self.stack = stack
        self.settings = settings
        self.workspace_id = workspace_id
        self.ledger = ledger
        self.redis = redis
        self.landed_s = 0.0  # from the end of the load (and resend) until every acknowledged push landed
        self.drain_s = 0.0  # ... until the queue was quiet too (no batch queued, being written or to retry)

    def explain(self) -> str:
        try:
            s = queue_state(self.redis, self.settings)
            queue = f"queue: {s.depth} queued, {s.started} started, {s.scheduled} scheduled, {s.failed} failed"
        except Exception as exc:
            queue = f"queue: unreadable ({exc!r})"
        try:
            with psycopg.connect(self.settings.database_url, autocommit=True, connect_timeout=3) as conn:
                rows = push_rows(conn, self.workspace_id)
            missing = sorted(self.ledger.acked - {p for p, r in rows.items() if r[0] == "processed"})
            others = {p: f"{r[0]}: {r[2]}" for p, r in rows.items() if r[0] != "processed"}
            pg = f"acked but not processed: {len(missing)} {missing[:10]}; rows not processed: {dict(list(others.items())[:10])}"
        except Exception as exc:
            pg = f"postgres: unreadable ({exc!r})"
        return f"{queue}\n{pg}"

    def wait(self, condition: Callable[[], Any], what: str, timeout: float = DRAIN_TIMEOUT_S) -> Any:
        return self.stack.wait_until(condition, what, timeout=timeout, explain=self.explain)

    def wait_quiet(self, timeout: float = DRAIN_TIMEOUT_S) -> None:
        self.wait(lambda: queue_quiet(self.redis, self.settings), "the queue is drained", timeout)

    def wait_landed(self, timeout: float = DRAIN_TIMEOUT_S) -> None:
        """Every acknowledged push processed, then the queue quiet (nothing left that could still write).

        A 'failed' push row is no failure yet: it may be replayed. Records how long each took.
        """
        started = time.monotonic()

        def landed() -> bool:
            with psycopg.connect(self.settings.database_url, autocommit=True, connect_timeout=3) as conn:
                rows = push_rows(conn, self.workspace_id)
            return all(rows.get(p, ("",))[0] == "processed" for p in self.ledger.acked)

        self.wait(landed, f"all {len(self.ledger.acked)} acknowledged pushes are processed", timeout)
        self.landed_s = time.monotonic() - started
        self.wait_quiet(max(1.0, timeout - self.landed_s))
        self.drain_s = time.monotonic() - started

    def replay_failed(self) -> int:
        """`selftune-ingest replay --all` (after a dry run that must list the same batches); returns how many."""
        failed = queue_state(self.redis, self.settings).failed
        if failed == 0:
            return 0
        env = {**self.stack.env}
        dry = _cli(["replay", "--all", "--dry-run"], env)
        assert len(dry["would_replay"]) == failed, dry
        done = _cli(["replay", "--all"], env)
        assert done["replayed"] == failed, done
        return int(done["replayed"])

    def verify(self, faults: str, load_s: float) -> Figures:
        """The invariant (see the module docstring); returns the figures and prints the summary line."""
        ledger = self.ledger
        failed = queue_state(self.redis, self.settings).failed
        sent = set(ledger.pushes)
        acked = ledger.acked
        with psycopg.connect(self.settings.database_url, autocommit=True, connect_timeout=3) as conn:
            rows = push_rows(conn, self.workspace_id)
            found = record_ids(conn, self.workspace_id)
            quarantined = conn.execute(
                "SELECT count(*) FROM quarantine WHERE workspace_id = %s", (self.workspace_id,)
            ).fetchone()
        processed = {p for p, r in rows.items() if r[0] == "processed"}
        expected = ledger.expected_ids(processed & sent)
        acked_expected = ledger.expected_ids(acked)
        lost_pushes = sorted(acked - processed)
        lost_records = sum(
            len(set(acked_expected[t]) - set(found[t])) for t in ID_COLUMNS
        )  # records of acked pushes not in Postgres
        figures = Figures(
            scenario=self.name,
            load_s=load_s,
            sent=len(sent),
            acked_in_load=len(ledger.acked_in_load),
            refused_503=ledger.counts[REFUSED_503],
            transport_errors=ledger.counts[TRANSPORT],
            other_status=ledger.counts[OTHER_STATUS],
            resent=len(sent - ledger.acked_in_load),
            acked_on_resend=len(ledger.acked_on_resend),
            landed_though_unacked=len(ledger.duplicates_on_resend),
            records_expected=ledger.records_of(acked),
            records_found=sum(len(ids) for ids in found.values()),
            lost_pushes=len(lost_pushes),
            lost_records=lost_records,
            faults=faults,
            landed_s=self.landed_s,
            drain_s=self.drain_s,
            errors=dict(ledger.errors),
        )
        line = figures.line() + f"; failed registry at the end: {failed}"
        SUMMARIES.append(line)
        print(f"\n{line}\nanswers other than 2xx: {figures.errors}")

        assert not lost_pushes, f"acknowledged pushes not processed: {lost_pushes[:20]}\n{line}"
        assert lost_records == 0, f"{lost_records} records of acknowledged pushes are missing\n{line}"
        unexpected = sorted(set(rows) - sent)
        assert not unexpected, f"push rows the load generator never sent: {unexpected[:20]}"
        not_processed = {p: r for p, r in rows.items() if r[0] != "processed"}
        assert not not_processed, f"push rows left unprocessed: {dict(list(not_processed.items())[:20])}"
        unacked = sorted(sent - acked)
        assert not unacked, f"pushes never acknowledged, even when sent again after the fault: {unacked[:20]}"
        for table in ID_COLUMNS:
            assert found[table] == expected[table], (
                f"{table}: {len(found[table])} rows, expected {len(expected[table])} (each record of each"
                f" processed push exactly once); extra {sorted(set(found[table]) - set(expected[table]))[:10]},"
                f" missing {sorted(set(expected[table]) - set(found[table]))[:10]},"
                f" duplicated {len(found[table]) - len(set(found[table]))}"
            )
        for push_id in processed:
            counts = {t: len(ids) for t, ids in ledger.pushes[push_id].records.items()}
            assert rows[push_id][1] == counts, f"push {push_id}: accepted {rows[push_id][1]}, sent {counts}"
        assert quarantined == (0,), f"{quarantined[0] if quarantined else '?'} records quarantined from valid pushes"
        assert figures.records_found == figures.records_expected
        # A batch left in the failed registry asks an operator to replay it: after these faults
        # (the Postgres scenario replays its own), every batch must have been written or retried.
        assert failed == 0, (
            f"{failed} batches in RQ's failed registry although every push landed: {self.failed_reasons()}\n{line}"
        )
        return figures

    def failed_reasons(self) -> list[str]:
        return [f"{b.push_id}: {b.error}" for b in failed_batches(self.redis, self.settings)[:5]]


def _cli(args: list[str], env: dict[str, str]) -> Any:
    done = subprocess.run(
        [str(BIN / "selftune-ingest"), "--json", *args], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, f"selftune-ingest {' '.join(args)} exited {done.returncode}: {done.stderr}"
    return msgspec.json.decode(done.stdout)
