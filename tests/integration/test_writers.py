"""The workers' writes against a real Postgres: merge rules, idempotency, order independence."""

from __future__ import annotations

import base64
import itertools
import os
from typing import Any, Literal

import msgspec
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import samples
from tests.support import batch_of, count, snapshot, write_queued
from workers import jobs


def write(
    db: psycopg.Connection,
    records: dict[str, list[dict[str, Any]]],
    push_id: str = "p",
    ws: str = "ws_a",
    form: Literal["as queued", "records"] = "as queued",
) -> dict[str, Any]:
    return write_queued(db, batch_of(records, push_id=push_id, workspace_id=ws, form=form))


def row(db: psycopg.Connection, sql: str, *params: Any) -> tuple[Any, ...]:
    found = db.execute(sql, params).fetchone()
    assert found is not None, sql
    return tuple(found)


def test_every_type_is_written_with_its_values(db: psycopg.Connection) -> None:
    summary = write(db, samples.one_of_each(1))

    assert summary["accepted"] == dict.fromkeys(samples.FACTORIES, 1)
    for table in samples.FACTORIES:
        assert count(db, table, "ws_a") == 1, table
    assert row(db, "SELECT tool_calls_json, duration_ms FROM execution_facts") == ({"Read": 3, "Edit": 1}, 5400.5)
    actions = row(db, "SELECT skill_actions FROM orchestrate_runs")[0]
    assert [a["action"] for a in actions] == ["evolve", "watch", "skip"]
    assert row(db, "SELECT raw_source_ref->>'line', platform FROM prompts") == ("12", "claude_code")
    assert row(db, "SELECT status, accepted, rejected FROM pushes WHERE push_id = 'p'") == (
        "processed",
        dict.fromkeys(samples.FACTORIES, 1),
        {},
    )


