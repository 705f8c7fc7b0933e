"""Reading back what the workers wrote, as the end-to-end tests check it."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

# The column that names a record in its table (execution facts are keyed by more, but
# their row number tells the records of one machine apart).
ID_COLUMNS = {
    "sessions": "session_id",
    "prompts": "prompt_id",
    "skill_invocations": "skill_invocation_id",
    "execution_facts": "execution_fact_id",
    "normalization_runs": "run_id",
    "evolution_evidence": "evidence_id",
    "orchestrate_runs": "run_id",
    "grading_results": "grading_id",
    "improvement_signals": "signal_id",
}


def ids_in(conn: psycopg.Connection, table: str, workspace_id: str) -> list[str]:
    """The ids of a workspace's rows in a record table, sorted (duplicates kept)."""
    query = sql.SQL("SELECT {id} FROM {table} WHERE workspace_id = %s ORDER BY 1").format(
        id=sql.Identifier(ID_COLUMNS[table]), table=sql.Identifier(table)
    )
    return [row[0] for row in conn.execute(query, (workspace_id,))]


def expected_ids(table: str, *pushes: dict[str, list[dict[str, Any]]]) -> list[str]:
    return sorted(record[ID_COLUMNS[table]] for records in pushes for record in records.get(table, []))


def push_row(conn: psycopg.Connection, workspace_id: str, push_id: str) -> tuple[str, dict[str, int], dict[str, int]]:
    """A push's (status, accepted, rejected) as the worker recorded it."""
    row = conn.execute(
        "SELECT status, accepted, rejected FROM pushes WHERE workspace_id = %s AND push_id = %s",
        (workspace_id, push_id),
    ).fetchone()
    assert row is not None, f"push {push_id} has no row in pushes"
    return row[0], row[1], row[2]


def all_processed(conn: psycopg.Connection, workspace_id: str, push_ids: list[str]) -> bool:
    """True once every push is 'processed'; a push marked 'failed' fails the test at once."""
    rows: dict[str, str] = dict(
        conn.execute(
            "SELECT push_id, status || coalesce(': ' || error, '') FROM pushes"
            " WHERE workspace_id = %s AND push_id = ANY(%s)",
            (workspace_id, push_ids),
        ).fetchall()
    )
    failed = {p: s for p, s in rows.items() if s.startswith("failed")}
    assert not failed, f"pushes marked failed: {failed}"
    return all(rows.get(p) == "processed" for p in push_ids)
