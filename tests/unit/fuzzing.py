"""The fuzz harness: the app in-process (tests/unit/inprocess.py) and the invariants every answer must hold.

Each request runs in its own thread with a deadline, so a hang fails the test
instead of stalling the run. Redis is flushed before each push, so a 202 leaves
exactly one job to read back.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import fakeredis
import msgspec
import pytest
from rq import Queue
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.openapi import ErrorBody
from api.push import PushAnswer
from queueing.rq_compat import MsgpackSerializer
from runtime.settings import MIB, Settings
from schema.batches import QueuedBatch, decode_batch
from schema.records import RECORD_TYPES
from schema.validation import MAX_ERRORS_LISTED
from tests.unit.inprocess import KEY, WORKSPACE, make_client

# What every schemathesis case must pass: never a 5xx, and status, content type, headers and
# body as /openapi.json documents them.
SCHEMATHESIS_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
REQUEST_TIMEOUT_S = 10.0
SECTIONS = ("data", "canonical")
JSON = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


def fuzz_settings() -> Settings:
    """Limits small enough that over-limit bodies are cheap to build."""
    return replace(
        Settings.from_env(), max_body_bytes=4 * MIB, max_compressed_body_bytes=1 * MIB, max_push_bytes=16 * MIB
    )


class FuzzTarget:
    """The app on one fake Redis server, its client not entered yet; `queue` reads what the api enqueued.

    The `fuzz_target` fixture (tests/unit/conftest.py) enters the client once for a
    whole module: hypothesis examples flush Redis, not the app.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.server = fakeredis.FakeServer()
        self.redis = fakeredis.FakeRedis(server=self.server)
        self.queue = Queue(
            settings.queues.for_workspace(WORKSPACE), connection=self.redis, serializer=MsgpackSerializer
        )
        self.client = make_client(settings, fakeredis.FakeAsyncRedis(server=self.server))
        self.app = self.client.app

    def flush(self) -> None:
        self.redis.flushall()

    def post(self, body: bytes | Iterable[bytes], headers: dict[str, str] | None = None, path: str = "/v2/push") -> Any:
        """POST with a deadline, after flushing Redis; the answer is checked against the documented shapes.

        `body` may be an iterable of chunks, sent as they come (chunked transfer).
        """
        self.flush()
        client = self.client
        outcome: list[Any] = []

        def call() -> None:
            try:
                outcome.append(client.post(path, content=body, headers=JSON if headers is None else headers))
            except BaseException as exc:  # re-raised in the test's thread, with its traceback
                outcome.append(exc)

        thread = threading.Thread(target=call, daemon=True)
        thread.start()
        thread.join(REQUEST_TIMEOUT_S)
        if thread.is_alive():
            start = body[:200] if isinstance(body, bytes) else "(streamed)"
            pytest.fail(f"no answer within {REQUEST_TIMEOUT_S} s to the body {start!r}")
        [result] = outcome
        if isinstance(result, BaseException):
            raise result
        assert_documented(result.status_code, result.headers["content-type"], result.content)
        return result

    def batch(self) -> QueuedBatch:
        """The one job a 202 enqueued."""
        jobs = self.queue.jobs
        assert len(jobs) == 1, f"expected exactly one queued job, found {len(jobs)}"
        return decode_batch(jobs[-1].args[0])


def assert_documented(status: int, content_type: str, content: bytes) -> None:
    """Never a 5xx; the body of a push's answer is JSON of the shape documented for its status."""
    assert status < 500, f"{status}: {content[:500]!r}"
    assert content_type == "application/json"
    if status in (200, 202):
        answer = msgspec.json.decode(content, type=PushAnswer)
        assert answer.ok and answer.success
        assert answer.duplicate == (status == 200)
        assert all(n > 0 for n in answer.accepted.values()), "accepted lists only types with records"
        assert all(n > 0 for n in answer.rejected.values())
        assert bool(answer.rejected) == bool(answer.errors)
    else:
        # 404 and 405 only for paths and methods that are not documented (schemathesis tries them).
        assert status in (400, 401, 403, 404, 405, 408, 413, 415, 422, 429), content[:500]
        error = msgspec.json.decode(content, type=ErrorBody)
        assert error.ok is False and error.success is False
        assert error.errors == [error.error.message] and error.error.code and error.error.message


def encode(value: Any) -> bytes:
    return msgspec.json.encode(value)


def push_records(target: FuzzTarget, envelope: dict[str, Any]) -> tuple[PushAnswer, QueuedBatch]:
    """Push an envelope built from Python values; a 202 must keep every record, good or bad."""
    resp = target.post(encode(envelope))
    assert resp.status_code == 202, resp.text[:500]
    answer = msgspec.json.decode(resp.content, type=PushAnswer)
    batch = target.batch()
    assert_nothing_lost(answer, batch, envelope)
    return answer, batch


def assert_nothing_lost(answer: PushAnswer, batch: QueuedBatch, envelope: dict[str, Any]) -> None:
    """Counts add up per type; rejected records are in the job verbatim with their path; the rest are in `records`."""
    assert batch.workspace_id == WORKSPACE and batch.push_id == answer.push_id
    rejected: dict[str, dict[int, Any]] = {t: {} for t in RECORD_TYPES}
    for r in batch.rejected:
        assert r.index not in rejected[r.record_type], f"{r.record_type}[{r.index}] rejected twice"
        rejected[r.record_type][r.index] = r
    for record_type in RECORD_TYPES:
        # (section, position in section, record), in the order the api numbers them.
        sent = [
            (section, i, record)
            for section in SECTIONS
            if isinstance(envelope.get(section), dict)
            for i, record in enumerate(envelope[section].get(record_type) or [])
        ]
        bad = rejected[record_type]
        assert answer.accepted.get(record_type, 0) + answer.rejected.get(record_type, 0) == len(sent), record_type
        assert answer.rejected.get(record_type, 0) == len(bad), record_type
        for index, r in bad.items():
            section, position, record = sent[index]
            assert msgspec.json.decode(r.raw) == record
            prefix = f"{section}.{record_type}[{position}]"
            assert r.error.startswith(prefix) and len(r.error) > len(prefix) + 2, r.error
        good = [record for index, (_, _, record) in enumerate(sent) if index not in bad]
        assert [msgspec.json.decode(raw) for raw in batch.raw_records().get(record_type, [])] == good, record_type
    shown = [r.error for r in batch.rejected[:MAX_ERRORS_LISTED]]
    assert answer.errors[: len(shown)] == shown
