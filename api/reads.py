"""Reading back what was pushed (SPEC 7): a push's status, signals, skills and their grading.

Every endpoint takes the Bearer key and sees only the key's workspace: another
workspace's push, signal or skill answers exactly as one that does not exist.

Lists are newest first and paginated by keyset: `limit` (1 to 500, default 50)
and `cursor`, the previous page's `next_cursor` (base64url of the last row's
sort key, opaque to clients; null on the last page). A page reads its rows from
an index in order, so page 10,000 costs what page 1 costs, and rows pushed
meanwhile never shift a page (no duplicates, no gaps).

Query parameters are checked: an unknown, repeated or malformed one is a 422
naming it. An empty value (`?skill=`) means the filter is not set. Times are
RFC 3339 (`2026-11-28T10:00:00Z`) or a date (`2026-11-28`, midnight UTC);
`since` is inclusive, `until` exclusive.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
import psycopg
from msgspec import Meta
from psycopg import sql
from psycopg_pool import PoolTimeout
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from api.auth import authenticate
from api.body import check_content_headers, read_body
from api.errors import ApiError, unavailable
from api.openapi import Param, describe, errors
from api.push import PushAnswer
from schema.queue import dedupe_key
from schema.records import GradingResult, ImprovementSignal, NonEmptyStr

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
PASS_RATE_WINDOW = timedelta(days=30)  # /v2/skills pass rate, and the default span of a grading trend
MAX_SMALL_BODY_BYTES = 64 * 1024  # consume, device-code and poll bodies are a few dozen bytes
RETRY_AFTER_S = 5
POOL_TIMEOUT_S = 5.0

# -- answers -------------------------------------------------------------------------------------
# Signals and grading results are answered in the Structs they were pushed in (schema/records.py).


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


class SignalPage(msgspec.Struct):
    """GET /v2/signals: newest first (by `timestamp`, then `signal_id`)."""

    signals: list[ImprovementSignal]
    next_cursor: str | None


class ConsumeRequest(msgspec.Struct):
    """POST /v2/signals/{signal_id}/consume body; `consumed_at` defaults to now."""

    run_id: NonEmptyStr
    consumed_at: datetime | None = None


class ConsumeAnswer(msgspec.Struct):
    """The signal after the call; `changed` is false when an earlier consumption was kept."""

    changed: bool
    signal: ImprovementSignal


class SkillSummary(msgspec.Struct):
    """One skill seen in grading results or as a signal's `mentioned_skill`."""

    skill_name: str
    last_graded_at: datetime | None
    pass_rate_30d: float | None  # the pass rate (see `GradingHistory`) of the last 30 days
    checks_30d: int  # grading results of the last 30 days
    unconsumed_signals: int  # signals mentioning the skill that no run has consumed


class SkillPage(msgspec.Struct):
    """GET /v2/skills: by name."""

    skills: list[SkillSummary]
    next_cursor: str | None


class TrendDay(msgspec.Struct):
    """One UTC day of a skill's grading: its pass rate and how many grading results it had."""

    date: date
    pass_rate: float | None
    checks: int


class GradingHistory(msgspec.Struct):
    """GET /v2/skills/{skill_name}/grading.

    `results`: the grading results, newest first, paginated. `trend`: one entry per
    UTC day that has results, oldest first, over [trend_since, trend_until): the
    request's `since`/`until`, by default the 30 days before `until` (or now).
    A day's `pass_rate` is sum(passed_count) / sum(total_count) over its results
    that carry counts (total_count > 0); on a day where none do, it is the mean of
    their `pass_rate` values; null when there is neither. `checks` is the number
    of grading results that day. Every page carries the same trend.
    """

    skill_name: str
    results: list[GradingResult]
    next_cursor: str | None
    trend: list[TrendDay]
    trend_since: datetime
    trend_until: datetime


# -- query parameters -------------------------------------------------------------------------------


