"""Unhandled exceptions: counted by route, logged as one JSON line with the traceback, answered 500.

Handled errors (ApiError, Starlette's HTTPException) are answered by their
exception handlers (api/errors.py) further in; whatever reaches this middleware
is a bug. It is the outermost of the app's own middleware, so it sees every
route's exception once, and it does not re-raise: Starlette's error middleware
and uvicorn would log the same traceback again, as plain text.
"""

from __future__ import annotations

import logging
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import INTERNAL_ERROR, respond
from api.metrics import UNHANDLED_ERRORS

log = logging.getLogger(__name__)

UNMATCHED = "unmatched"  # the route label of an exception raised before routing (a middleware's)


def route_label(scope: Scope) -> str:
    """The route's template (`/v2/signals/{signal_id}/consume`), never the raw path: labels stay few."""
    return str(getattr(scope.get("route"), "path", UNMATCHED))


class UnhandledErrors:
    """ASGI middleware: an exception nothing handled becomes a counted, logged 500 with the usual error body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def watch(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            route = route_label(scope)
            error_id = uuid.uuid4().hex[:16]
            UNHANDLED_ERRORS.labels(route).inc()
            log.exception(
                "unhandled error on %s %s (error_id %s)",
                scope.get("method"),
                route,
                error_id,
                extra={"route": route, "method": scope.get("method"), "error_id": error_id, "status": 500},
            )
            if response_started:  # too late for an error body: the connection is closed on it
                return
            message = f"internal error: the server could not answer this request (error_id {error_id})"
            await respond(INTERNAL_ERROR(message))(scope, receive, send)
