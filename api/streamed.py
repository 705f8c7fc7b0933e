"""Pushes past MAX_BODY_BYTES (SPEC 2.3, 2.5): streamed to the spool with bounded memory, answered 202.

One pasted log can make a push tens of megabytes, and the real CLI drops a 413
batch for good. So between MAX_BODY_BYTES and MAX_PUSH_BYTES the api does not
parse the body in memory: it writes it in ~1 MiB chunks to the local spool
(each chunk committed, so memory holds one chunk), and runs the scanner
(schema/scan.py) over the same chunks to learn the envelope (push id,
workspace, versions) and to check each record alone, as validate_push does;
a record over MAX_RECORD_BYTES is rejected unread. The upload is completed in
one fsynced commit before the 202, whose counts are what the api saw. The
spool's drainer (api/intake.py) moves the body into Redis in chunks and
enqueues it once per push id; a worker splits it there (workers/streamed.py)
and GET /v2/pushes/{id} says what landed.

The scanning and record checks run on a thread: a big body's CPU never
stalls the event loop.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
from collections.abc import Callable
from datetime import datetime

import msgspec
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from api.auth import ApiKey, require_workspace
from api.body import Overflow, timed_out
from api.errors import INVALID_JSON
from api.intake import Refused
from api.metrics import RECORDS_ACCEPTED, RECORDS_REJECTED
from runtime.settings import Settings
from schema.batches import QueuedBatch, encode_batch
from schema.record_checks import RecordLimits, TooManyRecords, check_alone, oversized_error
from schema.scan import PushScanner, Record, ScanError
from schema.validation import MAX_ERRORS_LISTED, envelope_of_scan
from spool.store import AsyncSpool, SpoolError, SpoolFull

log = logging.getLogger("selftune.push")

SPOOL_CHUNK_BYTES = 1 << 20  # a streamed body is spooled, scanned and later moved to Redis in pieces this big


class StreamedCheck:
    """What the api learns of a streamed body, chunk by chunk: JSON and UTF-8 validity, records checked alone.

    Runs off the event loop (one chunk per call, in order). Raises ScanError for
    a body that is not JSON or not UTF-8, TooManyRecords past MAX_RECORDS_PER_PUSH.
    """

    def __init__(self, limits: RecordLimits, max_record_bytes: int) -> None:
        self.limits = limits
        self.max_record_bytes = max_record_bytes
        self.scanner = PushScanner(keep_records=True, max_record_bytes=max_record_bytes)
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._carried = 0  # bytes of a character cut by the last chunk
        self._offset = 0
        self.accepted: dict[str, int] = {}
        self.rejected: dict[str, int] = {}
        self.errors: list[str] = []
        self._records = 0

    def feed(self, chunk: bytes) -> None:
        self._check_utf8(chunk, final=False)
        self._offset += len(chunk)
        self._check(self.scanner.feed(chunk))

    def finish(self) -> None:
        self._check_utf8(b"", final=True)
        self._check(self.scanner.finish())

    def _check_utf8(self, chunk: bytes, final: bool) -> None:
        if not final and not self._carried and chunk.isascii():
            return
        try:
            self._utf8.decode(chunk, final=final)  # the decoded text is let go at once
        except UnicodeDecodeError as exc:
            raise ScanError(
                f"JSON is malformed: invalid UTF-8 (byte {self._offset - self._carried + exc.start})"
            ) from None
        self._carried = len(self._utf8.getstate()[0])

    def _check(self, records: list[Record]) -> None:
        for r in records:
            self._records += 1
            if self._records > self.limits.max_records_per_push:
                raise TooManyRecords(self._records, self.limits.max_records_per_push)
            path = f"{r.section}.{r.record_type}[{r.index}]"
            if r.raw is None:
                error: str | None = oversized_error(path, r.size, self.max_record_bytes)
            else:
                _, _, error = check_alone(r.record_type, r.raw, path, self.limits)
            counts = self.accepted if error is None else self.rejected
            counts[r.record_type] = counts.get(r.record_type, 0) + 1
            if error is not None:
                if len(self.errors) < MAX_ERRORS_LISTED:
                    self.errors.append(error)
                elif len(self.errors) == MAX_ERRORS_LISTED:
                    self.errors.append("... and more rejected records")


async def accept_streamed(
    request: Request,
    key: ApiKey,
    body: Overflow,
    received_at: datetime,
    answer_type: type[msgspec.Struct],
    push_id_of: Callable[[Request, str | None], str],
) -> Response:
    """Stream a push past MAX_BODY_BYTES into the spool; 202 once it is fsynced, 200 for a push id seen before.

    `answer_type` and `push_id_of` are the push endpoint's (api/push.py): the same answer, the same push id rule.
    """
    state = request.app.state
    settings: Settings = state.settings
    spool: AsyncSpool = state.spool
    check = StreamedCheck(settings.record_limits, settings.max_record_bytes)
    try:
        upload = await spool.begin_streamed(key.workspace_id, key.key_id)
    except (SpoolFull, SpoolError) as exc:
        raise Refused(str(exc)) from None
    answered = False
    try:
        await _spool_body(spool, upload, body, check, settings.body_read_timeout_s)
        response = await _answer(request, key, check, upload, received_at, answer_type, push_id_of)
        answered = response.status_code == 202
        return response
    finally:
        if not answered:  # refused, a duplicate, or the client gone: the upload is not kept
            try:
                await spool.discard_streamed(upload)
            except SpoolError as exc:  # swept later (ABANDONED_UPLOAD_S)
                log.warning("could not discard streamed upload %s: %s", upload, exc)


async def _spool_body(spool: AsyncSpool, upload: int, body: Overflow, check: StreamedCheck, timeout_s: float) -> None:
    """Write the body to the spool in SPOOL_CHUNK_BYTES pieces, checking each on a thread as it goes."""
    pending = bytearray()
    seq = 0

    async def put(piece: bytes) -> None:
        nonlocal seq
        try:
            await spool.put_streamed_chunk(upload, seq, piece)
        except (SpoolFull, SpoolError) as exc:
            raise Refused(str(exc)) from None
        seq += 1
        try:  # TooManyRecords goes up as it is: api/errors.py makes it the 413
            await asyncio.to_thread(check.feed, piece)
        except ScanError as exc:
            raise INVALID_JSON(f"body is not valid JSON: {exc}") from None

    for piece in body.head:
        pending += piece
    body.head.clear()
    try:
        async with asyncio.timeout_at(body.deadline):
            while len(pending) >= SPOOL_CHUNK_BYTES:
                await put(bytes(pending[:SPOOL_CHUNK_BYTES]))
                del pending[:SPOOL_CHUNK_BYTES]
            async for piece in body.rest:
                pending += piece
                while len(pending) >= SPOOL_CHUNK_BYTES:
                    await put(bytes(pending[:SPOOL_CHUNK_BYTES]))
                    del pending[:SPOOL_CHUNK_BYTES]
            if pending:
                await put(bytes(pending))
    except TimeoutError:
        raise timed_out(timeout_s) from None
    try:
        await asyncio.to_thread(check.finish)
    except ScanError as exc:
        raise INVALID_JSON(f"body is not valid JSON: {exc}") from None


async def _answer(
    request: Request,
    key: ApiKey,
    check: StreamedCheck,
    upload: int,
    received_at: datetime,
    answer_type: type[msgspec.Struct],
    push_id_of: Callable[[Request, str | None], str],
) -> Response:
    state = request.app.state
    envelope = envelope_of_scan(check.scanner)  # EnvelopeError: the 422 (api/errors.py)
    require_workspace(key, envelope.workspace_id)
    push_id = push_id_of(request, envelope.push_id)
    request.state.push |= {
        "push_id": push_id,
        "accepted": sum(check.accepted.values()),
        "rejected": sum(check.rejected.values()),
        "bytes": check.scanner.size,
        "where": "spool",
    }
    try:
        prior = await state.intake.first_answer(key.workspace_id, push_id)
    except (RedisError, OSError):
        prior = None  # the drainer asks Redis again before it enqueues: a twin is never queued twice
    if prior is None:
        answer = answer_type(
            ok=True,
            success=True,
            push_id=push_id,
            accepted=check.accepted,
            errors=check.errors,
            rejected=check.rejected,
        )
        answer_bytes = msgspec.json.encode(answer)
        batch = QueuedBatch(
            workspace_id=key.workspace_id,
            push_id=push_id,
            received_at=received_at,
            pushed_at=envelope.pushed_at or received_at,
            cli_version=envelope.cli_version or envelope.client_version,
            body_bytes=check.scanner.size,
            key_id=key.key_id,
        )
        records = sum(check.accepted.values())
        try:
            prior = await state.spool.finish_streamed(upload, push_id, encode_batch(batch), answer_bytes, records)
        except SpoolError as exc:
            raise Refused(f"the spool cannot be written ({exc})") from None
        if prior is None:
            for record_type, n in check.accepted.items():
                RECORDS_ACCEPTED.labels(record_type).inc(n)
            for record_type, n in check.rejected.items():
                RECORDS_REJECTED.labels(record_type).inc(n)
            log.info("push streamed to the spool", extra={"push_id": push_id, "bytes": check.scanner.size})
            return Response(answer_bytes, status_code=202, media_type="application/json")
    first = msgspec.json.decode(prior, type=answer_type)
    first.duplicate = True  # type: ignore[attr-defined]
    return Response(msgspec.json.encode(first), status_code=200, media_type="application/json")
