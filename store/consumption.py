"""An improvement signal's consumption is monotonic: the rule the workers' upsert and the consume endpoint share.

consumed = stored OR incoming. consumed_at and consumed_by_run come from the
earliest consumption: the earlier `consumed_at` (a known time before an unknown
one); on equal times, or both unknown, the smaller run id (a known run before
an unknown one).

The stored row is `t`. The incoming values are whatever expressions the caller
gives: `excluded.consumed_at` in the workers' upsert, the request's parameters
in the consume endpoint.
"""

from __future__ import annotations

from psycopg import sql


def is_earlier(at: sql.Composable, run: sql.Composable) -> sql.Composed:
    """True where the incoming consumption (`at`, `run`) is earlier than the stored one of `t`."""
    return sql.SQL(
        "(({at} IS NOT NULL AND (t.consumed_at IS NULL OR {at} < t.consumed_at))"
        " OR ({at} IS NOT DISTINCT FROM t.consumed_at AND {run} IS NOT NULL"
        " AND (t.consumed_by_run IS NULL OR {run} < t.consumed_by_run)))"
    ).format(at=at, run=run)


def keep_earliest(at: sql.Composable, run: sql.Composable) -> sql.Composed:
    """The SET items taking consumed_at and consumed_by_run from the earlier consumption."""
    earlier = is_earlier(at, run)
    return sql.SQL(
        "consumed_at = CASE WHEN {earlier} THEN {at} ELSE t.consumed_at END,"
        " consumed_by_run = CASE WHEN {earlier} THEN {run} ELSE t.consumed_by_run END"
    ).format(earlier=earlier, at=at, run=run)