def invalid(name: str, message: str) -> ApiError:
    """A 422 naming the parameter or field at fault."""
    return ApiError(422, "invalid_parameter", f"{name}: {message}")


def query_params(request: Request, allowed: Sequence[str]) -> dict[str, str]:
    """The request's query parameters, each at most once and known; empty values dropped."""
    out: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in request.query_params.multi_items():
        if name not in allowed:
            raise invalid(name, f"unknown query parameter; this endpoint takes {', '.join(allowed) or 'none'}")
        if name in seen:
            raise invalid(name, "given more than once")
        seen.add(name)
        if value != "":
            out[name] = value
    return out


def parse_bool(params: dict[str, str], name: str) -> bool | None:
    value = params.get(name)
    if value is None:
        return None
    lowered = value.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise invalid(name, f"must be true or false, got {value!r}")


def parse_time(params: dict[str, str], name: str) -> datetime | None:
    """RFC 3339, or a date meaning midnight UTC; a time without offset is UTC."""
    value = params.get(name)
    if value is None:
        return None
    # An unencoded '+' in a query string arrives as a space: "10:00:00 02:00".
    for candidate in (value, re.sub(r" (\d\d:?\d\d)$", r"+\1", value)):
        try:
            parsed = datetime.fromisoformat(candidate)
        except ValueError:
            continue
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    raise invalid(name, f"must be an RFC 3339 time (2026-11-28T10:00:00Z) or a date (2026-11-28), got {value!r}")


def parse_window(params: dict[str, str]) -> tuple[datetime | None, datetime | None]:
    since, until = parse_time(params, "since"), parse_time(params, "until")
    if since is not None and until is not None and until <= since:
        raise invalid("until", "must be later than since")
    return since, until


def parse_limit(params: dict[str, str]) -> int:
    value = params.get("limit")
    if value is None:
        return DEFAULT_LIMIT
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_LIMIT:
        raise invalid("limit", f"must be an integer from 1 to {MAX_LIMIT}, got {value!r}")
    return int(value)


# -- cursors ------------------------------------------------------------------------------------------

TimeKey = tuple[datetime, str]  # (time, id) of the last row of a page
# A cursor is [kind, *sort key]: `kind` keeps one list's cursor out of another.
TIME_CURSOR = tuple[str, datetime, str]
NAME_CURSOR = tuple[str, str]


def encode_cursor(kind: str, key: Sequence[Any]) -> str:
    """The opaque cursor after `key`."""
    raw = msgspec.json.encode([kind, *key])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(params: dict[str, str], kind: str, cursor_type: Any) -> Any:
    """The sort key a cursor holds (None without a cursor), or a 422 naming `cursor`."""
    cursor = params.get("cursor")
    if cursor is None:
        return None
    try:
        tagged = msgspec.json.decode(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)), type=cursor_type)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        tagged = None
    if tagged is None or tagged[0] != kind:
        raise invalid("cursor", "not a cursor this endpoint gave; pass the previous page's next_cursor unchanged")
    return tuple(tagged[1:])


def _page_cursor(kind: str, rows: Sequence[Any], limit: int, key: Any) -> str | None:
    return encode_cursor(kind, key(rows[limit - 1])) if len(rows) > limit else None


# -- Postgres -------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def db_connection(request: Request) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A pooled connection (autocommit); Postgres unreachable is a 503 with Retry-After."""
    pool = request.app.state.pool
    if pool is None:
        raise unavailable("the database is not configured", RETRY_AFTER_S)
    try:
        async with pool.connection(timeout=POOL_TIMEOUT_S) as conn:
            yield conn
    except (psycopg.OperationalError, PoolTimeout) as exc:
        raise unavailable(f"the database is unavailable ({type(exc).__name__}); retry later", RETRY_AFTER_S) from None


def utc(values: Iterable[Any]) -> list[Any]:
    """A row with its timestamps in UTC, whatever the session's time zone."""
    return [v.astimezone(UTC) if isinstance(v, datetime) else v for v in values]


