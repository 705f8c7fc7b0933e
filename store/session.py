"""The session every Postgres connection starts with, in the api's pool and the workers' connections alike."""

from __future__ import annotations

from typing import Any

import psycopg

# Times are read in UTC whatever the database's TimeZone, so that any instant of years
# 1 to 9999 in UTC (migration 0003) loads into Python. A SET, not `options` in the URL,
# which would replace PGOPTIONS, a service file's options and any the URL carries, and
# which PgBouncer refuses or ignores.
SESSION_SETUP = "SET timezone TO 'UTC'"


def set_up_session(conn: psycopg.Connection[Any]) -> None:
    """Run SESSION_SETUP on a new connection."""
    conn.execute(SESSION_SETUP)


async def set_up_session_async(conn: psycopg.AsyncConnection[Any]) -> None:
    """`set_up_session` for the api's pool (its `configure` hook)."""
    await conn.execute(SESSION_SETUP)
