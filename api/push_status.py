"""GET /v2/pushes/{push_id} (SPEC 7): where a push stands, queued, processed or failed.

The Bearer key sees only its workspace's pushes: another workspace's push
answers exactly as one that does not exist.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from api.auth import authenticate
from api.db import db_connection, json_response, utc
from api.errors import ApiError
from api.openapi import Param, describe, errors
from api.params import path_param, query_params
from api.push import PushAnswer, queue_unavailable


class PushStatus(msgspec.Struct, kw_only=True):
    """GET /v2/pushes/{push_id}.

    `queued`: accepted and waiting in Redis (`accepted`/`rejected`/`errors` are
    the api's validation counts). `processed`: written (`accepted` counts rows
    written by type, `rejected` records quarantined). `failed`: gave up after its
    retries; `reason` says why, and ops can replay it.
    """

    push_id: str
    status: Literal["queued", "processing", "processed", "failed"]
    accepted: dict[str, int]
    rejected: dict[str, int]
    errors: list[str] = []
    reason: str | None = None
    received_at: datetime | None = None
    pushed_at: datetime | None = None
    cli_version: str | None = None
    attempts: int | None = None
    started_at: datetime | None = None
    processed_at: datetime | None = None
    write_ms: float | None = None


_PUSH_ROW = (
    "SELECT status, accepted, rejected, error AS reason, received_at, pushed_at, cli_version, attempts,"
    " started_at, processed_at, write_ms FROM pushes WHERE workspace_id = %s AND push_id = %s"
)


async def push_status(request: Request) -> Response:
    """A push's state: its row once a worker handled it, else its acceptance in Redis, else 404."""
    key = await authenticate(request, request.app.state.keys)
    query_params(request, ())
    push_id = path_param(request, "push_id")
    async with db_connection(request) as conn:
        cur = await conn.execute(_PUSH_ROW, (key.workspace_id, push_id))
        row = await cur.fetchone()
    if row is not None:
        columns = [c.name for c in cur.description or ()]
        return json_response(PushStatus(push_id=push_id, **dict(zip(columns, utc(row), strict=True))))
    try:
        first = await request.app.state.enqueuer.first_answer(key.workspace_id, push_id)
    except (RedisError, OSError) as exc:
        raise queue_unavailable(exc) from None
    if first is None:
        raise ApiError(404, "not_found", f"no push {push_id!r} in this workspace")
    answer = msgspec.json.decode(first, type=PushAnswer)
    queued = PushStatus(
        push_id=push_id, status="queued", accepted=answer.accepted, rejected=answer.rejected, errors=answer.errors
    )
    return json_response(queued)


describe(
    "/v2/pushes/{push_id}",
    "get",
    summary="A push's status: queued, processed (counts and timings) or failed (reason)",
    responses={200: PushStatus, **errors(401, 404, 422, 503)},
    params=(Param("push_id", "path"),),
)

routes: list[BaseRoute] = [Route("/v2/pushes/{push_id:text}", push_status, methods=["GET"])]