def test_a_whole_body_and_its_records_one_by_one_write_the_same_rows(
    db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Most pushes are queued as their whole body (decoded in one pass); a push with bad
    # records, or one queued by an earlier build, carries its records one by one.
    first, second = samples.one_of_each(1), samples.one_of_each(2)
    records = {name: first[name] + second[name] for name in first}
    decoded_alone: list[str] = []
    real_check = jobs.check_record
    monkeypatch.setattr(jobs, "check_record", lambda t, *a: decoded_alone.append(t) or real_check(t, *a))
    whole = write(db, records, push_id="whole", ws="ws_whole")
    assert decoded_alone == []  # one decode of the body, no record decoded on its own
    one_by_one = write(db, records, push_id="each", ws="ws_each", form="records")
    assert len(decoded_alone) == 2 * len(samples.FACTORIES)
    assert whole["accepted"] == one_by_one["accepted"] == dict.fromkeys(samples.FACTORIES, 2)
    tables = snapshot(db)
    for name, rows in tables.items():
        mine = {ws: sorted(r[1:] for r in rows if r[0] == ws) for ws in ("ws_whole", "ws_each")}
        assert mine["ws_whole"] == mine["ws_each"] and len(mine["ws_whole"]) == 2, name


def test_the_same_batch_twice_leaves_identical_tables(db: psycopg.Connection) -> None:
    records = samples.one_of_each(1)
    write(db, records, push_id="first")
    before = snapshot(db)
    write(db, records, push_id="second")
    assert snapshot(db) == before


def test_a_processed_push_retried_is_a_no_op(db: psycopg.Connection) -> None:
    write(db, {"sessions": [samples.session(1)]}, push_id="p1")
    again = write(db, {"sessions": [samples.session(1, model="changed")]}, push_id="p1")
    assert again == {"push_id": "p1", "duplicate": True}
    assert row(db, "SELECT model FROM sessions") == ("claude-sonnet-4",)
    assert row(db, "SELECT attempts FROM pushes") == (2,)


def test_a_written_push_was_processed_after_it_started(db: psycopg.Connection) -> None:
    """processed_at is the clock at the finish, not the transaction's start (started_at's now())."""
    write(db, samples.one_of_each(3), push_id="timed")
    started, processed, write_ms = row(db, "SELECT started_at, processed_at, write_ms FROM pushes")
    assert write_ms > 0 and processed > started


def test_duplicates_inside_one_batch_are_merged(db: psycopg.Connection) -> None:
    summary = write(
        db,
        {
            "prompts": [samples.prompt(1, prompt_hash=None), samples.prompt(1, prompt_hash="h1"), samples.prompt(2)],
            "improvement_signals": [
                samples.improvement_signal(1, consumed=True, consumed_at="2026-11-28T11:00:00Z", consumed_by_run="r1"),
                samples.improvement_signal(1, consumed=False),
            ],
        },
    )
    assert summary["accepted"] == {"prompts": 3, "improvement_signals": 2}
    assert count(db, "prompts") == 2
    assert row(db, "SELECT prompt_hash FROM prompts WHERE prompt_id = 'prompt-1'") == ("h1",)
    assert row(db, "SELECT consumed, consumed_by_run FROM improvement_signals") == (True, "r1")


def test_keys_are_scoped_by_workspace(db: psycopg.Connection) -> None:
    write(db, samples.one_of_each(1), ws="ws_a")
    write(db, samples.one_of_each(1), ws="ws_b")
    for table in samples.FACTORIES:
        assert count(db, table) == 2, table


def test_children_of_a_session_never_pushed_are_accepted(db: psycopg.Connection) -> None:
    write(
        db,
        {
            "prompts": [samples.prompt(1, session_id="ghost")],
            "grading_results": [samples.grading_result(1, session_id="ghost")],
        },
    )
    assert count(db, "sessions") == 0
    assert count(db, "prompts") == 1 and count(db, "grading_results") == 1


def test_session_repushed_later_with_fewer_fields_keeps_known_values(db: psycopg.Connection) -> None:
    write(db, {"sessions": [samples.session(1, model="m1", branch="main")]}, push_id="a")
    later = samples.session(1, normalized_at="2026-11-29T00:00:00Z", model="m2", branch=None, ended_at=None)
    write(db, {"sessions": [later]}, push_id="b")

    model, branch, ended_at, normalized_at = row(
        db, "SELECT model, branch, ended_at, normalized_at::text FROM sessions"
    )
    assert (model, branch) == ("m2", "main")
    assert ended_at is not None
    assert normalized_at.startswith("2026-11-29")


def test_session_older_version_never_overwrites_a_newer_value(db: psycopg.Connection) -> None:
    write(db, {"sessions": [samples.session(1, normalized_at="2026-11-29T00:00:00Z", model="new", agent_id=None)]}, "a")
    write(db, {"sessions": [samples.session(1, normalized_at="2026-11-27T00:00:00Z", model="old", agent_id="ag")]}, "b")
    assert row(db, "SELECT model, agent_id FROM sessions") == ("new", "ag")


def test_signal_is_never_unconsumed_and_keeps_its_earliest_consumption(db: psycopg.Connection) -> None:
    consumed = samples.improvement_signal(1, consumed=True, consumed_at="2026-11-28T12:00:00Z", consumed_by_run="run-2")
    write(db, {"improvement_signals": [consumed]}, "a")
    write(db, {"improvement_signals": [samples.improvement_signal(1, consumed=False)]}, "b")
    earlier = samples.improvement_signal(1, consumed=True, consumed_at="2026-11-28T11:00:00Z", consumed_by_run="run-1")
    write(db, {"improvement_signals": [earlier]}, "c")
    later = samples.improvement_signal(1, consumed=True, consumed_at="2026-11-28T13:00:00Z", consumed_by_run="run-3")
    write(db, {"improvement_signals": [later]}, "d")

    consumed_flag, at, run = row(db, "SELECT consumed, consumed_at::text, consumed_by_run FROM improvement_signals")
    assert consumed_flag is True
    assert at.startswith("2026-11-28 11:00:00")
    assert run == "run-1"


def test_immutable_records_keep_the_first_value_and_fill_nulls(db: psycopg.Connection) -> None:
    write(db, {"grading_results": [samples.grading_result(1, pass_rate=0.5, transcript_path=None)]}, "a")
    write(db, {"grading_results": [samples.grading_result(1, pass_rate=0.9, transcript_path="/t.jsonl")]}, "b")
    assert row(db, "SELECT pass_rate, transcript_path FROM grading_results") == (0.5, "/t.jsonl")


def test_execution_facts_from_two_machines_are_one_fact(db: psycopg.Connection) -> None:
    # execution_fact_id is a local row number: another machine numbers the same fact differently.
    write(db, {"execution_facts": [samples.execution_fact(5, execution_fact_id="17")]}, "a")
    write(db, {"execution_facts": [samples.execution_fact(5, execution_fact_id="903")]}, "b")
    write(db, {"execution_facts": [samples.execution_fact(5, prompt_id=None)]}, "c")  # no prompt: another key
    assert count(db, "execution_facts") == 2


def test_invalid_records_are_quarantined_beside_the_good_ones(db: psycopg.Connection) -> None:
    summary = write(db, {"prompts": [samples.prompt(1), {"prompt_id": "broken"}, samples.prompt(3)]})
    assert summary["accepted"] == {"prompts": 2} and summary["rejected"] == {"prompts": 1}
    record_type, index, error, raw = row(db, "SELECT record_type, record_index, error, raw FROM quarantine")
    assert (record_type, index) == ("prompts", 1)
    assert error.startswith("data.prompts[1]: Object missing required field")
    assert bytes(raw) == b'{"prompt_id": "broken"}'
    assert row(db, "SELECT rejected FROM pushes") == ({"prompts": 1},)


# -- order independence ------------------------------------------------------------------

TIMES = ["2026-11-28T10:00:00Z", "2026-11-28T11:00:00Z", "2026-11-28T12:00:00Z"]
maybe = st.one_of(st.none(), st.sampled_from(["a", "b"]))

session_versions = st.builds(
    lambda t, model, branch, agent: samples.session(1, normalized_at=t, model=model, branch=branch, agent_id=agent),
    st.sampled_from(TIMES),
    maybe,
    maybe,
    maybe,
)
signal_versions = st.builds(
    lambda consumed, at, run: samples.improvement_signal(1, consumed=consumed, consumed_at=at, consumed_by_run=run),
    st.booleans(),
    st.one_of(st.none(), st.sampled_from(TIMES)),
    st.one_of(st.none(), st.sampled_from(["run-a", "run-b"])),
)
# Immutable records: copies of one true record, some with optional values missing.
prompt_versions = st.builds(
    lambda keep_hash, keep_index: samples.prompt(
        1, prompt_hash="h" if keep_hash else None, prompt_index=3 if keep_index else None
    ),
    st.booleans(),
    st.booleans(),
)
versions = st.lists(
    st.one_of(
        session_versions.map(lambda r: ("sessions", r)),
        signal_versions.map(lambda r: ("improvement_signals", r)),
        prompt_versions.map(lambda r: ("prompts", r)),
    ),
    min_size=1,
    max_size=8,
)


def _apply(db: psycopg.Connection, batches: list[list[tuple[str, dict[str, Any]]]]) -> dict[str, Any]:
    db.execute("TRUNCATE sessions, prompts, improvement_signals, pushes, quarantine")
    for i, batch in enumerate(batches):
        records: dict[str, list[dict[str, Any]]] = {}
        for record_type, record in batch:
            records.setdefault(record_type, []).append(record)
        write(db, records, push_id=f"push-{i}")
    return snapshot(db)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=versions, sizes=st.lists(st.integers(1, 3), min_size=1, max_size=8), data=st.data())
