"""Apply the SQL migrations in `schema/migrations/` in order, each once.

Each file runs in its own transaction together with its row in
`schema_migrations`, under an advisory lock, so running `migrate` twice, or
from two processes at once, is safe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

import schema

# The .sql files are the contract's (package data of `schema`); this module only applies them.
MIGRATIONS_DIR = Path(schema.__file__).parent / "migrations"
_LOCK_ID = 0x5E1F7E  # advisory lock key: one migrator at a time


def migration_files() -> list[Path]:
    """The migration files, in the order they apply (by their numbered names)."""
    return sorted(MIGRATIONS_DIR.glob("*.sql"))


def latest_version() -> str:
    return migration_files()[-1].stem


def migrate(conn: psycopg.Connection) -> list[str]:
    """Apply pending migrations; return the names of those applied."""
    applied: list[str] = []
    conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations"
            " (version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.commit()
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        conn.commit()
        for path in migration_files():
            if path.stem in done:
                continue
            with conn.transaction():
                conn.execute(path.read_bytes())  # our own trusted file, several statements
                conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (path.stem,))
            applied.append(path.stem)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
        conn.commit()
    return applied


# The one migration-version query, for the CLI (`current_version`) and the api's readiness (`current_version_async`).
CURRENT_VERSION_QUERY = "SELECT max(version) FROM schema_migrations"


def current_version(conn: psycopg.Connection) -> str | None:
    """The newest applied migration, or None when the database was never migrated."""
    try:
        row = conn.execute(CURRENT_VERSION_QUERY).fetchone()
    except psycopg.errors.UndefinedTable:
        conn.rollback()
        return None
    return row[0] if row else None


async def current_version_async(conn: psycopg.AsyncConnection[Any]) -> str | None:
    """`current_version` on an async connection (the api's pool: autocommit, so nothing to roll back)."""
    try:
        row = await (await conn.execute(CURRENT_VERSION_QUERY)).fetchone()
    except psycopg.errors.UndefinedTable:
        return None
    return row[0] if row else None
