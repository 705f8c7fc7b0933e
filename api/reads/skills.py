"""Skills (SPEC 7): the skills a workspace has seen, and one skill's grading results with their daily trend.

Every endpoint takes the Bearer key and sees only the key's workspace. Grading
results are answered in the Struct they were pushed in (schema/records.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec
from psycopg import sql
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from api.auth import authenticate
from api.db import field_names, json_response, read_connection, utc
from api.openapi import Param, describe, errors
from api.reads.keyset import NAME_CURSOR, TIME_CURSOR, Listing, TimeKey, decode_cursor, newest_first, page_of
from api.reads.params import PAGE, WINDOW, parse_limit, parse_window, path_param, query_params
from schema.records import GradingResult

PASS_RATE_WINDOW = timedelta(days=30)  # /v2/skills pass rate, and the default span of a grading trend
# A day's (or window's) pass rate: see GradingHistory.
PASS_RATE = sql.SQL(
    "coalesce(sum(passed_count) FILTER (WHERE {counted})::float8 / sum(total_count) FILTER (WHERE {counted}),"
    " avg(pass_rate))"
).format(counted=sql.SQL("passed_count IS NOT NULL AND total_count > 0"))

# -- GET /v2/skills ---------------------------------------------------------------------------------------

SKILL_PARAMS = ("limit", "cursor")


class SkillSummary(msgspec.Struct):
    """One skill seen in grading results or as a signal's `mentioned_skill`."""

    skill_name: str
    last_graded_at: datetime | None
    pass_rate_30d: float | None  # the pass rate (see `GradingHistory`) of the last 30 days
    checks_30d: int  # grading results of the last 30 days
    unconsumed_signals: int  # signals mentioning the skill that no run has consumed


class SkillPage(msgspec.Struct, omit_defaults=True):
    """GET /v2/skills: by name."""

    skills: list[SkillSummary]
    next_cursor: str | None
    # Only when a replica (DATABASE_READ_URL) answered: how many seconds its data may be behind.
    replica_lag_s: float | None = None


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
    async with read_connection(request) as read:
        rows = [SkillSummary(*utc(r)) for r in await (await read.conn.execute(SKILLS, args)).fetchall()]
    skills, cursor = page_of("skills", rows, limit, lambda s: (s.skill_name,))
    return json_response(SkillPage(skills, cursor, read.replica_lag_s))


describe(
    "/v2/skills",
    "get",
    summary="Skills seen: last graded, 30-day pass rate, unconsumed signals",
    responses={200: SkillPage, **errors(401, 422, 503)},
    params=PAGE,
)

# -- GET /v2/skills/{skill_name}/grading --------------------------------------------------------------------

GRADING_PARAMS = ("since", "until", "limit", "cursor")
GRADING_FIELDS = field_names(GradingResult)
GRADING_LIST = Listing("grading_results", GRADING_FIELDS, "graded_at", "grading_id")


class TrendDay(msgspec.Struct):
    """One UTC day of a skill's grading: its pass rate and how many grading results it had."""

    date: date
    pass_rate: float | None
    checks: int


class GradingHistory(msgspec.Struct, omit_defaults=True):
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
    # Only when a replica (DATABASE_READ_URL) answered: how many seconds its data may be behind.
    replica_lag_s: float | None = None


def as_grading(row: Sequence[Any]) -> GradingResult:
    return GradingResult(**dict(zip(GRADING_FIELDS, utc(row), strict=True)))


def grading_query(
    workspace_id: str, skill: str, since: datetime | None, until: datetime | None, after: TimeKey | None, limit: int
) -> tuple[sql.Composed, list[Any]]:
    """One page of a skill's grading results, newest first (`limit + 1` rows)."""
    where = [sql.SQL("workspace_id = %s AND skill_name = %s")]
    return newest_first(GRADING_LIST, where, [workspace_id, skill], (since, until), after, limit)


# Days are UTC days whatever the session's time zone.
TREND = sql.SQL(
    "SELECT (graded_at AT TIME ZONE 'UTC')::date AS day, {pass_rate}, count(*) FROM grading_results"
    " WHERE workspace_id = %s AND skill_name = %s AND graded_at >= %s AND graded_at < %s"
    " GROUP BY day ORDER BY day"
).format(pass_rate=PASS_RATE)


def _window_before(until: datetime) -> datetime:
    """The start of the default trend window ending at `until` (no earlier than year 1)."""
    try:
        return until - PASS_RATE_WINDOW
    except OverflowError:
        return datetime.min.replace(tzinfo=UTC)


async def skill_grading(request: Request) -> Response:
    """A skill's grading results (paginated) and its daily pass-rate trend."""
    key = await authenticate(request, request.app.state.keys)
    params = query_params(request, GRADING_PARAMS)
    since, until = parse_window(params)
    limit = parse_limit(params)
    after = decode_cursor(params, "grading", TIME_CURSOR)
    skill = path_param(request, "skill_name")
    trend_until = until or datetime.now(UTC)
    trend_since = since or _window_before(trend_until)
    query, args = grading_query(key.workspace_id, skill, since, until, after, limit)
    async with read_connection(request) as read:
        rows = [as_grading(r) for r in await (await read.conn.execute(query, args)).fetchall()]
        trend_args = (key.workspace_id, skill, trend_since, trend_until)
        trend_rows = await (await read.conn.execute(TREND, trend_args)).fetchall()
    results, cursor = page_of("grading", rows, limit, lambda g: (g.graded_at, g.grading_id))
    trend = [TrendDay(*r) for r in trend_rows]
    return json_response(GradingHistory(skill, results, cursor, trend, trend_since, trend_until, read.replica_lag_s))


describe(
    "/v2/skills/{skill_name}/grading",
    "get",
    summary="A skill's grading results, newest first, and its daily pass-rate trend",
    responses={200: GradingHistory, **errors(401, 422, 503)},
    params=(Param("skill_name", "path"), *WINDOW, *PAGE),
)

routes: list[BaseRoute] = [
    Route("/v2/skills", list_skills, methods=["GET"]),
    Route("/v2/skills/{skill_name:text}/grading", skill_grading, methods=["GET"]),
]
