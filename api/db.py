"""Postgres for the endpoints that answer from it: a pooled connection, rows as Structs, the JSON answer."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
import psycopg
from psycopg import sql
from psycopg_pool import PoolTimeout
from starlette.requests import Request
from starlette.responses import Response

from api.errors import UNAVAILABLE

POOL_TIMEOUT_S = 5.0
REPLICA_TIMEOUT_S = 1.0  # then the primary answers instead


@contextlib.asynccontextmanager
async def db_connection(request: Request) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A pooled connection (autocommit); Postgres unreachable is a 503 with Retry-After."""
    pool = request.app.state.pool
    if pool is None:
        raise UNAVAILABLE("the database is not configured")
    try:
        async with pool.connection(timeout=POOL_TIMEOUT_S) as conn:
            yield conn
    except (psycopg.OperationalError, PoolTimeout) as exc:
        raise UNAVAILABLE(f"the database is unavailable ({type(exc).__name__}); retry later") from None


# How far behind the primary a replica's data is: 0 once it has replayed all it received,
# else the age of the last transaction it replayed (the usual streaming-replication lag).
_REPLICA_LAG = (
    "SELECT CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0"
    " ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0) END"
)


class ReadConnection:
    """A connection for a read endpoint, and how stale its data may be (None: the primary's)."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], replica_lag_s: float | None) -> None:
        self.conn = conn
        self.replica_lag_s = replica_lag_s


@contextlib.asynccontextmanager
async def read_connection(request: Request) -> AsyncIterator[ReadConnection]:
    """The replica (DATABASE_READ_URL) when there is one and it answers, else the primary.

    A replica that cannot be reached is not an outage for reads: the primary serves them.
    """
    pool = getattr(request.app.state, "read_pool", None)
    conn = None
    if pool is not None:
        try:
            conn = await pool.getconn(timeout=REPLICA_TIMEOUT_S)
            row = await (await conn.execute(_REPLICA_LAG)).fetchone()
        except (psycopg.OperationalError, PoolTimeout):
            if conn is not None:
                await pool.putconn(conn)  # the pool drops a broken connection
            conn = None  # the replica is down or still starting: read the primary
    if pool is None or conn is None:
        async with db_connection(request) as primary:
            yield ReadConnection(primary, None)
        return
    try:
        yield ReadConnection(conn, round(float(row[0]), 3) if row else 0.0)
    except psycopg.OperationalError as exc:
        raise UNAVAILABLE(f"the database replica failed mid-read ({type(exc).__name__}); retry") from None
    finally:
        await pool.putconn(conn)


def utc(values: Iterable[Any]) -> list[Any]:
    """A row with its timestamps in UTC, whatever the session's time zone."""
    return [v.astimezone(UTC) if isinstance(v, datetime) else v for v in values]


def field_names(struct: type[msgspec.Struct]) -> tuple[str, ...]:
    return tuple(f.name for f in msgspec.structs.fields(struct))


def select_list(names: Sequence[str], alias: str | None = None) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(alias, n) if alias else sql.Identifier(n) for n in names)


def json_response(answer: msgspec.Struct, status: int = 200) -> Response:
    return Response(msgspec.json.encode(answer), status_code=status, media_type="application/json")
