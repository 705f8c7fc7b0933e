"""The worker's Postgres connection: opened once, kept across jobs, reopened when it drops."""

from __future__ import annotations

import logging

import msgspec
import psycopg
from psycopg.types.json import set_json_dumps

from runtime.settings import Settings
from store.session import set_up_session

log = logging.getLogger(__name__)

# jsonb values (raw_source_ref, tool_calls_json, ...) are Structs or plain JSON: msgspec encodes both.
set_json_dumps(msgspec.json.encode)

_conn: psycopg.Connection | None = None


def connect(database_url: str) -> psycopg.Connection:
    """A new connection with the session settings every writer relies on."""
    conn = psycopg.connect(database_url, autocommit=True, connect_timeout=5)
    set_up_session(conn)
    return conn


def connection(settings: Settings) -> psycopg.Connection:
    """This process's connection, reconnecting if the last one broke or was closed."""
    global _conn
    if _conn is None or _conn.closed or _conn.broken:
        if _conn is not None:
            log.warning("postgres connection lost; reconnecting")
            _conn.close()
        _conn = connect(settings.database_url)
    return _conn


def close() -> None:
    """Drop this process's connection (after a failure that may have left it mid-command)."""
    global _conn
    if _conn is not None:
        _conn.close()
        _conn = None
