"""Improvement signals (SPEC 7): the list, newest first and filtered, and consuming one.

Every endpoint takes the Bearer key and sees only the key's workspace: another
workspace's signal answers exactly as one that does not exist. Signals are
answered in the Struct they were pushed in (schema/records.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
from psycopg import sql
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from api.auth import authenticate
from api.body import read_json
from api.db import db_connection, field_names, json_response, read_connection, select_list, utc
from api.errors import INVALID_BODY, NOT_FOUND
from api.openapi import Param, describe, errors
from api.reads.keyset import TIME_CURSOR, Listing, TimeKey, decode_cursor, newest_first, page_of
from api.reads.params import PAGE, WINDOW, parse_bool, parse_limit, parse_window, path_param, query_params
from schema.records import OUT_OF_RANGE_MESSAGE, ImprovementSignal, NonEmptyStr, in_utc_range
from store.consumption import is_earlier, keep_earliest

SIGNAL_FIELDS = field_names(ImprovementSignal)


def as_signal(row: Sequence[Any]) -> ImprovementSignal:
    return ImprovementSignal(**dict(zip(SIGNAL_FIELDS, utc(row), strict=True)))


# -- GET /v2/signals --------------------------------------------------------------------------------------

SIGNAL_PARAMS = ("consumed", "skill", "signal_type", "since", "until", "limit", "cursor")
SIGNAL_LIST = Listing("improvement_signals", SIGNAL_FIELDS, "timestamp", "signal_id")


class SignalPage(msgspec.Struct, omit_defaults=True):
    """GET /v2/signals: newest first (by `timestamp`, then `signal_id`)."""

    signals: list[ImprovementSignal]
    next_cursor: str | None
    # Only when a replica (DATABASE_READ_URL) answered: how many seconds its data may be behind.
    replica_lag_s: float | None = None


@dataclass(frozen=True)
class SignalFilters:
    consumed: bool | None = None
    skill: str | None = None
    signal_type: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def signals_query(
    workspace_id: str, filters: SignalFilters, after: TimeKey | None, limit: int
) -> tuple[sql.Composed, list[Any]]:
    """One page of signals, newest first; `limit + 1` rows tell whether another page follows.

    `NOT consumed` is spelled as the partial index's predicate so the planner can use it.
    """
    where: list[sql.Composable] = [sql.SQL("workspace_id = %s")]
    args: list[Any] = [workspace_id]
    if filters.consumed is not None:
        where.append(sql.SQL("consumed") if filters.consumed else sql.SQL("NOT consumed"))
    for column, value in (("mentioned_skill", filters.skill), ("signal_type", filters.signal_type)):
        if value is not None:
            where.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
            args.append(value)
    return newest_first(SIGNAL_LIST, where, args, (filters.since, filters.until), after, limit)


async def list_signals(request: Request) -> Response:
    """Improvement signals of the key's workspace, newest first, filtered."""
    key = await authenticate(request, request.app.state.keys)
    params = query_params(request, SIGNAL_PARAMS)
    since, until = parse_window(params)
    filters = SignalFilters(
        parse_bool(params, "consumed"), params.get("skill"), params.get("signal_type"), since, until
    )
    limit = parse_limit(params)
    after = decode_cursor(params, "signals", TIME_CURSOR)
    query, args = signals_query(key.workspace_id, filters, after, limit)
    async with read_connection(request) as read:
        rows = [as_signal(r) for r in await (await read.conn.execute(query, args)).fetchall()]
    signals, cursor = page_of("signals", rows, limit, lambda s: (s.timestamp, s.signal_id))
    return json_response(SignalPage(signals, cursor, read.replica_lag_s))


describe(
    "/v2/signals",
    "get",
    summary="Improvement signals, newest first",
    responses={200: SignalPage, **errors(401, 422, 503)},
    params=(
        Param("consumed", "query", bool),
        Param("skill", "query", description="the signal's mentioned_skill"),
        Param("signal_type", "query"),
        *WINDOW,
        *PAGE,
    ),
)

# -- POST /v2/signals/{signal_id}/consume ---------------------------------------------------------------


class ConsumeRequest(msgspec.Struct):
    """POST /v2/signals/{signal_id}/consume body; `consumed_at` defaults to now."""

    run_id: NonEmptyStr
    consumed_at: datetime | None = None


class ConsumeAnswer(msgspec.Struct):
    """The signal after the call; `changed` is false when an earlier consumption was kept."""

    changed: bool
    signal: ImprovementSignal


# The workers' merge rule (store/consumption.py) with the request as the incoming
# consumption. tests/integration/test_reads.py checks that this statement and the
# workers' upsert agree on every case.
_AT = sql.SQL("{}::timestamptz").format(sql.Placeholder("at"))
_RUN = sql.SQL("{}::text").format(sql.Placeholder("run"))
CONSUME = sql.SQL(
    "UPDATE improvement_signals AS t SET consumed = true, {keep_earliest}"
    " WHERE t.workspace_id = %(ws)s AND t.signal_id = %(id)s AND (NOT t.consumed OR {earlier})"
    " RETURNING {cols}"
).format(keep_earliest=keep_earliest(_AT, _RUN), earlier=is_earlier(_AT, _RUN), cols=select_list(SIGNAL_FIELDS, "t"))
_SIGNAL_ROW = sql.SQL(
    "SELECT {cols} FROM improvement_signals WHERE workspace_id = %(ws)s AND signal_id = %(id)s"
).format(cols=select_list(SIGNAL_FIELDS))
CONSUME_DECODER = msgspec.json.Decoder(ConsumeRequest)


async def consume_signal(request: Request) -> Response:
    """Mark a signal consumed by a run; idempotent, and an earlier consumption is never undone."""
    key = await authenticate(request, request.app.state.keys)
    wanted: ConsumeRequest = await read_json(request, CONSUME_DECODER)
    at = wanted.consumed_at or datetime.now(UTC)
    if not in_utc_range(at):
        raise INVALID_BODY(f"body.consumed_at: {OUT_OF_RANGE_MESSAGE}")
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    args = {"ws": key.workspace_id, "id": path_param(request, "signal_id"), "at": at, "run": wanted.run_id}
    async with db_connection(request) as conn:
        row = await (await conn.execute(CONSUME, args)).fetchone()
        changed = row is not None
        if row is None:  # unknown, or an earlier consumption stands
            row = await (await conn.execute(_SIGNAL_ROW, args)).fetchone()
    if row is None:
        raise NOT_FOUND(f"no signal {args['id']!r} in this workspace")
    return json_response(ConsumeAnswer(changed, as_signal(row)))


describe(
    "/v2/signals/{signal_id}/consume",
    "post",
    summary="Mark a signal consumed by a run (idempotent; the earliest consumption is kept)",
    request=ConsumeRequest,
    responses={200: ConsumeAnswer, **errors(400, 401, 404, 413, 415, 422, 503)},
    params=(Param("signal_id", "path"),),
)

routes: list[BaseRoute] = [
    Route("/v2/signals", list_signals, methods=["GET"]),
    Route("/v2/signals/{signal_id:text}/consume", consume_signal, methods=["POST"]),
]
