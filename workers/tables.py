"""Where each record type is written, and how a re-push merges (SPEC 4).

Table-driven: one `Table` per record type, its columns derived from the
record's Struct (so the Struct stays the single source of truth), its key, and
its merge rule. The statements are built once, at import, with
`sql.Identifier` for every name.

Merge rules:
- "immutable": first write wins, a later copy only fills values still null.
- "session": field by field, the value from the version with the later
  `normalized_at` wins; null never overwrites (per-field versions are kept in
  `field_versions`, so the result does not depend on arrival order).
- "signal": as immutable, plus monotonic consumption: consumed = stored OR
  incoming; consumed_at and consumed_by_run come from the earliest consumption
  (store/consumption.py, shared with the consume endpoint).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
from msgspec import inspect
from psycopg import sql
from psycopg.adapt import PyFormat
from psycopg.types.json import Jsonb

from schema.records import RECORD_TYPES
from store.consumption import is_earlier, keep_earliest

_SCALAR_SQL_TYPES = {
    inspect.StrType: "text",
    inspect.LiteralType: "text",
    inspect.DateTimeType: "timestamptz",
    inspect.BoolType: "boolean",
    inspect.IntType: "bigint",
    inspect.FloatType: "double precision",
}


def sql_type(info: inspect.Type) -> str:
    """The column type for a Struct field's type: scalars map directly, the rest is jsonb."""
    if isinstance(info, inspect.Metadata):  # Annotated[...] with constraints or schema extras
        return sql_type(info.type)
    if isinstance(info, inspect.UnionType):
        members = [t for t in info.types if not isinstance(t, inspect.NoneType)]
        if len(members) == 1:
            return sql_type(members[0])
        return "jsonb"
    return _SCALAR_SQL_TYPES.get(type(info), "jsonb")


@dataclass(frozen=True)
class Column:
    name: str
    sql_type: str


@dataclass(frozen=True)
class Table:
    """One record type's table: its columns (Struct order), key and merge rule."""

    record_type: str
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]  # unique per workspace, besides workspace_id
    conflict_target: tuple[str, ...]  # the columns of the unique constraint after workspace_id
    merge: str  # "immutable" | "session" | "signal"

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def key_of(self, record: Any) -> tuple[Any, ...]:
        """The record's key, as Postgres will compare it (timestamps by instant, null prompt as '')."""
        values = []
        for name in self.key:
            value = getattr(record, name)
            if isinstance(value, datetime):
                value = as_utc(value)
            elif value is None:
                value = ""
            values.append(value)
        return tuple(values)


