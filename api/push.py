"""POST /v2/push (and /api/v1/push): authenticate, read, validate, enqueue, answer."""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.auth import authenticate, require_workspace
from api.body import Overflow, check_content_headers, read_push_body
from api.errors import INVALID_ENVELOPE, as_api_error
from api.metrics import RECORDS_ACCEPTED, RECORDS_REJECTED, observe_push
from api.streamed import accept_streamed
from schema.batches import encode_batch, queued_batch
from schema.envelope import MAX_PUSH_ID_LENGTH
from schema.validation import validate_push

log = logging.getLogger("selftune.push")


class PushAnswer(msgspec.Struct, omit_defaults=True):
    """The 202 answer (SPEC 2.2); `rejected` only when some records failed validation."""

    ok: bool
    success: bool
    push_id: str
    accepted: dict[str, int]
    errors: list[str]
    rejected: dict[str, int] = {}
    duplicate: bool = False


def push_id_of(request: Request, body_push_id: str | None) -> str:
    """Body push_id, else the Idempotency-Key header, else a new one (422 for a header too long)."""
    if body_push_id:
        return body_push_id
    header = request.headers.get("idempotency-key", "").strip()
    if header:
        if len(header) > MAX_PUSH_ID_LENGTH:
            raise INVALID_ENVELOPE(f"Idempotency-Key: must be 1 to {MAX_PUSH_ID_LENGTH} characters")
        return header
    return str(uuid.uuid4())


async def push(request: Request) -> Response:
    """Accept a batch: 202 once it is durable (Redis or the spool), 200 if this push id was accepted before."""
    started = time.perf_counter()
    route = request.url.path
    try:
        response = await _push(request)
    except Exception as exc:
        error = as_api_error(exc)
        if error is None:  # a bug: UnhandledErrors makes it a counted, logged 500
            raise
        outcome = {503: "unavailable", 429: "rate_limited"}.get(error.status, "refused")
        observe_push(route, started, error.status, outcome)
        _log_push(request, started, error.status, outcome, error=error.code)
        raise error from None
    spooled = getattr(request.state, "push", {}).get("where") == "spool"
    outcome = "duplicate" if response.status_code != 202 else "spooled" if spooled else "accepted"
    observe_push(route, started, response.status_code, outcome)
    _log_push(request, started, response.status_code, outcome)
    return response


def _log_push(request: Request, started: float, status: int, outcome: str, error: str | None = None) -> None:
    """One structured line per push (never the key: only its id)."""
    facts = getattr(request.state, "push", {})
    log.info(
        "push %s",
        outcome,
        extra={
            "status": status,
            "outcome": outcome,
            "ms": round((time.perf_counter() - started) * 1000, 2),
            "error": error,
            **facts,
        },
    )


async def _push(request: Request) -> Response:
    state = request.app.state
    settings = state.settings
    received_at = datetime.now(UTC)

    key = await authenticate(request, state.keys)
    request.state.push = {"workspace_id": key.workspace_id, "key_id": key.key_id}
    gzip = check_content_headers(request)
    # Past MAX_BODY_BYTES the body streams to the spool instead (api/streamed.py): never whole in memory.
    body = await read_push_body(request, gzip, settings, can_stream=state.spool is not None)
    if isinstance(body, Overflow):
        return await accept_streamed(request, key, body, received_at, PushAnswer, push_id_of)
    validated = validate_push(body, settings.record_limits)  # EnvelopeError, TooManyRecords: api/errors.py
    accepted = validated.accepted_counts
    accepted_records = sum(accepted.values())
    envelope = validated.envelope
    require_workspace(key, envelope.workspace_id)
    push_id = push_id_of(request, envelope.push_id)
    request.state.push |= {"push_id": push_id, "accepted": accepted_records, "rejected": len(validated.rejected)}
    answer = PushAnswer(
        ok=True,
        success=True,
        push_id=push_id,
        accepted=accepted,
        errors=validated.errors,
        rejected=validated.rejected_counts,
    )
    batch = queued_batch(
        validated, workspace_id=key.workspace_id, push_id=push_id, received_at=received_at, key_id=key.key_id
    )
    answer_bytes = msgspec.json.encode(answer)
    payload = encode_batch(batch)
    # The body, and the records that point into it, are not needed past here: let go of them
    # while the enqueue waits on Redis, so an in-flight push holds one copy of itself, not three.
    del body, validated, batch
    # RateLimited (429) and Refused (503) become their client errors in api/errors.py.
    outcome = await state.intake.accept(key.key_id, key.workspace_id, push_id, payload, answer_bytes, accepted_records)
    request.state.push["where"] = outcome.where
    prior = outcome.prior
    if prior is not None:
        return _duplicate(prior)
    for record_type, n in answer.accepted.items():
        RECORDS_ACCEPTED.labels(record_type).inc(n)
    for record_type, n in answer.rejected.items():
        RECORDS_REJECTED.labels(record_type).inc(n)
    return Response(answer_bytes, status_code=202, media_type="application/json")


def _duplicate(first_answer: bytes) -> Response:
    """The 200 for a push id accepted before: its first answer, marked duplicate."""
    first = msgspec.json.decode(first_answer, type=PushAnswer)
    first.duplicate = True
    return Response(msgspec.json.encode(first), status_code=200, media_type="application/json")