def field_names(struct: type[msgspec.Struct]) -> tuple[str, ...]:
    return tuple(f.name for f in msgspec.structs.fields(struct))


def select_list(names: Sequence[str], alias: str | None = None) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(alias, n) if alias else sql.Identifier(n) for n in names)


SIGNAL_FIELDS = field_names(ImprovementSignal)
GRADING_FIELDS = field_names(GradingResult)


def as_signal(row: Sequence[Any]) -> ImprovementSignal:
    return ImprovementSignal(**dict(zip(SIGNAL_FIELDS, utc(row), strict=True)))


def as_grading(row: Sequence[Any]) -> GradingResult:
    return GradingResult(**dict(zip(GRADING_FIELDS, utc(row), strict=True)))


def json_response(answer: msgspec.Struct, status: int = 200) -> Response:
    return Response(msgspec.json.encode(answer), status_code=status, media_type="application/json")


async def read_json(request: Request, decoder: msgspec.json.Decoder[Any]) -> Any:
    """A small JSON body decoded into its Struct: 400 if not JSON, 422 naming the field at fault."""
    body = await read_body(request, check_content_headers(request), MAX_SMALL_BODY_BYTES, MAX_SMALL_BODY_BYTES)
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise ApiError(422, "invalid_body", f"body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {exc}") from None


# -- GET /v2/pushes/{push_id} ----------------------------------------------------------------------------

_PUSH_ROW = (
    "SELECT status, accepted, rejected, error AS reason, received_at, pushed_at, cli_version, attempts,"
    " started_at, processed_at, write_ms FROM pushes WHERE workspace_id = %s AND push_id = %s"
)


async def push_status(request: Request) -> Response:
    """A push's state: its row once a worker handled it, else its acceptance in Redis, else 404."""
    key = await authenticate(request, request.app.state.keys)
    query_params(request, ())
    push_id = request.path_params["push_id"]
    async with db_connection(request) as conn:
        cur = await conn.execute(_PUSH_ROW, (key.workspace_id, push_id))
        row = await cur.fetchone()
    if row is not None:
        columns = [c.name for c in cur.description or ()]
        return json_response(PushStatus(push_id=push_id, **dict(zip(columns, utc(row), strict=True))))
    try:
        first = await request.app.state.redis.get(dedupe_key(key.workspace_id, push_id))
    except (RedisError, OSError) as exc:
        raise unavailable(f"the queue is unavailable ({type(exc).__name__}); retry later", RETRY_AFTER_S) from None
    if first is None:
        raise ApiError(404, "not_found", f"no push {push_id!r} in this workspace")
    answer = msgspec.json.decode(first, type=PushAnswer)
    queued = PushStatus(
        push_id=push_id, status="queued", accepted=answer.accepted, rejected=answer.rejected, errors=answer.errors
    )
    return json_response(queued)


# -- GET /v2/signals --------------------------------------------------------------------------------------

SIGNAL_PARAMS = ("consumed", "skill", "signal_type", "since", "until", "limit", "cursor")


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
    if filters.since is not None:
        where.append(sql.SQL("timestamp >= %s"))
        args.append(filters.since)
    if filters.until is not None:
        where.append(sql.SQL("timestamp < %s"))
        args.append(filters.until)
    if after is not None:
        where.append(sql.SQL("(timestamp, signal_id) < (%s, %s)"))
        args.extend(after)
    query = sql.SQL(
        "SELECT {cols} FROM improvement_signals WHERE {where} ORDER BY timestamp DESC, signal_id DESC LIMIT %s"
    ).format(cols=select_list(SIGNAL_FIELDS), where=sql.SQL(" AND ").join(where))
    return query, [*args, limit + 1]


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
    async with db_connection(request) as conn:
        rows = [as_signal(r) for r in await (await conn.execute(query, args)).fetchall()]
    next_cursor = _page_cursor("signals", rows, limit, lambda s: (s.timestamp, s.signal_id))
    return json_response(SignalPage(rows[:limit], next_cursor))


