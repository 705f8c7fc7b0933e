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
from runtime.settings import Retention
from store.retention import prepare

# The .sql files are the contract's (package data of `schema`); this module only applies them.
MIGRATIONS_DIR = Path(schema.__file__).parent / "migrations"
_LOCK_ID = 0x5E1F7E  # advisory lock key: one migrator at a time


def migration_files() -> list[Path]:
    """The migration files, in the order they apply (by their numbered names)."""
    return sorted(MIGRATIONS_DIR.glob("*.sql"))


def latest_version() -> str:
    return migration_files()[-1].stem


def migrate(conn: psycopg.Connection, retention: Retention | None = None, *, partition: bool = True) -> list[str]:
    """Apply pending migrations, then partition the time-keyed tables; return the SQL migrations applied.

    `partition=False` stops after the .sql files: the schema as releases before
    retention left it (for the tests and the benchmark of the conversion).

    The partitioning (store/retention.prepare) is code, not a .sql file: on a table
    holding data it builds indexes CONCURRENTLY and swaps under a short lock, with
    writes going on; on a fresh database it takes a moment. It runs every time
    (each step is skipped once done), with `retention`'s partition width.
    """
    applied: list[str] = []
    autocommit = conn.autocommit
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
        conn.commit()
        if partition:
            conn.autocommit = True  # CREATE INDEX CONCURRENTLY refuses a transaction
            try:
                prepare(conn, retention or Retention())
            finally:
                conn.autocommit = autocommit
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
