"""POST /v2/push (and /api/v1/push): authenticate, read, validate, enqueue, answer."""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.auth import authenticate, forbidden_workspace
from api.body import Overflow, check_content_headers, read_push_body
from api.enqueue import RateLimited
from api.errors import ApiError, unavailable
from api.intake import REFUSED_RETRY_AFTER_S, Refused
from api.metrics import RECORDS_ACCEPTED, RECORDS_REJECTED, observe_push
from api.streamed import accept_streamed
from schema.envelope import MAX_PUSH_ID_LENGTH, EnvelopeError, TooManyRecords, ValidatedPush, validate_push
from schema.queue import encode_batch, queued_batch

log = logging.getLogger("selftune.push")

REDIS_RETRY_AFTER_S = 5


class PushAnswer(msgspec.Struct, omit_defaults=True):
    """The 202 answer (SPEC 2.2); `rejected` only when some records failed validation."""

    ok: bool
    success: bool
    push_id: str
    accepted: dict[str, int]
    errors: list[str]
    rejected: dict[str, int] = {}
    duplicate: bool = False


def _push_id(request: Request, validated: ValidatedPush) -> str:
    """Body push_id, else the Idempotency-Key header, else a new one."""
    return push_id_of(request, validated.envelope.push_id)


def push_id_of(request: Request, body_push_id: str | None) -> str:
    """Body push_id, else the Idempotency-Key header, else a new one (422 for a header too long)."""
    if body_push_id:
        return body_push_id
    header = request.headers.get("idempotency-key", "").strip()
    if header:
        if len(header) > MAX_PUSH_ID_LENGTH:
            raise ApiError(422, "invalid_envelope", f"Idempotency-Key: must be 1 to {MAX_PUSH_ID_LENGTH} characters")
        return header
    return str(uuid.uuid4())


async def push(request: Request) -> Response:
    """Accept a batch: 202 once it is durable (Redis or the spool), 200 if this push id was accepted before."""
    started = time.perf_counter()
    route = request.url.path
    try:
        response = await _push(request)
    except ApiError as exc:
        outcome = {503: "unavailable", 429: "rate_limited"}.get(exc.status, "refused")
        observe_push(route, started, exc.status, outcome)
        _log_push(request, started, exc.status, outcome, error=exc.code)
        raise
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
    try:
        validated = validate_push(body, settings.record_limits)
    except EnvelopeError as exc:
        raise ApiError(422, "invalid_envelope", str(exc)) from None
    except TooManyRecords as exc:
        raise ApiError(
            413, "too_many_records", f"{exc} (MAX_RECORDS_PER_PUSH); split the push into smaller batches"
        ) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {exc}") from None

    accepted = validated.accepted_counts
    accepted_records = sum(accepted.values())
    envelope = validated.envelope
    if envelope.workspace_id is not None and envelope.workspace_id != key.workspace_id:
        raise forbidden_workspace()
    push_id = _push_id(request, validated)
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
    try:
        outcome = await state.intake.accept(
            key.key_id, key.workspace_id, push_id, payload, answer_bytes, accepted_records
        )
    except RateLimited as exc:
        raise ApiError(
            429,
            "rate_limited",
            f"this API key is over its rate limit ({settings.rate_limit_pushes_per_s:g} pushes/s,"
            f" burst {settings.rate_limit_burst}, RATE_LIMIT_PUSHES_PER_S); retry after {exc.retry_after_s} s",
            {"Retry-After": str(exc.retry_after_s)},
        ) from None
    except Refused as exc:
        raise unavailable(f"cannot hold the push: {exc.reason}; retry later", REFUSED_RETRY_AFTER_S) from None
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


def queue_unavailable(exc: Exception) -> ApiError:
    """The 503 for Redis not answering (the queue, and the record of accepted push ids)."""
    return unavailable(f"the queue is unavailable ({type(exc).__name__}); retry later", REDIS_RETRY_AFTER_S)
