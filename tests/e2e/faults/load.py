"""A bounded load generator: threads pushing realistic batches, and a ledger of every answer.

Each push has a push id and record ids of its own, so what must be in Postgres
at the end is known exactly. The ledger records, per push id, what the client
saw: 2xx (acknowledged), 503, another status, or a transport error (connection
refused or reset, timeout: the client cannot know whether the push was taken).

Nothing here runs unbounded: the generator stops at its deadline or count,
every request has a timeout, and `stop()` joins the threads with a timeout.
"""

from __future__ import annotations

import gzip
import itertools
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx2
import msgspec

from bench import samples
from tests.e2e.rows import ID_COLUMNS

REQUEST_TIMEOUT_S = 10.0
REQUEST_TIMEOUT = httpx2.Timeout(REQUEST_TIMEOUT_S, connect=2.0)
ERROR_PAUSE_S = 0.1  # after a refusal or transport error, so a dead api is not hammered
MAX_RETRY_AFTER_PAUSE_S = 1.0  # a 503's Retry-After is honoured up to this (the generator is bounded)

ACKED = "acked"
REFUSED_503 = "503"
OTHER_STATUS = "other"
TRANSPORT = "transport"


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


@dataclass
class Ledger:
    """What the client saw, per push id (thread-safe)."""

    pushes: dict[str, Push] = field(default_factory=dict)
    outcome: dict[str, str] = field(default_factory=dict)  # the latest answer's kind
    acked_in_load: set[str] = field(default_factory=set)
    acked_on_resend: set[str] = field(default_factory=set)
    duplicates_on_resend: set[str] = field(default_factory=set)  # 200 duplicate: it had landed after all
    counts: Counter[str] = field(default_factory=Counter)  # answers during the load, by kind
    errors: Counter[str] = field(default_factory=Counter)  # transport errors and odd statuses, by name
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, push: Push, kind: str, detail: str | None, resend: bool, duplicate: bool = False) -> None:
        with self._lock:
            self.pushes[push.push_id] = push
            self.outcome[push.push_id] = kind
            if not resend:
                self.counts[kind] += 1
            if detail:
                self.errors[detail] += 1
            if kind == ACKED:
                (self.acked_on_resend if resend else self.acked_in_load).add(push.push_id)
                if resend and duplicate:
                    self.duplicates_on_resend.add(push.push_id)

    @property
    def acked(self) -> set[str]:
        return self.acked_in_load | self.acked_on_resend

    def unacked(self) -> list[Push]:
        return [p for pid, p in self.pushes.items() if self.outcome[pid] != ACKED]

    def expected_ids(self, push_ids: set[str]) -> dict[str, list[str]]:
        return expected_ids(self.pushes, push_ids)

    def records_of(self, push_ids: set[str]) -> int:
        return sum(self.pushes[pid].record_count for pid in push_ids)


def send(client: httpx2.Client, url: str, key: str, push: Push) -> tuple[str, str | None, bool, float]:
    """One POST; returns (kind, detail, duplicate, retry_after)."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if push.gzipped:
        headers["Content-Encoding"] = "gzip"
    try:
        response = client.post(url + push.path, content=push.body, headers=headers)
    except httpx2.TransportError as exc:
        return TRANSPORT, type(exc).__name__, False, 0.0
    if response.status_code in (200, 202):
        return ACKED, None, response.status_code == 200 and response.json().get("duplicate") is True, 0.0
    retry_after = float(response.headers.get("retry-after") or 0)
    if response.status_code == 503:
        return REFUSED_503, f"503 {response.json()['error']['code']}", False, retry_after
    return OTHER_STATUS, f"{response.status_code} {response.text[:200]}", False, retry_after


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
        ledger: Any,  # a Ledger, or whatever `push_one` records into
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
            with httpx2.Client(timeout=REQUEST_TIMEOUT) as client:
                while not self._stop.is_set():
                    seq = next(self._seq)
                    if seq > self.max_pushes:
                        return
                    push = build_push(seq, self.tag, self.workspace_id)
                    self._stop.wait(self.push_one(client, key, push, rng))
        except Exception as exc:  # a bug in the generator must fail the test, not vanish with the thread
            self.crashes.append(f"{threading.current_thread().name}: {exc!r}")

    def push_one(self, client: httpx2.Client, key: str, push: Push, rng: random.Random) -> float:
        """Send one new push and record what the client saw; return the pause before the next."""
        kind, detail, _, retry_after = send(client, self.target(), key, push)
        self.ledger.record(push, kind, detail, resend=False)
        pause = self.pause_s * (0.5 + rng.random())
        if kind != ACKED:
            pause = max(pause, ERROR_PAUSE_S, min(retry_after, MAX_RETRY_AFTER_PAUSE_S))
        return pause

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

    join_timeout_s = REQUEST_TIMEOUT_S + 5  # the longest a thread takes to notice stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.join_timeout_s)
        alive = [t.name for t in self._threads if t.is_alive()]
        self.elapsed_s = time.monotonic() - self.started_at
        assert not alive, f"load threads did not stop: {alive}"
        assert not self.crashes, f"the load generator crashed: {self.crashes}"


def resend_unacked(target: str, key: str, ledger: Ledger, deadline_s: float, rounds: int = 5) -> None:
    """Send every push that was not acknowledged again, same push id and body, as the CLI's next sync would.

    A 200 `duplicate` answer means the first attempt had landed although its client
    saw an error. Bounded: `rounds` passes, a short pause between, and `deadline_s` in all.
    """
    deadline = time.monotonic() + deadline_s
    with httpx2.Client(timeout=REQUEST_TIMEOUT) as client:
        for _ in range(rounds):
            pending = ledger.unacked()
            if not pending or time.monotonic() > deadline:
                return
            for push in pending:
                if time.monotonic() > deadline:
                    return
                kind, detail, duplicate, _ = send(client, target, key, push)
                ledger.record(push, kind, detail, resend=True, duplicate=duplicate)
            if ledger.unacked():
                time.sleep(1.0)
