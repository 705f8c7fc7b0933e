"""Errors a client sees, and how they are rendered (SPEC 2.3).

Every error body reads
`{"ok": false, "success": false, "errors": [msg], "error": {"code": ..., "message": msg}}`.
"""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response


class ApiError(Exception):
    """An answer other than success: status, a stable code, and a message naming what was wrong."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, errors: list[str] | None = None
) -> Response:
    """The error body; `errors` lists each problem when there are several (else the message alone)."""
    body = msgspec.json.encode(
        {"ok": False, "success": False, "errors": errors or [message], "error": {"code": code, "message": message}}
    )
    return Response(body, status_code=status, headers=headers, media_type="application/json")


async def api_error_handler(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})


def unavailable(message: str, retry_after_s: int) -> ApiError:
    return ApiError(503, "unavailable", message, {"Retry-After": str(retry_after_s)})
