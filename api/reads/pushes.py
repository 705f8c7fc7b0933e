"""GET /v2/pushes/{push_id} (SPEC 7): where a push stands, queued, processed or failed.

The Bearer key sees only its workspace's pushes: another workspace's push
answers exactly as one that does not exist.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec
import psycopg
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from api.auth import authenticate
from api.db import db_connection, json_response, read_connection, utc
from api.errors import NOT_FOUND, UNAVAILABLE
from api.openapi import Param, describe, errors
from api.push import PushAnswer
from api.reads.params import path_param, query_params
from schema.batches import failure_key


class PushStatus(msgspec.Struct, kw_only=True):
    """GET /v2/pushes/{push_id}.

    `queued`: accepted and waiting in Redis or in the api's spool (`accepted`/`rejected`/`errors`
    are the api's validation counts). `processed`: written (`accepted` counts rows
    written by type, `rejected` records quarantined). `failed`: gave up after its
    retries (noted by the worker in Redis too, so this holds while Postgres is down); `reason`
    says why, and ops can replay it.
    """

    push_id: str
    status: Literal["queued", "processed", "failed"]
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
    async with read_connection(request) as read:
        found = await _push_row(read.conn, key.workspace_id, push_id)
    if found is None and read.replica_lag_s is not None:
        # The replica may not have replayed the worker's write yet: the primary has the last word.
        async with db_connection(request) as conn:
            found = await _push_row(conn, key.workspace_id, push_id)
    if found is not None:
        return json_response(PushStatus(push_id=push_id, **found))
    try:
        failed, first = await _failure_and_answer(request, key.workspace_id, push_id)
    except (RedisError, OSError) as exc:
        raise UNAVAILABLE(f"the queue is unavailable ({type(exc).__name__}); retry later") from None
    if first is None:
        raise NOT_FOUND(f"no push {push_id!r} in this workspace")
    answer = msgspec.json.decode(first, type=PushAnswer)
    queued = PushStatus(
        push_id=push_id,
        status="failed" if failed is not None else "queued",
        reason=failed.decode() if failed is not None else None,
        accepted=answer.accepted,
        rejected=answer.rejected,
        errors=answer.errors,
    )
    return json_response(queued)


async def _push_row(conn: psycopg.AsyncConnection[Any], workspace_id: str, push_id: str) -> dict[str, Any] | None:
    """The push's row as the status's fields (timestamps in UTC), or None if no worker wrote it yet."""
    cur = await conn.execute(_PUSH_ROW, (workspace_id, push_id))
    row = await cur.fetchone()
    if row is None:
        return None
    return dict(zip([c.name for c in cur.description or ()], utc(row), strict=True))


async def _failure_and_answer(request: Request, workspace_id: str, push_id: str) -> tuple[bytes | None, bytes | None]:
    """Why the push failed for good if it did (noted in Redis by the worker), and its first answer (spool or Redis).

    Raises the Redis error only when Redis cannot be asked and the spool does not hold the push.
    """
    first = await request.app.state.intake.first_answer(workspace_id, push_id)
    if first is None:
        return None, None
    try:
        failed = await request.app.state.redis.get(failure_key(workspace_id, push_id))
    except (RedisError, OSError):  # the answer came from the spool: a spooled batch has not failed
        failed = None
    return failed, first


describe(
    "/v2/pushes/{push_id}",
    "get",
    summary="A push's status: queued, processed (counts and timings) or failed (reason)",
    responses={200: PushStatus, **errors(401, 404, 422, 503)},
    params=(Param("push_id", "path"),),
)

routes: list[BaseRoute] = [Route("/v2/pushes/{push_id:text}", push_status, methods=["GET"])]
