"""Every error a client can see: its status, its stable code, what it means, when to retry (SPEC 2.3).

This module is the one place a client error is defined. Endpoints raise a `Kind`
(`raise INVALID_JSON("body is not valid JSON: ...")`) or let a domain exception
(a malformed envelope, a rate limit, a full spool) bubble up; `exception_handlers`
maps both to the error body, and OpenAPI describes each status from the same table.

Every error body reads
`{"ok": false, "success": false, "errors": [msg], "error": {"code": ..., "message": msg}}`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.enqueue import RateLimited
from api.intake import Refused
from schema.envelope import EnvelopeError
from schema.record_checks import TooManyRecords


class ApiError(Exception):
    """An answer other than success: status, a stable code, and a message naming what was wrong."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True)
class Kind:
    """One kind of client error. Calling it with a message makes the ApiError to raise."""

    status: int
    code: str
    meaning: str  # for OpenAPI: what it tells a client, and what to do
    retry_after_s: int | None = None  # the Retry-After header, when a retry later can succeed
    headers: tuple[tuple[str, str], ...] = ()

    def __call__(self, message: str, retry_after_s: int | None = None) -> ApiError:
        headers = dict(self.headers)
        retry = retry_after_s if retry_after_s is not None else self.retry_after_s
        if retry is not None:
            headers["Retry-After"] = str(retry)
        return ApiError(self.status, self.code, message, headers)


# -- the catalogue, by status ----------------------------------------------------------------------

INVALID_JSON = Kind(400, "invalid_json", "The body is not JSON (or not UTF-8). Do not retry.")
BAD_GZIP = Kind(400, "bad_gzip", "The body's gzip is corrupt or truncated. Do not retry.")
CLIENT_DISCONNECTED = Kind(400, "client_disconnected", "The client closed the connection mid-body.")
UNAUTHORIZED = Kind(
    401,
    "unauthorized",
    "No key, a malformed, unknown or revoked key. Re-authenticate.",
    headers=(("WWW-Authenticate", "Bearer"),),
)
WORKSPACE_MISMATCH = Kind(403, "workspace_mismatch", "`workspace_id` in the body is not the key's workspace.")
NOT_FOUND = Kind(404, "not_found", "No such endpoint or resource.")
METHOD_NOT_ALLOWED = Kind(405, "method_not_allowed", "The endpoint does not take this method.")
REQUEST_TIMEOUT = Kind(408, "request_timeout", "The body took longer than BODY_READ_TIMEOUT_S to arrive. Retry.")
PAYLOAD_TOO_LARGE = Kind(
    413,
    "payload_too_large",
    "The body is over the hard cap (MAX_PUSH_BYTES decompressed, or its share of it on the wire for gzip)."
    " Bodies between MAX_BODY_BYTES and the cap are accepted (202): streamed to the api's spool, split by"
    " a worker; a record over MAX_RECORD_BYTES is rejected alone. Split the push.",
)
TOO_MANY_RECORDS = Kind(413, "too_many_records", "The push holds more than MAX_RECORDS_PER_PUSH records. Split it.")
UNSUPPORTED_MEDIA_TYPE = Kind(415, "unsupported_media_type", "Content-Type is not application/json.")
UNSUPPORTED_ENCODING = Kind(415, "unsupported_encoding", "Content-Encoding is neither gzip nor identity.")
INVALID_ENVELOPE = Kind(
    422, "invalid_envelope", "The envelope itself is malformed (e.g. `data` is not an object). Do not retry."
)
INVALID_BODY = Kind(422, "invalid_body", "A small JSON body (consume, enrollment) is malformed. Do not retry.")
INVALID_PARAMETER = Kind(422, "invalid_parameter", "A path or query parameter is malformed. Do not retry.")
# Its Retry-After is the token bucket's own answer (RateLimited.retry_after_s); 1 s is only the fallback.
RATE_LIMITED = Kind(429, "rate_limited", "The key is over its rate limit. Retry after `Retry-After` seconds.", 1)
TOO_MANY_DEVICE_CODES = Kind(
    429, "too_many_device_codes", "Too many enrollments await approval. Retry after `Retry-After`.", 60
)
INTERNAL_ERROR = Kind(500, "internal_error", "A bug: the body names an error_id to find in the logs.")
UNAVAILABLE = Kind(
    503,
    "unavailable",
    "Neither the queue nor the api's spool can hold the push, or the key or the database cannot be"
    " checked. Retry after `Retry-After` seconds.",
    5,
)
OVERLOADED = Kind(503, "overloaded", "The api serves MAX_INFLIGHT_REQUESTS already. Retry after `Retry-After`.", 1)
NOT_READY = Kind(503, "not_ready", "Readiness: pushes could not be made durable now.")
DATABASE_NOT_READY = Kind(503, "database_not_ready", "Readiness: Postgres is unreachable or not migrated.")

