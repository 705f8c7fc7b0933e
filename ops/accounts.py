"""Workspaces and API keys, as the ops command line manages them (SPEC 6)."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime

import psycopg
from redis import Redis
from redis.exceptions import RedisError

from store.keys import INSERT_KEY, KEY_MIRROR, issue_key, mirror_value

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
# Commands take a workspace by name or id: a name shaped like an id could stand for another workspace.
_ID_SHAPED = re.compile(r"ws_[0-9a-f]{16}")


class AccountError(ValueError):
    """A workspace or key operation that cannot be done, with the reason."""


class NotFoundError(AccountError):
    """No workspace, key or enrollment by that name or id."""


def is_workspace_id(text: str) -> bool:
    """Whether `text` has the shape of a workspace id (ws_ and 16 hex digits), which no name may have."""
    return _ID_SHAPED.fullmatch(text) is not None


@dataclass(frozen=True)
class KeyInfo:
    """A key as `key list` shows it: its prefix, never the key."""

    key_id: str
    workspace_id: str
    workspace_name: str
    key_prefix: str
    created_at: datetime
    revoked_at: datetime | None


def create_workspace(conn: psycopg.Connection, name: str) -> str:
    """Create a workspace; return its id (ws_...)."""
    if not _NAME.fullmatch(name):
        raise AccountError(f"workspace name {name!r}: use letters, digits, '_', '.', '-' (max 100)")
    if is_workspace_id(name):
        raise AccountError(f"workspace name {name!r}: has the shape of a workspace id (ws_ and 16 hex digits)")
    workspace_id = "ws_" + secrets.token_hex(8)
    try:
        conn.execute("INSERT INTO workspaces (workspace_id, name) VALUES (%s, %s)", (workspace_id, name))
    except psycopg.errors.UniqueViolation:
        raise AccountError(f"a workspace named {name!r} exists already") from None
    return workspace_id


def find_workspace(conn: psycopg.Connection, name_or_id: str) -> str:
    """A workspace id from its id or its name (an id first, should a name made before names were checked match too)."""
    row = conn.execute(
        "SELECT workspace_id FROM workspaces WHERE workspace_id = %(w)s OR name = %(w)s"
        " ORDER BY workspace_id = %(w)s DESC LIMIT 1",
        {"w": name_or_id},
    ).fetchone()
    if row is None:
        raise NotFoundError(f"no workspace named or with id {name_or_id!r}")
    return str(row[0])


def list_workspaces(conn: psycopg.Connection) -> list[tuple[str, str, datetime]]:
    """Every workspace as (id, name, created_at), oldest first."""
    return list(conn.execute("SELECT workspace_id, name, created_at FROM workspaces ORDER BY created_at"))


def create_key(conn: psycopg.Connection, workspace: str, live: bool = True) -> tuple[str, str]:
    """Create a key for a workspace (by name or id); return (key_id, the key, shown only now)."""
    workspace_id = find_workspace(conn, workspace)
    issued = issue_key(workspace_id, live)
    conn.execute(INSERT_KEY, issued.params)
    return issued.key_id, issued.key


def list_keys(conn: psycopg.Connection, workspace: str | None = None) -> list[KeyInfo]:
    """Keys (never the keys themselves), oldest first; of one workspace (name or id) if given."""
    workspace_id = find_workspace(conn, workspace) if workspace else None
    rows = conn.execute(
        "SELECT k.key_id, k.workspace_id, w.name, k.key_prefix, k.created_at, k.revoked_at"
        " FROM api_keys k JOIN workspaces w USING (workspace_id)"
        " WHERE %(ws)s::text IS NULL OR k.workspace_id = %(ws)s ORDER BY k.created_at",
        {"ws": workspace_id},
    )
    return [KeyInfo(*row) for row in rows]


def mirror_key(conn: psycopg.Connection, redis: Redis, key_id: str) -> str | None:
    """Copy one key's row into the api's key mirror in Redis; None, or why it could not be (the next full copy will).

    Called when a key is issued or revoked, so the api knows it while Postgres is down
    (api/auth.py); the api also copies every key every KEY_MIRROR_REFRESH_S.
    """
    row = conn.execute(
        "SELECT key_hash, workspace_id, revoked_at IS NOT NULL FROM api_keys WHERE key_id = %s", (key_id,)
    ).fetchone()
    if row is None:
        return f"no key with id {key_id!r}"
    key_hash, workspace_id, revoked = row
    try:
        redis.hset(KEY_MIRROR, key_hash, mirror_value(workspace_id, key_id, revoked))
    except (RedisError, OSError) as exc:
        return f"Redis: {type(exc).__name__}: {exc}"
    return None


def revoke_key(conn: psycopg.Connection, key_id: str) -> None:
    """Revoke a key; the api stops accepting it within KEY_CACHE_TTL_S (write the mirror too: `mirror_key`)."""
    row = conn.execute(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = %s RETURNING key_id", (key_id,)
    ).fetchone()
    if row is None:
        raise NotFoundError(f"no key with id {key_id!r}")
