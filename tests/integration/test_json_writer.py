"""The writer hands Postgres JSON (workers/tables.py json_upsert): what it stores, whichever form the batch has.

A wholly valid push is written from its body's arrays as the client sent them; a push
with rejected records from each record as msgspec decoded and re-encoded it. Both must
store the same rows, as the writer before them stored (a Struct's JSON as msgspec
encodes it: its own fields, nulls omitted).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

import psycopg
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