# -- POST /v2/signals/{signal_id}/consume ---------------------------------------------------------------

# The workers' merge rule (workers/tables.py, "signal"), with the request as the incoming
# row `i`: consumed = stored OR incoming; consumed_at and consumed_by_run come from the
# earliest consumption (ties: the smaller run id). tests/integration/test_reads.py checks
# that this statement and the workers' upsert agree on every case.
_EARLIER = (
    "((i.consumed_at IS NOT NULL AND (t.consumed_at IS NULL OR i.consumed_at < t.consumed_at))"
    " OR (i.consumed_at IS NOT DISTINCT FROM t.consumed_at AND i.consumed_by_run IS NOT NULL"
    " AND (t.consumed_by_run IS NULL OR i.consumed_by_run < t.consumed_by_run)))"
)
CONSUME = sql.SQL(
    "UPDATE improvement_signals AS t SET consumed = true,"
    " consumed_at = CASE WHEN {earlier} THEN i.consumed_at ELSE t.consumed_at END,"
    " consumed_by_run = CASE WHEN {earlier} THEN i.consumed_by_run ELSE t.consumed_by_run END"
    " FROM (VALUES (%(at)s::timestamptz, %(run)s::text)) AS i(consumed_at, consumed_by_run)"
    " WHERE t.workspace_id = %(ws)s AND t.signal_id = %(id)s AND (NOT t.consumed OR {earlier})"
    " RETURNING {cols}"
).format(earlier=sql.SQL(_EARLIER), cols=select_list(SIGNAL_FIELDS, "t"))
_SIGNAL_ROW = sql.SQL(
    "SELECT {cols} FROM improvement_signals WHERE workspace_id = %(ws)s AND signal_id = %(id)s"
).format(cols=select_list(SIGNAL_FIELDS))
CONSUME_DECODER = msgspec.json.Decoder(ConsumeRequest)


async def consume_signal(request: Request) -> Response:
    """Mark a signal consumed by a run; idempotent, and an earlier consumption is never undone."""
    key = await authenticate(request, request.app.state.keys)
    wanted: ConsumeRequest = await read_json(request, CONSUME_DECODER)
    at = wanted.consumed_at or datetime.now(UTC)
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    args = {"ws": key.workspace_id, "id": request.path_params["signal_id"], "at": at, "run": wanted.run_id}
    async with db_connection(request) as conn:
        row = await (await conn.execute(CONSUME, args)).fetchone()
        changed = row is not None
        if row is None:  # unknown, or an earlier consumption stands
            row = await (await conn.execute(_SIGNAL_ROW, args)).fetchone()
    if row is None:
        raise ApiError(404, "not_found", f"no signal {args['id']!r} in this workspace")
    return json_response(ConsumeAnswer(changed, as_signal(row)))


# -- GET /v2/skills ---------------------------------------------------------------------------------------

SKILL_PARAMS = ("limit", "cursor")
# A day's (or window's) pass rate: see GradingHistory.
PASS_RATE = sql.SQL(
    "coalesce(sum(passed_count) FILTER (WHERE {counted})::float8 / sum(total_count) FILTER (WHERE {counted}),"
    " avg(pass_rate))"
).format(counted=sql.SQL("passed_count IS NOT NULL AND total_count > 0"))


def _distinct(table: str, column: str) -> sql.Composed:
    """The distinct non-empty values of `column` after %(after)s, one index probe each.

    Postgres 15 reads a whole index for DISTINCT; this walks it value to value
    (a "loose index scan"), so a million signals over 40 skills cost 40 probes.
    """
    return sql.SQL(
        "(SELECT {c} FROM {t} WHERE workspace_id = %(ws)s AND {c} > %(after)s ORDER BY {c} LIMIT 1)"
        " UNION ALL SELECT (SELECT {c} FROM {t} WHERE workspace_id = %(ws)s AND {c} > d.skill ORDER BY {c} LIMIT 1)"
        " FROM {d} d WHERE d.skill IS NOT NULL"
    ).format(c=sql.Identifier(column), t=sql.Identifier(table), d=sql.Identifier(f"{table}_skills"))


