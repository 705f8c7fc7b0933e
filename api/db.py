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


def utc(values: Iterable[Any]) -> list[Any]:
    """A row with its timestamps in UTC, whatever the session's time zone."""
    return [v.astimezone(UTC) if isinstance(v, datetime) else v for v in values]


def field_names(struct: type[msgspec.Struct]) -> tuple[str, ...]:
    return tuple(f.name for f in msgspec.structs.fields(struct))


def select_list(names: Sequence[str], alias: str | None = None) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(alias, n) if alias else sql.Identifier(n) for n in names)


def json_response(answer: msgspec.Struct, status: int = 200) -> Response:
    return Response(msgspec.json.encode(answer), status_code=status, media_type="application/json")