def test_any_order_and_repetition_of_batches_leaves_identical_tables(
    db: psycopg.Connection, items: list[tuple[str, dict[str, Any]]], sizes: list[int], data: st.DataObject
) -> None:
    # Cut the versions into batches, then replay them shuffled, with some batches twice.
    batches, rest = [], list(items)
    for size in itertools.cycle(sizes):
        if not rest:
            break
        batches.append(rest[:size])
        rest = rest[size:]
    reference = _apply(db, batches)
    shuffled = data.draw(st.permutations(batches))
    repeated = shuffled + data.draw(st.lists(st.sampled_from(batches), max_size=3))
    assert _apply(db, repeated) == reference


def test_a_value_postgres_refuses_quarantines_that_record_and_the_rest_land(
    db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Validation bounds every value Postgres cannot store; should one slip through
    # (a worker on an older schema, say), the batch must still not be lost.
    real_check = jobs.check_record

    def slipped(record_type: str, raw: Any, path: str, *args: Any) -> Any:
        record, error = real_check(record_type, raw, path, *args)
        if record is not None and getattr(record, "prompt_id", None) == "prompt-2":
            record = msgspec.structs.replace(record, prompt_index=2**70)  # past bigint
        return record, error

    monkeypatch.setattr(jobs, "check_record", slipped)
    summary = write(
        db,
        {"prompts": [samples.prompt(1), samples.prompt(2), samples.prompt(3)], "sessions": [samples.session(1)]},
        form="records",  # record by record: where the slip is made
    )

    assert summary["accepted"] == {"prompts": 2, "sessions": 1}
    assert summary["rejected"] == {"prompts": 1}
    assert sorted(r[0] for r in db.execute("SELECT prompt_id FROM prompts").fetchall()) == ["prompt-1", "prompt-3"]
    [(index, error)] = db.execute("SELECT record_index, error FROM quarantine").fetchall()
    assert index == 1 and "refused by the database" in error and "out of range" in error


@pytest.mark.parametrize("form", ["as queued", "records"])
def test_a_time_outside_the_years_1_to_9999_in_utc_is_quarantined_and_the_rest_land(
    db: psycopg.Connection, form: Literal["as queued", "records"]
) -> None:
    # Valid RFC 3339, but year 10000 or year 0 in UTC: stored, no client could read the row back.
    late, early = "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"
    summary = write(
        db,
        {
            "grading_results": [samples.grading_result(1), samples.grading_result(2, graded_at=late)],
            "improvement_signals": [samples.improvement_signal(1, timestamp=early), samples.improvement_signal(2)],
            "sessions": [samples.session(1, started_at=late)],
        },
        form=form,
    )

    assert summary["accepted"] == {"grading_results": 1, "improvement_signals": 1}
    assert summary["rejected"] == {"grading_results": 1, "improvement_signals": 1, "sessions": 1}
    quarantined = db.execute("SELECT record_type, record_index, error FROM quarantine ORDER BY record_type").fetchall()
    assert [(t, i) for t, i, _ in quarantined] == [("grading_results", 1), ("improvement_signals", 0), ("sessions", 0)]
    assert all("violates check constraint" in error for _, _, error in quarantined)
    # Every stored time reads back into Python (a year-10000 row would raise DataError here).
    assert [r[0].year for r in db.execute("SELECT graded_at FROM grading_results").fetchall()] == [2026]
    assert [r[0].year for r in db.execute("SELECT timestamp FROM improvement_signals").fetchall()] == [2026]
    assert row(db, "SELECT status FROM pushes") == ("processed",)


def test_a_key_too_large_for_its_index_is_quarantined_and_the_rest_land(db: psycopg.Connection) -> None:
    # Ids have no length limit but every key is indexed, and an index entry holds at most ~2.7 kB.
    huge = base64.b64encode(os.urandom(8000)).decode()  # random: Postgres cannot compress it under the limit
    summary = write(db, {"sessions": [samples.session(1), samples.session(2, session_id=huge)]})

    assert summary["accepted"] == {"sessions": 1} and summary["rejected"] == {"sessions": 1}
    [(index, error)] = db.execute("SELECT record_index, error FROM quarantine").fetchall()
    assert index == 1 and "refused by the database" in error and "index row" in error
    assert row(db, "SELECT status FROM pushes") == ("processed",)


def test_the_careful_write_takes_rows_in_key_order_as_the_bulk_write_does(db: psycopg.Connection) -> None:
    # Two workers locking overlapping keys in different orders could deadlock. Each careful
    # statement runs in its own savepoint, whose transaction id orders the rows it wrote.
    records = [
        samples.grading_result(3),
        samples.grading_result(1, graded_at="9999-12-31T23:59:59-14:00"),  # refused: the careful path
        samples.grading_result(2),
    ]
    summary = write(db, {"grading_results": records}, form="records")

    assert summary["accepted"] == {"grading_results": 2}
    written = db.execute("SELECT grading_id FROM grading_results ORDER BY xmin::text::bigint").fetchall()
    assert [r[0] for r in written] == ["grade-2", "grade-3"]