SKILLS = sql.SQL(
    "WITH RECURSIVE grading_results_skills(skill) AS ({graded}),"
    " improvement_signals_skills(skill) AS ({mentioned}),"
    " names AS (SELECT skill FROM grading_results_skills WHERE skill IS NOT NULL"
    "   UNION SELECT skill FROM improvement_signals_skills WHERE skill IS NOT NULL"
    "   ORDER BY skill LIMIT %(limit)s),"
    # One pass over the unconsumed-signals index: the inbox, small when runs keep up.
    " unconsumed AS (SELECT mentioned_skill AS skill, count(*) AS n FROM improvement_signals"
    "   WHERE workspace_id = %(ws)s AND NOT consumed GROUP BY mentioned_skill)"
    " SELECT n.skill,"
    "  (SELECT max(graded_at) FROM grading_results r WHERE r.workspace_id = %(ws)s AND r.skill_name = n.skill),"
    "  w.pass_rate, w.checks, coalesce(u.n, 0)"
    " FROM names n CROSS JOIN LATERAL (SELECT {pass_rate} AS pass_rate, count(*) AS checks FROM grading_results r"
    "   WHERE r.workspace_id = %(ws)s AND r.skill_name = n.skill AND r.graded_at >= %(since)s) w"
    " LEFT JOIN unconsumed u ON u.skill = n.skill"
    " ORDER BY n.skill"
).format(
    graded=_distinct("grading_results", "skill_name"),
    mentioned=_distinct("improvement_signals", "mentioned_skill"),
    pass_rate=PASS_RATE,
)


async def list_skills(request: Request) -> Response:
    """Skills seen in the workspace, by name: last graded, 30-day pass rate, unconsumed signals."""
    key = await authenticate(request, request.app.state.keys)
    params = query_params(request, SKILL_PARAMS)
    limit = parse_limit(params)
    after = decode_cursor(params, "skills", NAME_CURSOR)
    args = {
        "ws": key.workspace_id,
        "after": after[0] if after else "",
        "limit": limit + 1,
        "since": datetime.now(UTC) - PASS_RATE_WINDOW,
    }
    async with db_connection(request) as conn:
        rows = [SkillSummary(*utc(r)) for r in await (await conn.execute(SKILLS, args)).fetchall()]
    next_cursor = _page_cursor("skills", rows, limit, lambda s: (s.skill_name,))
    return json_response(SkillPage(rows[:limit], next_cursor))


# -- GET /v2/skills/{skill_name}/grading --------------------------------------------------------------------

GRADING_PARAMS = ("since", "until", "limit", "cursor")


def grading_query(
    workspace_id: str, skill: str, since: datetime | None, until: datetime | None, after: TimeKey | None, limit: int
) -> tuple[sql.Composed, list[Any]]:
    """One page of a skill's grading results, newest first (`limit + 1` rows)."""
    where: list[sql.Composable] = [sql.SQL("workspace_id = %s AND skill_name = %s")]
    args: list[Any] = [workspace_id, skill]
    if since is not None:
        where.append(sql.SQL("graded_at >= %s"))
        args.append(since)
    if until is not None:
        where.append(sql.SQL("graded_at < %s"))
        args.append(until)
    if after is not None:
        where.append(sql.SQL("(graded_at, grading_id) < (%s, %s)"))
        args.extend(after)
    query = sql.SQL(
        "SELECT {cols} FROM grading_results WHERE {where} ORDER BY graded_at DESC, grading_id DESC LIMIT %s"
    ).format(cols=select_list(GRADING_FIELDS), where=sql.SQL(" AND ").join(where))
    return query, [*args, limit + 1]


