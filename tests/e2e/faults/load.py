"""A bounded load generator: threads pushing realistic batches, each as its client would.

Each push has a push id and record ids of its own, so what must be in Postgres
at the end is known exactly. How a client sends a push and what it records of
the answers is `push_one`'s: the real CLI's policy (SPEC 2.5) is
tests/e2e/faults/cli_client.py's CliFleet, the one client the fault scenarios use.

Nothing here runs unbounded: the generator stops at its deadline or count,
every request has a timeout, and `stop()` joins the threads with a timeout.
"""

from __future__ import annotations

import gzip
import itertools
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx2
import msgspec

from bench import samples
from tests.e2e.rows import ID_COLUMNS

REQUEST_TIMEOUT_S = 10.0
REQUEST_TIMEOUT = httpx2.Timeout(REQUEST_TIMEOUT_S, connect=2.0)


@dataclass
class Push:
    """One push as built: its body, where it goes, and the ids it carries by table."""

    push_id: str
    path: str
    body: bytes
    gzipped: bool
    records: dict[str, list[str]]

    @property
    def record_count(self) -> int:
        return sum(len(ids) for ids in self.records.values())


def build_push(seq: int, tag: str, workspace_id: str) -> Push:
    """A batch like one `selftune sync` sends: a session with its prompts, skill use and facts, sometimes more.

    Ids are unique per push (n = seq * 100 + i), so record counts are exact. Pushes
    alternate between the documented envelope on /v2/push and the CLI's on
    /api/v1/push; every fourth body is gzipped.
    """
    base = seq * 100
    records: dict[str, list[dict[str, Any]]] = {
        "sessions": [samples.session(base, session_id=f"{tag}-sess-{seq}")],
        "prompts": [samples.prompt(base + i, session_id=f"{tag}-sess-{seq}") for i in range(4)],
        "skill_invocations": [samples.skill_invocation(base + i) for i in range(2)],
        "execution_facts": [samples.execution_fact(base + i) for i in range(2)],
        "improvement_signals": [samples.improvement_signal(base)],
    }
    if seq % 3 == 0:
        records["grading_results"] = [samples.grading_result(base)]
        records["evolution_evidence"] = [samples.evolution_evidence(base)]
    if seq % 5 == 0:
        records["orchestrate_runs"] = [samples.orchestrate_run(base)]
        records["normalization_runs"] = [samples.normalization_run(base)]
    push_id = f"{tag}-{seq:06d}"
    if seq % 2 == 0:
        path = "/v2/push"
        envelope: dict[str, Any] = {
            "workspace_id": workspace_id,
            "cli_version": "0.2.32",
            "pushed_at": "2026-11-28T10:00:00Z",
            "push_id": push_id,
            "data": records,
        }
    else:
        path = "/api/v1/push"
        envelope = {
            "schema_version": "2.0",
            "client_version": "0.2.32",
            "push_id": push_id,
            "normalizer_version": "1.0.0",
            "canonical": records,
        }
    raw = msgspec.json.encode(envelope)
    gzipped = seq % 4 == 0
    ids = {table: [r[ID_COLUMNS[table]] for r in rs] for table, rs in records.items()}
    return Push(push_id, path, gzip.compress(raw) if gzipped else raw, gzipped, ids)


def expected_ids(pushes: dict[str, Push], push_ids: set[str]) -> dict[str, list[str]]:
    """The record ids of these pushes by table, sorted (ids are unique per push: counts are exact)."""
    out: dict[str, list[str]] = {table: [] for table in ID_COLUMNS}
    for pid in push_ids:
        for table, ids in pushes[pid].records.items():
            out[table].extend(ids)
    return {table: sorted(ids) for table, ids in out.items()}


class LoadGenerator:
    """`threads` clients pushing new batches back to back (with `pause_s` between) until stopped.

    `target()` gives the api's base URL at each request (a test may move it).
    Each thread uses its own key, as separate CLIs would.
    """

    def __init__(
        self,
        target: Callable[[], str],
        keys: list[str],
        workspace_id: str,
        ledger: Any,  # whatever `push_one` records into (a CliLedger)
        tag: str,
        pause_s: float = 0.05,
        max_pushes: int = 100_000,
    ) -> None:
        self.target = target
        self.keys = keys
        self.workspace_id = workspace_id
        self.ledger = ledger
        self.tag = tag
        self.pause_s = pause_s
        self.max_pushes = max_pushes
        self._seq = itertools.count(1)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.started_at = 0.0
        self.elapsed_s = 0.0
        self.crashes: list[str] = []

    def start(self) -> LoadGenerator:
        self.started_at = time.monotonic()
        for i, key in enumerate(self.keys):
            t = threading.Thread(target=self._run, args=(key, random.Random(i)), name=f"load-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _run(self, key: str, rng: random.Random) -> None:
        try:
            with httpx2.Client(timeout=self.request_timeout) as client:
                while not self._stop.is_set():
                    seq = next(self._seq)
                    if seq > self.max_pushes:
                        return
                    push = build_push(seq, self.tag, self.workspace_id)
                    self._stop.wait(self.push_one(client, key, push, rng))
        except Exception as exc:  # a bug in the generator must fail the test, not vanish with the thread
            self.crashes.append(f"{threading.current_thread().name}: {exc!r}")

    def push_one(self, client: httpx2.Client, key: str, push: Push, rng: random.Random) -> float:
        """Send one new push as the client would and record what it saw; return the pause before the next."""
        raise NotImplementedError  # cli_client.CliFleet: the real CLI's policy (SPEC 2.5)

    def run_for(self, seconds: float, during: Callable[[], None] | None = None) -> None:
        """Run the load for `seconds` (starting it if need be); `during()` runs meanwhile, in this thread."""
        if not self._threads:
            self.start()
        try:
            if during is not None:
                during()
            remaining = self.started_at + seconds - time.monotonic()
            if remaining > 0:
                self._stop.wait(remaining)
        finally:
            self.stop()

    def sleep_until(self, offset_s: float) -> None:
        """Wait until `offset_s` after the load started."""
        remaining = self.started_at + offset_s - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)

    request_timeout = REQUEST_TIMEOUT
    join_timeout_s = REQUEST_TIMEOUT_S + 5  # the longest a thread takes to notice stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.join_timeout_s)
        alive = [t.name for t in self._threads if t.is_alive()]
        self.elapsed_s = time.monotonic() - self.started_at
        assert not alive, f"load threads did not stop: {alive}"
        assert not self.crashes, f"the load generator crashed: {self.crashes}"
