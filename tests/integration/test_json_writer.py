"""The writer hands Postgres JSON (workers/tables.py json_upsert): what it stores, whichever form the batch has.

A wholly valid push is written from its body's arrays as the client sent them; a push
with rejected records from each record as msgspec decoded and re-encoded it. Both must
store the same rows, as the writer before them stored (a Struct's JSON as msgspec
encodes it: its own fields, nulls omitted).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Literal

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import samples
from schema.batches import queued_batch
from schema.validation import validate_push
from tests.support import batch_of, count, snapshot, write_queued


def write(db: psycopg.Connection, records: dict[str, Any], ws: str, form: Literal["as queued", "records"]) -> Any:
    return write_queued(db, batch_of(records, push_id=f"p-{ws}", workspace_id=ws, form=form))


def rows_of(db: psycopg.Connection, ws: str) -> dict[str, list[Any]]:
    return {name: sorted((r[1:] for r in rows if r[0] == ws), key=repr) for name, rows in snapshot(db).items()}


def test_a_structs_json_is_stored_with_its_own_fields_and_no_nulls(db: psycopg.Connection) -> None:
    ref = {"path": "/x.jsonl", "line": 3, "event_type": None, "future": 1, "metadata": {"k": None, "n": [1, None]}}
    run = samples.orchestrate_run(1)
    run["skill_actions"][0] |= {"llm_calls": None, "new_field": "x"}
    records = {"prompts": [samples.prompt(1, raw_source_ref=ref)], "orchestrate_runs": [run]}
    write(db, records, "ws_body", "as queued")
    write(db, records, "ws_each", "records")

    for ws in ("ws_body", "ws_each"):
        stored = db.execute("SELECT raw_source_ref FROM prompts WHERE workspace_id = %s", (ws,)).fetchone()
        assert stored == ({"path": "/x.jsonl", "line": 3, "metadata": {"k": None, "n": [1, None]}},)
        [actions] = db.execute("SELECT skill_actions FROM orchestrate_runs WHERE workspace_id = %s", (ws,)).fetchone()  # type: ignore[misc]
        assert actions[0] == {"skill": "skill-1", "action": "evolve", "reason": "pass rate fell", "deployed": True}
        assert actions[1] == {"skill": "skill-2", "action": "watch", "reason": "recently deployed"}
    assert rows_of(db, "ws_body") == rows_of(db, "ws_each")


SPELLINGS = ["2026-11-28T10:00:00Z", "2026-11-28T12:00:00+02:00", "2026-11-28T10:00:00", "2026-11-28t10:00:00.000z"]
# As sent: only known keys and no null (stored as is), or not (rebuilt without them).
RAW_SOURCE_REFS = [
    {},
    {"path": "/a.jsonl", "line": 2},
    {"path": "/a.jsonl", "line": None},
    {"path": "/a.jsonl", "future": None},
    {"raw_id": "r", "future": {"x": 1}},
    {"path": "/a.jsonl", "metadata": {"k": None, "n": [None]}},
    {"metadata": {"a": [None]}, "event_type": "e"},
]
OPTIONAL = st.one_of(st.none(), st.sampled_from(["a", "é→✓", 'quote " and \\ backslash', "line\nbreak"]))


@st.composite
def varied_records(draw: st.DrawFn) -> dict[str, list[dict[str, Any]]]:
    """Records of several types with the spellings JSON allows: times, numbers, nulls, unknown fields, repeats."""
    n = draw(st.integers(0, 3))
    fact = samples.execution_fact(
        n, occurred_at=draw(st.sampled_from(SPELLINGS)), prompt_id=draw(st.none() | st.just("p"))
    )
    fact["tool_calls_json"] = {"Read": draw(st.sampled_from([3, 3.0, 3.5, 1e-7]))}
    session = samples.session(n, normalized_at=draw(st.sampled_from(SPELLINGS)), model=draw(OPTIONAL))
    session["x_future"] = draw(st.sampled_from([[1, {"a": None}], "text", None]))
    session["raw_source_ref"] = draw(st.sampled_from(RAW_SOURCE_REFS))
    signal = samples.improvement_signal(
        n, consumed=draw(st.booleans()), consumed_at=draw(st.none() | st.sampled_from(SPELLINGS))
    )
    grading = samples.grading_result(n, pass_rate=draw(st.sampled_from([0, 1, 0.3333333333333333, None])))
    evidence = samples.evolution_evidence(n, details=draw(st.sampled_from([None, {"a": [1, 2.5, "x"]}, "s", 7])))
    records: dict[str, list[dict[str, Any]]] = {
        "execution_facts": [fact],
        "sessions": [session],
        "improvement_signals": [signal],
        "grading_results": [grading],
        "evolution_evidence": [evidence],
    }
    for name in draw(st.lists(st.sampled_from(list(records)), max_size=3)):  # a copy in the same push
        records[name].append(json.loads(json.dumps(records[name][0])))
    return records


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=varied_records())
def test_a_whole_body_and_its_records_one_by_one_store_the_same_rows(
    db: psycopg.Connection, records: dict[str, list[dict[str, Any]]]
) -> None:
    db.execute("TRUNCATE sessions, execution_facts, improvement_signals, grading_results, evolution_evidence, pushes")
    whole = write(db, records, "ws_body", "as queued")
    each = write(db, records, "ws_each", "records")
    assert whole["accepted"] == each["accepted"] == {name: len(rs) for name, rs in records.items()}
    assert rows_of(db, "ws_body") == rows_of(db, "ws_each")


def test_records_of_one_type_in_both_sections_are_all_written(db: psycopg.Connection) -> None:
    body = {
        "data": {"prompts": [samples.prompt(1)], "sessions": []},
        "canonical": {"prompts": [samples.prompt(2), samples.prompt(1, prompt_hash="h")], "sessions": None},
    }
    validated = validate_push(json.dumps(body).encode())
    batch = queued_batch(validated, workspace_id="ws_a", push_id="both", received_at=datetime(2026, 11, 28, tzinfo=UTC))
    assert batch.body is not None  # written from its arrays
    summary = write_queued(db, batch)
    assert summary["accepted"] == {"prompts": 3}
    assert count(db, "prompts") == 2
    assert db.execute("SELECT prompt_hash FROM prompts WHERE prompt_id = 'prompt-1'").fetchone() == ("h",)


def test_one_statement_writes_its_rows_in_key_order(db: psycopg.Connection) -> None:
    # Two workers writing overlapping keys lock them in the same (key) order, whatever the push's order.
    ids = ["b", "é", "a", "C", "aa", "z"]
    write(db, {"grading_results": [samples.grading_result(1, grading_id=i) for i in ids]}, "ws_a", "as queued")
    written = [r[0] for r in db.execute("SELECT grading_id FROM grading_results ORDER BY ctid").fetchall()]
    assert written == sorted(ids)  # code point order, as the careful path sorts (Table.key_of)


def test_a_body_record_missing_a_required_field_is_quarantined_and_the_rest_land(db: psycopg.Connection) -> None:
    # The worker no longer decodes a whole body again: should a record lacking a required
    # field reach it (an api on a newer schema), Postgres's NOT NULL refuses the batch, and
    # the careful re-write checks each record and quarantines that one alone.
    batch = batch_of({"prompts": [samples.prompt(1), samples.prompt(2)]}, push_id="skewed")
    assert batch.body is not None
    body = json.loads(batch.body)
    del body["data"]["prompts"][1]["prompt_text"]
    batch.body = json.dumps(body).encode()
    summary = write_queued(db, batch)
    assert summary["accepted"] == {"prompts": 1} and summary["rejected"] == {"prompts": 1}
    [(index, error)] = db.execute("SELECT record_index, error FROM quarantine").fetchall()
    assert index == 1 and "prompt_text" in error


def test_a_structs_json_as_sent_is_stored_as_the_rebuilt_object(db: psycopg.Connection) -> None:
    # The cheap check that keeps an object as sent must agree with rebuilding it key by key.
    from psycopg import sql

    from workers.tables import TABLES, _stored_json, rebuilt_json

    fields = next(c.struct_fields for c in TABLES["prompts"].columns if c.name == "raw_source_ref")
    v = sql.SQL("v.ref")
    query = sql.SQL("SELECT {stored}, {rebuilt} FROM (SELECT %s::jsonb AS ref) AS v").format(
        stored=_stored_json(v, fields), rebuilt=rebuilt_json(v, fields)
    )
    for ref in RAW_SOURCE_REFS:
        stored, rebuilt = db.execute(query, (json.dumps(ref),)).fetchone()  # type: ignore[misc]
        assert stored == rebuilt, ref


def test_one_statement_writes_the_types_in_record_type_order(db: psycopg.Connection) -> None:
    # Every writer (this statement, the careful path) locks rows table by table in RECORD_TYPES
    # order, so two workers writing overlapping keys of two types never wait on each other in a cycle.
    from schema.records import RECORD_TYPES

    db.execute("CREATE TEMP SEQUENCE write_order")
    db.execute("CREATE TEMP TABLE written_order (n bigint, tbl text)")
    db.execute(
        "CREATE FUNCTION pg_temp.log_write() RETURNS trigger LANGUAGE plpgsql AS"
        " $$BEGIN INSERT INTO written_order VALUES (nextval('write_order'), TG_TABLE_NAME); RETURN NULL; END$$"
    )
    names = ["improvement_signals", "grading_results", "prompts", "sessions", "execution_facts"]
    try:
        for name in names:
            db.execute(
                f"CREATE TRIGGER log_write AFTER INSERT ON {name} FOR EACH STATEMENT EXECUTE FUNCTION pg_temp.log_write()"
            )
        records = {
            "improvement_signals": [samples.improvement_signal(1)],
            "grading_results": [samples.grading_result(1)],
            "prompts": [samples.prompt(1)],
            "sessions": [samples.session(1)],
            "execution_facts": [samples.execution_fact(1)],
        }
        write(db, records, "ws_a", "as queued")
        order = [r[0] for r in db.execute("SELECT tbl FROM written_order ORDER BY n").fetchall()]
    finally:
        for name in names:
            db.execute(f"DROP TRIGGER IF EXISTS log_write ON {name}")
    assert order == [t for t in RECORD_TYPES if t in names]


def test_a_wholly_valid_push_of_every_type_is_written_by_the_fast_path(
    db: psycopg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    # The careful path would write these rows too, one by one: a fast statement that Postgres
    # refuses (parameters in the wrong order, say) would go unnoticed by the tests above.
    records = {name: [make(1), make(2)] for name, make in samples.FACTORIES.items()}
    with caplog.at_level(logging.WARNING):
        summary = write(db, records, "ws_a", "as queued")
    assert summary["accepted"] == {name: 2 for name in records}
    assert "writing carefully" not in caplog.text