# Days are UTC days whatever the session's time zone.
TREND = sql.SQL(
    "SELECT (graded_at AT TIME ZONE 'UTC')::date AS day, {pass_rate}, count(*) FROM grading_results"
    " WHERE workspace_id = %s AND skill_name = %s AND graded_at >= %s AND graded_at < %s"
    " GROUP BY day ORDER BY day"
).format(pass_rate=PASS_RATE)


async def skill_grading(request: Request) -> Response:
    """A skill's grading results (paginated) and its daily pass-rate trend."""
    key = await authenticate(request, request.app.state.keys)
    params = query_params(request, GRADING_PARAMS)
    since, until = parse_window(params)
    limit = parse_limit(params)
    after = decode_cursor(params, "grading", TIME_CURSOR)
    skill = request.path_params["skill_name"]
    trend_until = until or datetime.now(UTC)
    trend_since = since or trend_until - PASS_RATE_WINDOW
    query, args = grading_query(key.workspace_id, skill, since, until, after, limit)
    async with db_connection(request) as conn:
        rows = [as_grading(r) for r in await (await conn.execute(query, args)).fetchall()]
        trend_rows = await (await conn.execute(TREND, (key.workspace_id, skill, trend_since, trend_until))).fetchall()
    next_cursor = _page_cursor("grading", rows, limit, lambda g: (g.graded_at, g.grading_id))
    trend = [TrendDay(*r) for r in trend_rows]
    return json_response(GradingHistory(skill, rows[:limit], next_cursor, trend, trend_since, trend_until))


routes: list[BaseRoute] = [
    Route("/v2/pushes/{push_id}", push_status, methods=["GET"]),
    Route("/v2/signals", list_signals, methods=["GET"]),
    Route("/v2/signals/{signal_id}/consume", consume_signal, methods=["POST"]),
    Route("/v2/skills", list_skills, methods=["GET"]),
    Route("/v2/skills/{skill_name}/grading", skill_grading, methods=["GET"]),
]

_TIME = "RFC 3339 time, or a date (midnight UTC)"
_PAGE = (
    Param(
        "limit",
        "query",
        Annotated[int, Meta(ge=1, le=MAX_LIMIT)],
        description=f"rows per page, default {DEFAULT_LIMIT}",
    ),
    Param("cursor", "query", description="the previous page's next_cursor"),
)
_WINDOW = (
    Param("since", "query", description=f"{_TIME}, inclusive"),
    Param("until", "query", description=f"{_TIME}, exclusive"),
)
describe(
    "/v2/pushes/{push_id}",
    "get",
    summary="A push's status: queued, processed (counts and timings) or failed (reason)",
    responses={200: PushStatus, **errors(401, 404, 422, 503)},
    params=(Param("push_id", "path"),),
)
describe(
    "/v2/signals",
    "get",
    summary="Improvement signals, newest first",
    responses={200: SignalPage, **errors(401, 422, 503)},
    params=(
        Param("consumed", "query", bool),
        Param("skill", "query", description="the signal's mentioned_skill"),
        Param("signal_type", "query"),
        *_WINDOW,
        *_PAGE,
    ),
)
describe(
    "/v2/signals/{signal_id}/consume",
    "post",
    summary="Mark a signal consumed by a run (idempotent; the earliest consumption is kept)",
    request=ConsumeRequest,
    responses={200: ConsumeAnswer, **errors(400, 401, 404, 413, 415, 422, 503)},
    params=(Param("signal_id", "path"),),
)
describe(
    "/v2/skills",
    "get",
    summary="Skills seen: last graded, 30-day pass rate, unconsumed signals",
    responses={200: SkillPage, **errors(401, 422, 503)},
    params=_PAGE,
)
describe(
    "/v2/skills/{skill_name}/grading",
    "get",
    summary="A skill's grading results, newest first, and its daily pass-rate trend",
    responses={200: GradingHistory, **errors(401, 422, 503)},
    params=(Param("skill_name", "path"), *_WINDOW, *_PAGE),
)