def as_utc(value: datetime) -> datetime:
    """A naive timestamp is read as UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _table(record_type: str, key: tuple[str, ...], merge: str = "immutable", conflict: tuple[str, ...] = ()) -> Table:
    info = inspect.type_info(RECORD_TYPES[record_type])
    assert isinstance(info, inspect.StructType)
    columns = tuple(Column(f.name, sql_type(f.type)) for f in info.fields)
    return Table(record_type, record_type, columns, key, conflict or key, merge)


TABLES: dict[str, Table] = {
    t.record_type: t
    for t in (
        _table("sessions", ("session_id",), merge="session"),
        _table("prompts", ("prompt_id",)),
        _table("skill_invocations", ("skill_invocation_id",)),
        # prompt_key is a generated column: coalesce(prompt_id, '').
        _table(
            "execution_facts",
            ("session_id", "occurred_at", "prompt_id"),
            conflict=("session_id", "occurred_at", "prompt_key"),
        ),
        _table("normalization_runs", ("run_id",)),
        _table("evolution_evidence", ("evidence_id",)),
        _table("orchestrate_runs", ("run_id",)),
        _table("grading_results", ("grading_id",)),
        _table("improvement_signals", ("signal_id",), merge="signal"),
    )
}

# -- rows -------------------------------------------------------------------------


def _cell(value: Any, column: Column) -> Any:
    if value is None:
        return None
    if column.sql_type == "jsonb":
        return Jsonb(value)
    if column.sql_type == "timestamptz":
        return as_utc(value)
    return value


def column_arrays(table: Table, records: list[msgspec.Struct]) -> list[list[Any]]:
    """The records as one list per column, ready for `unnest` (binary arrays)."""
    return [[_cell(getattr(r, c.name), c) for r in records] for c in table.columns]


# -- statements -----------------------------------------------------------------------


def _fill_null(col: sql.Composable) -> sql.Composable:
    return sql.SQL("{c} = coalesce(t.{c}, excluded.{c})").format(c=col)


def _null_filled(col: sql.Composable) -> sql.Composable:
    return sql.SQL("(t.{c} IS NULL AND excluded.{c} IS NOT NULL)").format(c=col)


def _session_update(table: Table, fields: list[str]) -> tuple[list[sql.Composable], sql.Composable]:
    """Per-field "later normalized_at wins, null never overwrites", ties broken by value."""
    sets: list[sql.Composable] = []
    versions: list[sql.Composable] = []
    takes: list[sql.Composable] = []
    for name in fields:
        c = sql.Identifier(name)
        stored_version = sql.SQL("(t.field_versions ->> {n})::timestamptz").format(n=sql.Literal(name))
        take = sql.SQL(
            "(excluded.{c} IS NOT NULL AND (t.{c} IS NULL OR excluded.normalized_at > {v}"
            " OR (excluded.normalized_at = {v} AND excluded.{c} > t.{c})))"
        ).format(c=c, v=stored_version)
        takes.append(take)
        sets.append(sql.SQL("{c} = CASE WHEN {take} THEN excluded.{c} ELSE t.{c} END").format(c=c, take=take))
        versions.append(
            sql.SQL("{n}, CASE WHEN {take} THEN excluded.normalized_at ELSE {v} END").format(
                n=sql.Literal(name), take=take, v=stored_version
            )
        )
    sets.append(sql.SQL("normalized_at = greatest(t.normalized_at, excluded.normalized_at)"))
    sets.append(
        sql.SQL("field_versions = jsonb_strip_nulls(jsonb_build_object({}))").format(sql.SQL(", ").join(versions))
    )
    where = sql.SQL(" OR ").join([*takes, sql.SQL("excluded.normalized_at > t.normalized_at")])
    return sets, where


def _signal_update(fields: list[str]) -> tuple[list[sql.Composable], sql.Composable]:
    """Consumption is monotonic; the earliest consumption (and its run) wins (store/consumption.py)."""
    at, run = sql.SQL("excluded.consumed_at"), sql.SQL("excluded.consumed_by_run")
    consumption = ("consumed", "consumed_at", "consumed_by_run")
    plain = [f for f in fields if f not in consumption]
    sets = [_fill_null(sql.Identifier(f)) for f in plain]
    sets.append(sql.SQL("consumed = t.consumed OR excluded.consumed"))
    sets.append(keep_earliest(at, run))
    earlier = is_earlier(at, run)
    where = sql.SQL(" OR ").join(
        [*(_null_filled(sql.Identifier(f)) for f in plain), sql.SQL("(excluded.consumed AND NOT t.consumed)"), earlier]
    )
    return sets, where


def upsert_statement(table: Table) -> sql.Composed:
    """INSERT ... SELECT FROM unnest(arrays) ON CONFLICT DO UPDATE with the table's merge rule.

    Parameters: the workspace id, then one array per column. The WHERE guard
    skips rows that would not change, which makes re-pushes cheap.
    """
    names = list(table.column_names)
    updatable = [n for n in names if n not in table.key]
    target = sql.SQL(", ").join(sql.Identifier(n) for n in ("workspace_id", *table.conflict_target))
    insert_cols = ["workspace_id", *names]
    select_exprs: list[sql.Composable] = [sql.Placeholder(), sql.SQL("u.*")]
    unnest_args = sql.SQL(", ").join(
        # %b: arrays travel in Postgres's binary format (no text quoting of every element).
        sql.SQL("{}::{}[]").format(sql.Placeholder(format=PyFormat.BINARY), sql.SQL(c.sql_type))
        for c in table.columns
    )

    if table.merge == "session":
        insert_cols.append("field_versions")
        pairs = sql.SQL(", ").join(
            sql.SQL("{n}, CASE WHEN u.{c} IS NULL THEN NULL ELSE u.normalized_at END").format(
                n=sql.Literal(n), c=sql.Identifier(n)
            )
            for n in updatable
            if n != "normalized_at"
        )
        select_exprs.append(sql.SQL("jsonb_strip_nulls(jsonb_build_object({}))").format(pairs))
        sets, where = _session_update(table, [n for n in updatable if n != "normalized_at"])
    elif table.merge == "signal":
        sets, where = _signal_update(updatable)
    else:
        sets = [_fill_null(sql.Identifier(n)) for n in updatable]
        where = sql.SQL(" OR ").join(_null_filled(sql.Identifier(n)) for n in updatable)

    return sql.SQL(
        "INSERT INTO {table} AS t ({cols}) SELECT {select} FROM unnest({args}) AS u({unnest_cols})"
        " ON CONFLICT ({target}) DO UPDATE SET {sets} WHERE {where}"
    ).format(
        table=sql.Identifier(table.name),
        cols=sql.SQL(", ").join(sql.Identifier(n) for n in insert_cols),
        select=sql.SQL(", ").join(select_exprs),
        args=unnest_args,
        unnest_cols=sql.SQL(", ").join(sql.Identifier(n) for n in names),
        target=target,
        sets=sql.SQL(", ").join(sets),
        where=where,
    )


# Rendered to bytes once: composing a statement of this size costs ~1.5 ms of
# CPU, more than Postgres takes to write a 100-row batch.
UPSERTS: dict[str, bytes] = {name: upsert_statement(t).as_bytes(None) for name, t in TABLES.items()}