CATALOGUE: tuple[Kind, ...] = tuple(v for v in tuple(globals().values()) if isinstance(v, Kind))


def meanings(status: int) -> str:
    """What a status means, code by code (OpenAPI's response description)."""
    return " ".join(f"`{k.code}`: {k.meaning}" for k in CATALOGUE if k.status == status)


def headers_of(status: int) -> tuple[str, ...]:
    """The headers the errors of this status come with (OpenAPI's response headers)."""
    kinds = [k for k in CATALOGUE if k.status == status]
    names = {name for k in kinds for name, _ in k.headers}
    if any(k.retry_after_s is not None for k in kinds):
        names.add("Retry-After")
    return tuple(sorted(names))


# -- domain exceptions, as clients see them ------------------------------------------------------


def _envelope(exc: EnvelopeError) -> ApiError:
    return INVALID_ENVELOPE(str(exc))


def _too_many(exc: TooManyRecords) -> ApiError:
    return TOO_MANY_RECORDS(f"{exc} (MAX_RECORDS_PER_PUSH); split the push into smaller batches")


def _not_json(exc: msgspec.DecodeError) -> ApiError:
    return INVALID_JSON(f"body is not valid JSON: {exc}")


def _rate_limited(exc: RateLimited) -> ApiError:
    return RATE_LIMITED(
        f"this API key is over its rate limit ({exc.rate_per_s:g} pushes/s, burst {exc.burst},"
        f" RATE_LIMIT_PUSHES_PER_S); retry after {exc.retry_after_s} s",
        retry_after_s=exc.retry_after_s,
    )


def _refused(exc: Refused) -> ApiError:
    return UNAVAILABLE(f"cannot hold the push: {exc.reason}; retry later")


# msgspec.DecodeError is mapped only where a body is decoded on purpose (the push, the small bodies):
# `as_api_error` is given it by those endpoints, never by a handler of every route.
_DOMAIN: dict[type[Exception], Callable[[Any], ApiError]] = {
    EnvelopeError: _envelope,
    TooManyRecords: _too_many,
    RateLimited: _rate_limited,
    Refused: _refused,
}


def as_api_error(exc: Exception) -> ApiError | None:
    """The client error an exception stands for, or None for a bug (which must stay a 500)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, msgspec.DecodeError) and not isinstance(exc, msgspec.ValidationError):
        return _not_json(exc)
    for cls, convert in _DOMAIN.items():
        if isinstance(exc, cls):
            return convert(exc)
    return None


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, errors: list[str] | None = None
) -> Response:
    """The error body; `errors` lists each problem when there are several (else the message alone)."""
    body = msgspec.json.encode(
        {"ok": False, "success": False, "errors": errors or [message], "error": {"code": code, "message": message}}
    )
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def respond(error: ApiError, errors: list[str] | None = None) -> Response:
    """The response for a client error."""
    return error_response(error.status, error.code, error.message, error.headers, errors)


async def _handle(_request: Request, exc: Exception) -> Response:
    error = as_api_error(exc)
    if error is None:  # not one of ours: re-raise so UnhandledErrors counts and logs it as a 500
        raise exc
    return respond(error)


async def _not_found(_request: Request, _exc: Exception) -> Response:
    return respond(NOT_FOUND("no such endpoint"))


async def _method_not_allowed(_request: Request, exc: Exception) -> Response:
    allow = dict(getattr(exc, "headers", None) or {})
    error = METHOD_NOT_ALLOWED("method not allowed on this endpoint")
    return error_response(error.status, error.code, error.message, allow)


# Starlette's exception_handlers for the app: every client error, and Starlette's own 404 and 405.
EXCEPTION_HANDLERS: dict[type[Exception] | int, Callable] = {  # type: ignore[type-arg]
    ApiError: _handle,
    **dict.fromkeys(_DOMAIN, _handle),
    404: _not_found,
    405: _method_not_allowed,
}
