"""A bound on the requests one api process serves at once, answered like every other 503.

uvicorn's own `--limit-concurrency` counts open connections (idle keep-alive
ones too) and answers past it with a plain-text 503 without Retry-After, which
a CLI cannot tell from a broken server. This bound counts requests being
served, and past it answers the error body of SPEC 2.3 with Retry-After. Each
push in flight holds its body, so the bound also caps the api's memory.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import OVERLOADED, respond
from api.metrics import PUSHES

# Probes and scrapes are answered even when the api is full: that is when they matter.
EXEMPT = frozenset({"/healthz", "/readyz", "/metrics"})
PUSH_PATHS = frozenset({"/v2/push", "/api/v1/push"})


class InflightLimit:
    """ASGI middleware: at most `limit` HTTP requests served at once (0: no bound)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.inflight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.limit <= 0 or scope["path"] in EXEMPT:
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.limit:
            if scope["path"] in PUSH_PATHS:
                PUSHES.labels("overloaded", "503").inc()
            message = f"the api is serving {self.inflight} requests (MAX_INFLIGHT_REQUESTS={self.limit}); retry later"
            response = respond(OVERLOADED(message))
            await response(scope, receive, send)
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1
