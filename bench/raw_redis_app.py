"""Baseline: an endpoint that only puts the raw body in Redis (PERF.md's lower bound).

No authentication, no validation, no RQ: read the body, RPUSH it, answer 202.
Served exactly like the api (one uvicorn process, uvloop, httptools, no access
log), so `api rate / this rate` is what the api's own work costs:

    REDIS_URL=redis://127.0.0.1:PORT/0 uvicorn bench.raw_redis_app:create_app --factory ...
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

RAW_KEY = "bench:raw"
_ANSWER = b'{"ok":true,"success":true}'


async def push(request: Request) -> Response:
    body = await request.body()
    await request.app.state.redis.rpush(RAW_KEY, body)
    return Response(_ANSWER, status_code=202, media_type="application/json")


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    app.state.redis = Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    try:
        yield
    finally:
        await app.state.redis.aclose()


async def healthz(_request: Request) -> Response:
    return Response(b'{"ok":true}', media_type="application/json")


def create_app() -> Starlette:
    routes = [
        Route("/v2/push", push, methods=["POST"]),
        Route("/api/v1/push", push, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
