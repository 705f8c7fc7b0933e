"""A client that treats every answer exactly as the real selftune CLI 0.2.32 does (SPEC 2.5).

- A network error (status 0), 429 or any 5xx is retried within the same flush: at most
  ATTEMPTS attempts, sleeping SLEEPS_S between them (about 15 s in all). `Retry-After`
  is ignored.
- After the last attempt the payload is `failed`; any other 4xx, and a 2xx whose body
  does not say `success: true`, are `failed` at once. 2xx with `success: true`, 304
  and 409 count as sent.
- A `failed` payload is never sent again: its records are gone. Retries of one
  payload reuse its body and push id.
- Each CLI sends its payloads one after another (a flush is sequential), each POST
  with a 30 s timeout.

So what the service refused for longer than ~15 s is lost, and the fault scenarios
count it as such: a record is lost when its client gave up on its push, or when the
push was acknowledged and the record never reached Postgres.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx2

from tests.e2e.faults import load
from tests.e2e.faults.load import LoadGenerator, Push

ATTEMPTS = 5
SLEEPS_S = (1.0, 2.0, 4.0, 8.0)
REQUEST_TIMEOUT = httpx2.Timeout(30.0, connect=30.0)

SENT = "sent"
GAVE_UP = "gave up"  # retried ATTEMPTS times, never acknowledged
REFUSED_4XX = "refused 4xx"  # failed at once
BAD_2XX = "2xx not understood"


@dataclass
class CliLedger:
    """Every payload's fate as its CLI saw it (thread-safe)."""

    pushes: dict[str, Push] = field(default_factory=dict)
    fate: dict[str, str] = field(default_factory=dict)
    attempts: Counter[str] = field(default_factory=Counter)  # answers seen on any attempt, by kind
    retried: int = 0  # payloads that needed more than one attempt
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def settle(self, push: Push, fate: str, answers: list[str]) -> None:
        with self._lock:
            self.pushes[push.push_id] = push
            self.fate[push.push_id] = fate
            self.attempts.update(answers)
            self.retried += len(answers) > 1

    def with_fate(self, fate: str) -> set[str]:
        return {p for p, f in self.fate.items() if f == fate}

    @property
    def acknowledged(self) -> set[str]:
        return self.with_fate(SENT)

    @property
    def given_up(self) -> set[str]:
        return set(self.fate) - self.acknowledged

    def expected_ids(self, push_ids: set[str]) -> dict[str, list[str]]:
        return load.expected_ids(self.pushes, push_ids)


def send_as_the_cli(client: httpx2.Client, url: str, key: str, push: Push) -> tuple[str, list[str]]:
    """One payload through the CLI's policy; returns (fate, the answers of each attempt)."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if push.gzipped:  # the real CLI sends no Content-Encoding; kept for the variety of bodies
        headers["Content-Encoding"] = "gzip"
    answers: list[str] = []
    for attempt in range(ATTEMPTS):
        if attempt:  # a stop request does not cut a payload's retries short: the CLI would go on
            time.sleep(SLEEPS_S[attempt - 1])
        try:
            response = client.post(url + push.path, content=push.body, headers=headers)
        except httpx2.TransportError as exc:
            answers.append(f"network error ({type(exc).__name__})")
            continue
        answers.append(str(response.status_code))
        status = response.status_code
        if status in (304, 409):
            return SENT, answers
        if 200 <= status < 300:
            try:
                ok = response.json().get("success") is True
            except ValueError:
                ok = False
            return (SENT if ok else BAD_2XX), answers
        if status == 429 or status >= 500:
            continue
        return REFUSED_4XX, answers
    return GAVE_UP, answers


class CliFleet(LoadGenerator):
    """`len(keys)` CLIs, each pushing new payloads one after another until stopped, each by the CLI's policy.

    The load generator's threads, bounds and stop (its `ledger` is a CliLedger), with the CLI's
    way of sending: `stop()` lets each CLI finish the payload it is retrying (at most ~15 s plus
    its timeouts), as a real flush would.
    """

    request_timeout = REQUEST_TIMEOUT  # the CLI's 30 s
    join_timeout_s = sum(SLEEPS_S) + ATTEMPTS * 30 + 5

    def push_one(self, client: httpx2.Client, key: str, push: Push, rng: random.Random) -> float:
        fate, answers = send_as_the_cli(client, self.target(), key, push)
        self.ledger.settle(push, fate, answers)
        return self.pause_s
