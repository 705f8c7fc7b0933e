"""Migrations apply cleanly, twice, and the tables match the Structs and the spec's keys."""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import psycopg
import pytest

from schema.records import RECORD_TYPES
from store.migrate import current_version, latest_version, migrate, migration_files
from workers.tables import TABLES

# SPEC 3: the key of each array, unique per workspace.
SPEC_KEYS = {
    "sessions": ("session_id",),
    "prompts": ("prompt_id",),
    "skill_invocations": ("skill_invocation_id",),
    "execution_facts": ("session_id", "occurred_at", "prompt_key"),
    "normalization_runs": ("run_id",),
    "evolution_evidence": ("evidence_id",),
    "orchestrate_runs": ("run_id",),
    "grading_results": ("grading_id",),
    "improvement_signals": ("signal_id",),
}
# A table partitioned by its records' time has that time in its key too (Postgres requires it): the
# SPEC key plus a value a re-push repeats, so a re-pushed record is still one row.
PARTITION_TIME = {
    "prompts": "occurred_at",
    "skill_invocations": "occurred_at",
    "normalization_runs": "run_at",
    "orchestrate_runs": "timestamp",
    "grading_results": "graded_at",
    "improvement_signals": "timestamp",
}
BOOKKEEPING = {"workspace_id", "ingested_at", "field_versions", "prompt_key"}


@pytest.fixture
def fresh_db(empty_database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        yield conn


def test_migrations_apply_once_then_are_a_no_op(fresh_db: psycopg.Connection) -> None:
    assert current_version(fresh_db) is None
    assert migrate(fresh_db) == [p.stem for p in migration_files()]
    assert migrate(fresh_db) == []
    assert current_version(fresh_db) == latest_version()


@pytest.mark.parametrize("record_type", list(RECORD_TYPES))
def test_table_columns_match_the_struct(db: psycopg.Connection, record_type: str) -> None:
    rows = db.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = %s", (TABLES[record_type].name,)
    ).fetchall()
    columns = {r[0] for r in rows} - BOOKKEEPING
    fields = {f.name for f in msgspec.structs.fields(RECORD_TYPES[record_type])}
    assert columns == fields


@pytest.mark.parametrize("record_type", list(RECORD_TYPES))
def test_table_unique_key_is_the_spec_key_scoped_by_workspace(db: psycopg.Connection, record_type: str) -> None:
    rows = db.execute(
        """
        SELECT array_agg(a.attname ORDER BY k.ord)
        FROM pg_index i
        JOIN pg_class c ON c.oid = i.indrelid
        CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
        WHERE c.relname = %s AND i.indisunique
        GROUP BY i.indexrelid
        """,
        (TABLES[record_type].name,),
    ).fetchall()
    key = (*SPEC_KEYS[record_type], *([PARTITION_TIME[record_type]] if record_type in PARTITION_TIME else []))
    assert [tuple(r[0]) for r in rows] == [("workspace_id", *key)]
    assert TABLES[record_type].conflict_target == key


@pytest.mark.parametrize("record_type", list(RECORD_TYPES))
def test_writer_column_types_match_the_table(db: psycopg.Connection, record_type: str) -> None:
    rows = db.execute(
        "SELECT column_name, format_type(atttypid, atttypmod) FROM information_schema.columns c"
        " JOIN pg_attribute a ON a.attrelid = c.table_name::regclass AND a.attname = c.column_name"
        " WHERE c.table_name = %s",
        (TABLES[record_type].name,),
    ).fetchall()
    in_table = {name: sql_type.replace("timestamp with time zone", "timestamptz") for name, sql_type in rows}
    assert {c.name: c.sql_type for c in TABLES[record_type].columns} == {
        name: in_table[name] for name in TABLES[record_type].column_names
    }
