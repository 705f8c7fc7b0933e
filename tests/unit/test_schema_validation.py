"""Per-record validation of a push (SPEC 2.4) against the record Structs (SPEC 3), without servers.

`validate_push` is what the api runs on every body: a bad record is rejected
with its JSON path and kept verbatim, its neighbours are still accepted, and
only a malformed envelope (EnvelopeError, 422) or a body that is not JSON
(msgspec.DecodeError, 400) fails the whole push. Each test asserts what a
client would see: counts, error lines, rejected records.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from bench.samples import FACTORIES, one_of_each
from schema.envelope import EnvelopeError
from schema.records import INT8_MAX, RECORD_TYPES
from schema.validation import ValidatedPush, validate_push

TYPES = list(RECORD_TYPES)
CANONICAL_TYPES = ["sessions", "prompts", "skill_invocations", "execution_facts", "normalization_runs"]
RECORD_KINDS = {
    "sessions": "session",
    "prompts": "prompt",
    "skill_invocations": "skill_invocation",
    "execution_facts": "execution_fact",
    "normalization_runs": "normalization_run",
}

# The R fields of SPEC section 3, written out so the Structs are checked against the spec.
_BASE = [
    "record_kind",
    "schema_version",
    "normalizer_version",
    "normalized_at",
    "platform",
    "capture_mode",
    "raw_source_ref",
]
_SESSION = [*_BASE, "source_session_kind", "session_id"]
SPEC_REQUIRED = {
    "sessions": _SESSION,
    "prompts": [*_SESSION, "prompt_id", "occurred_at", "prompt_text", "prompt_kind", "is_actionable"],
    "skill_invocations": [
        *_SESSION,
        "skill_invocation_id",
        "occurred_at",
        "skill_name",
        "invocation_mode",
        "triggered",
        "confidence",
    ],
    "execution_facts": [
        *_SESSION,
        "execution_fact_id",
        "occurred_at",
        "tool_calls_json",
        "total_tool_calls",
        "assistant_turns",
        "errors_encountered",
    ],
    "normalization_runs": [
        *_BASE,
        "run_id",
        "run_at",
        "raw_records_seen",
        "canonical_records_written",
        "repair_applied",
    ],
    "evolution_evidence": ["evidence_id", "skill_name", "target", "stage"],
    "orchestrate_runs": [
        "run_id",
        "timestamp",
        "elapsed_ms",
        "dry_run",
        "approval_mode",
        "total_skills",
        "evaluated",
        "evolved",
        "deployed",
        "watched",
        "skipped",
        "skill_actions",
    ],
    "grading_results": ["grading_id", "session_id", "skill_name", "graded_at"],
    "improvement_signals": ["signal_id", "timestamp", "session_id", "query", "signal_type", "consumed"],
}

RAW_TOKEN = "__raw_json_token__"


# -- helpers ---------------------------------------------------------------------


def encode(obj: Any, raw_token: str | None = None) -> bytes:
    """JSON bytes of obj; the string RAW_TOKEN, if present, is replaced by a bare JSON token (e.g. 1e400)."""
    body = json.dumps(obj).encode()
    if raw_token is not None:
        body = body.replace(json.dumps(RAW_TOKEN).encode(), raw_token.encode())
    return body


def push(records: dict[str, list[Any]], section: str = "data", **envelope: Any) -> ValidatedPush:
    return validate_push(encode({**envelope, section: records}))


def push_one(record_type: str, raw_token: str | None = None, **over: Any) -> ValidatedPush:
    """A push of one sample record of record_type, with fields overridden."""
    return validate_push(encode({"data": {record_type: [FACTORIES[record_type](0, **over)]}}, raw_token))


def without(record: dict[str, Any], field: str) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != field}


def required_fields(record_type: str) -> list[str]:
    """Fields of the Struct without a default (msgspec.NODEFAULT), by their JSON name."""
    return [f.encode_name for f in msgspec.structs.fields(RECORD_TYPES[record_type]) if f.required]


def optional_fields(record_type: str) -> list[str]:
    return [f.encode_name for f in msgspec.structs.fields(RECORD_TYPES[record_type]) if not f.required]


def decoded(raws: list[msgspec.Raw]) -> list[Any]:
    return [json.loads(bytes(raw)) for raw in raws]


def assert_accepted(v: ValidatedPush, record_type: str) -> None:
    assert v.errors == []
    assert v.accepted_counts == {record_type: 1}


def assert_rejected_at(v: ValidatedPush, path: str) -> str:
    """The push's only record was rejected with an error at path; returns the error."""
    assert v.accepted_counts == {}
    assert len(v.rejected) == 1
    error = v.rejected[0].error
    assert error.startswith(f"{path}: "), error
    return error


# -- 1. the samples are valid ------------------------------------------------------


@pytest.mark.parametrize("record_type", TYPES)
def test_each_sample_is_accepted(record_type: str) -> None:
    v = push({record_type: [FACTORIES[record_type](0)]})
    assert_accepted(v, record_type)
    assert v.rejected_counts == {}


def test_one_of_each_is_accepted() -> None:
    v = push(one_of_each())
    assert v.accepted_counts == dict.fromkeys(TYPES, 1)
    assert v.rejected == []
    assert v.rejected_counts == {}
    assert v.errors == []


# -- 2. both envelopes, unknown keys, optional arrays ----------------------------------------


def test_documented_envelope() -> None:
    records = one_of_each()
    v = push(records, workspace_id="ws_1", cli_version="0.2.32", pushed_at="2026-11-28T10:00:00Z")
    assert v.accepted_counts == dict.fromkeys(TYPES, 1)
    assert v.errors == []
    assert v.envelope.workspace_id == "ws_1"
    assert v.envelope.cli_version == "0.2.32"
    assert v.envelope.pushed_at is not None
    assert v.envelope.pushed_at.isoformat() == "2026-11-28T10:00:00+00:00"
    assert {name: decoded(raws) for name, raws in v.records.items()} == records


def test_cli_envelope() -> None:
    v = push(
        one_of_each(),
        section="canonical",
        schema_version="2.0",
        client_version="0.2.32",
        push_id="0190b6d2-7a4e-7c3f-9d1a-2b3c4d5e6f70",
        normalizer_version="1.0.0",
        content_hashes={"prompt:abc": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
    )
    assert v.accepted_counts == dict.fromkeys(TYPES, 1)
    assert v.errors == []
    assert v.envelope.client_version == "0.2.32"
    assert v.envelope.push_id == "0190b6d2-7a4e-7c3f-9d1a-2b3c4d5e6f70"


def test_canonical_errors_name_the_canonical_section() -> None:
    v = push({"prompts": [FACTORIES["prompts"](0, prompt_kind="x")]}, section="canonical")
    assert v.errors == ["canonical.prompts[0].prompt_kind: Invalid enum value 'x'"]


def test_unknown_top_level_keys_are_ignored() -> None:
    v = push(one_of_each(), future_flag=True, stats={"nested": [1, {"deep": None}]}, content_hashes=[])
    assert v.accepted_counts == dict.fromkeys(TYPES, 1)


@pytest.mark.parametrize("record_type", TYPES)
def test_unknown_keys_inside_records_are_ignored(record_type: str) -> None:
    record = FACTORIES[record_type](0, added_in_cli_9={"any": ["shape", 1, None]}, another=-1)
    v = push({record_type: [record]})
    assert_accepted(v, record_type)
    assert decoded(v.records[record_type]) == [record]  # kept verbatim, unknown keys included


def test_unknown_keys_inside_nested_objects_are_ignored() -> None:
    ref = {"path": "/x.jsonl", "line": 0, "new_ref_field": "x"}
    actions = [{"skill": "s", "action": "evolve", "reason": "r", "new_action_field": [1]}]
    v = push(
        {
            "sessions": [FACTORIES["sessions"](0, raw_source_ref=ref)],
            "orchestrate_runs": [FACTORIES["orchestrate_runs"](0, skill_actions=actions)],
        }
    )
    assert v.accepted_counts == {"sessions": 1, "orchestrate_runs": 1}


@pytest.mark.parametrize("body", [{}, {"data": {}}, {"canonical": {}}, {"data": None, "canonical": None}])
def test_a_push_without_records_is_valid_and_accepts_nothing(body: dict[str, Any]) -> None:
    v = validate_push(encode(body))
    assert v.accepted_counts == {}
    assert v.rejected_counts == {}
    assert v.errors == []


@pytest.mark.parametrize("record_type", TYPES)
def test_every_array_is_optional_and_may_be_empty_or_null(record_type: str) -> None:
    others = {name: [] if i % 2 else None for i, name in enumerate(TYPES) if name != record_type}
    v = push({**others, record_type: [FACTORIES[record_type](0)]})
    assert_accepted(v, record_type)


# -- 3. required fields: the record is rejected, its neighbours land ------------------------


@pytest.mark.parametrize("record_type", TYPES)
def test_required_fields_match_the_spec(record_type: str) -> None:
    assert sorted(required_fields(record_type)) == sorted(SPEC_REQUIRED[record_type])


@pytest.mark.parametrize(
    ("record_type", "field"),
    [(t, f) for t in TYPES for f in required_fields(t)],
    ids=[f"{t}.{f}" for t in TYPES for f in required_fields(t)],
)
def test_missing_required_field_rejects_only_that_record(record_type: str, field: str) -> None:
    make = FACTORIES[record_type]
    bad = without(make(1), field)
    records = {**one_of_each(), record_type: [make(0), bad, make(2)]}
    v = push(records)

    assert v.errors == [f"data.{record_type}[1]: Object missing required field `{field}`"]
    assert v.accepted_counts == {**dict.fromkeys(TYPES, 1), record_type: 2}
    assert v.rejected_counts == {record_type: 1}
    assert decoded(v.records[record_type]) == [make(0), make(2)]
    [rejected] = v.rejected
    assert (rejected.record_type, rejected.index) == (record_type, 1)
    assert bytes(rejected.raw) == json.dumps(bad).encode()  # the bytes as sent
    assert json.loads(bytes(rejected.raw)) == bad


def test_missing_field_in_a_skill_action_names_the_action() -> None:
    actions = [{"skill": "a", "action": "evolve", "reason": "r"}, {"skill": "b", "action": "skip"}]
    v = push_one("orchestrate_runs", skill_actions=actions)
    assert v.errors == ["data.orchestrate_runs[0].skill_actions[1]: Object missing required field `reason`"]


# -- 4. wrong types at nested paths ------------------------------------------------------


def test_wrong_type_in_a_skill_action_gives_its_path() -> None:
    actions = [{"skill": f"s{i}", "action": "watch", "reason": "r"} for i in range(3)]
    actions[2]["action"] = 7
    v = push_one("orchestrate_runs", skill_actions=actions)
    assert_rejected_at(v, "data.orchestrate_runs[0].skill_actions[2].action")
    assert v.errors[0].startswith("data.orchestrate_runs[0].skill_actions[2].action: Expected `str`, got `int`")


@pytest.mark.parametrize("record_type", [*CANONICAL_TYPES, "evolution_evidence"])
def test_negative_raw_source_ref_line_gives_its_path(record_type: str) -> None:
    v = push_one(record_type, raw_source_ref={"path": "/x.jsonl", "line": -1})
    assert_rejected_at(v, f"data.{record_type}[0].raw_source_ref.line")


@pytest.mark.parametrize(
    ("record_type", "over", "path"),
    [
        ("prompts", {"is_actionable": "yes"}, "is_actionable"),
        ("sessions", {"started_at": "yesterday"}, "started_at"),
        ("sessions", {"raw_source_ref": "x.jsonl"}, "raw_source_ref"),
        ("execution_facts", {"tool_calls_json": {"Read": "3"}}, "tool_calls_json[...]"),
        ("execution_facts", {"tool_calls_json": {"Read": True}}, "tool_calls_json[...]"),
        ("execution_facts", {"bash_commands_redacted": ["ls", 1]}, "bash_commands_redacted[1]"),
        ("orchestrate_runs", {"skill_actions": {"skill": "a"}}, "skill_actions"),
        ("grading_results", {"expectations_json": [{"passed": True}]}, "expectations_json"),
        ("improvement_signals", {"consumed": 0}, "consumed"),
    ],
)
def test_wrong_type_gives_the_field_path(record_type: str, over: dict[str, Any], path: str) -> None:
    assert_rejected_at(push_one(record_type, **over), f"data.{record_type}[0].{path}")


# -- 5. constraints ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record_type", "field", "value"),
    [
        ("skill_invocations", "confidence", 1.5),
        ("skill_invocations", "confidence", -0.01),
        ("evolution_evidence", "confidence", 1.5),
        ("grading_results", "pass_rate", -0.1),
        ("grading_results", "pass_rate", 1.01),
        ("grading_results", "passed_count", -1),
        ("execution_facts", "total_tool_calls", -1),
        ("execution_facts", "input_tokens", -1),
        ("execution_facts", "duration_ms", -0.5),
        ("normalization_runs", "raw_records_seen", -1),
        ("prompts", "prompt_index", -1),
        ("orchestrate_runs", "skipped", -1),
        ("orchestrate_runs", "elapsed_ms", -1),
        ("execution_facts", "output_tokens", INT8_MAX + 1),
        ("orchestrate_runs", "total_skills", INT8_MAX + 1),
        ("grading_results", "total_count", 2**64),
        ("normalization_runs", "canonical_records_written", 10**30),
    ],
)
def test_out_of_range_number_is_rejected(record_type: str, field: str, value: float) -> None:
    assert_rejected_at(push_one(record_type, **{field: value}), f"data.{record_type}[0].{field}")


@pytest.mark.parametrize(
    ("record_type", "field", "value"),
    [
        ("skill_invocations", "confidence", 0),
        ("skill_invocations", "confidence", 1.0),
        ("grading_results", "pass_rate", 0.0),
        ("grading_results", "pass_rate", 1),
        ("execution_facts", "output_tokens", INT8_MAX),
        ("orchestrate_runs", "total_skills", 0),
        ("orchestrate_runs", "elapsed_ms", 2**64),  # a float field: large, but finite
        ("grading_results", "mean_score", -3.5),
    ],
)
def test_number_at_the_bounds_is_accepted(record_type: str, field: str, value: float) -> None:
    assert_accepted(push_one(record_type, **{field: value}), record_type)


@pytest.mark.parametrize("token", ["1e400", "-1e400"])
@pytest.mark.parametrize(
    ("record_type", "field"),
    [
        ("grading_results", "mean_score"),
        ("grading_results", "score_std_dev"),
        ("execution_facts", "duration_ms"),
        ("orchestrate_runs", "elapsed_ms"),
    ],
)
def test_infinite_float_is_rejected(record_type: str, field: str, token: str) -> None:
    v = push_one(record_type, raw_token=token, **{field: RAW_TOKEN})
    assert_rejected_at(v, f"data.{record_type}[0].{field}")


def test_infinite_tool_call_count_is_rejected() -> None:
    v = push_one("execution_facts", raw_token="1e400", tool_calls_json={"Read": RAW_TOKEN})
    assert_rejected_at(v, "data.execution_facts[0].tool_calls_json[...]")


@pytest.mark.parametrize(
    ("record_type", "field"),
    [
        ("prompts", "prompt_text"),
        ("prompts", "prompt_id"),
        ("sessions", "session_id"),
        ("sessions", "normalizer_version"),
        ("improvement_signals", "query"),
        ("improvement_signals", "signal_type"),
        ("improvement_signals", "session_id"),
        ("grading_results", "grading_id"),
        ("orchestrate_runs", "run_id"),
        ("evolution_evidence", "evidence_id"),
        # SPEC 3: "Strings named *_id are non-empty", the optional ones too (absent or null is fine).
        ("sessions", "parent_session_id"),
        ("sessions", "external_session_id"),
        ("sessions", "agent_id"),
        ("prompts", "parent_prompt_id"),
        ("prompts", "source_message_id"),
        ("skill_invocations", "matched_prompt_id"),
        ("skill_invocations", "tool_call_id"),
        ("execution_facts", "prompt_id"),
        ("evolution_evidence", "proposal_id"),
    ],
)
def test_empty_string_in_a_non_empty_field_is_rejected(record_type: str, field: str) -> None:
    assert_rejected_at(push_one(record_type, **{field: ""}), f"data.{record_type}[0].{field}")


def test_an_empty_raw_id_in_raw_source_ref_is_rejected() -> None:
    record = push_one("sessions", raw_source_ref={"path": "/x.jsonl", "raw_id": ""})
    assert_rejected_at(record, "data.sessions[0].raw_source_ref.raw_id")


@pytest.mark.parametrize(
    ("record_type", "field", "value"),
    [
        ("sessions", "platform", "vim"),
        ("prompts", "prompt_kind", "x"),
        ("sessions", "capture_mode", "cron"),
        ("execution_facts", "source_session_kind", "imported"),
        ("sessions", "completion_status", "done"),
        ("skill_invocations", "invocation_mode", "guessed"),
        ("orchestrate_runs", "approval_mode", "manual"),
        ("normalization_runs", "platform", "Claude_Code"),
    ],
)
def test_enum_value_outside_the_spec_is_rejected(record_type: str, field: str, value: str) -> None:
    error = assert_rejected_at(push_one(record_type, **{field: value}), f"data.{record_type}[0].{field}")
    assert error == f"data.{record_type}[0].{field}: Invalid enum value '{value}'"


@pytest.mark.parametrize("action", ["evolve", "watch", "skip", "package-search", "a-future-action"])
def test_any_skill_action_string_is_accepted(action: str) -> None:
    v = push_one("orchestrate_runs", skill_actions=[{"skill": "s", "action": action, "reason": "r"}])
    assert_accepted(v, "orchestrate_runs")


@pytest.mark.parametrize("signal_type", ["correction", "explicit_request", "unmatched", "low_grade", "new-kind"])
def test_any_non_empty_signal_type_is_accepted(signal_type: str) -> None:
    assert_accepted(push_one("improvement_signals", signal_type=signal_type), "improvement_signals")


@pytest.mark.parametrize(
    ("record_type", "kind"),
    [(t, k) for t in CANONICAL_TYPES for k in RECORD_KINDS.values() if k != RECORD_KINDS[t]],
)
def test_record_kind_must_match_its_array(record_type: str, kind: str) -> None:
    error = assert_rejected_at(push_one(record_type, record_kind=kind), f"data.{record_type}[0].record_kind")
    assert error == f"data.{record_type}[0].record_kind: Invalid enum value '{kind}'"


@pytest.mark.parametrize(
    ("record_type", "field"),
    [(t, f) for t in TYPES for f in optional_fields(t)],
    ids=[f"{t}.{f}" for t in TYPES for f in optional_fields(t)],
)
def test_optional_field_accepts_explicit_null(record_type: str, field: str) -> None:
    assert_accepted(push_one(record_type, **{field: None}), record_type)


def test_optional_nested_fields_accept_explicit_null() -> None:
    ref = {"path": None, "line": None, "event_type": None, "raw_id": None, "metadata": None}
    action = {"skill": "s", "action": "skip", "reason": "r", "deployed": None, "rolledBack": None}
    action |= {"alert": None, "elapsed_ms": None, "llm_calls": None}
    v = push(
        {
            "sessions": [FACTORIES["sessions"](0, raw_source_ref=ref)],
            "orchestrate_runs": [FACTORIES["orchestrate_runs"](0, skill_actions=[action])],
        }
    )
    assert v.accepted_counts == {"sessions": 1, "orchestrate_runs": 1}


# -- 6. NUL characters ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record_type", "over", "path"),
    [
        ("prompts", {"prompt_text": "before\x00after"}, "prompt_text"),
        ("sessions", {"branch": "\x00"}, "branch"),
        ("sessions", {"raw_source_ref": {"metadata": {"k": "v\x00"}}}, "raw_source_ref.metadata.k"),
        ("evolution_evidence", {"details": {"k": ["ok", "b\x00d"]}}, "details.k[1]"),
        (
            "orchestrate_runs",
            {"skill_actions": [{"skill": "s", "action": "a", "reason": "\x00"}]},
            "skill_actions[0].reason",
        ),
    ],
)
def test_nul_character_is_rejected_with_its_path(record_type: str, over: dict[str, Any], path: str) -> None:
    make = FACTORIES[record_type]
    v = push({record_type: [make(0), make(1, **over)]})
    assert v.accepted_counts == {record_type: 1}
    assert len(v.errors) == 1
    assert v.errors[0].startswith(f"data.{record_type}[1].{path}: ")
    assert "NUL" in v.errors[0]
    assert v.rejected[0].index == 1


def test_escaped_backslash_before_u0000_is_not_a_nul() -> None:
    text = "a literal \\u0000 in a regex"
    v = push_one("prompts", prompt_text=text)
    assert b"\\\\u0000" in bytes(v.records["prompts"][0])
    assert_accepted(v, "prompts")
    assert decoded(v.records["prompts"])[0]["prompt_text"] == text


def test_nul_in_an_unknown_field_is_ignored_like_the_field() -> None:
    assert_accepted(push_one("sessions", field_from_the_future="a\x00b"), "sessions")


# -- 7. envelope errors and bodies that are not JSON -------------------------------------------


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"data": []}, "data"),
        ({"data": "sessions"}, "data"),
        ({"canonical": [{}]}, "canonical"),
        ({"data": {"sessions": {}}}, "data.sessions"),
        ({"data": {"sessions": "[]"}}, "data.sessions"),
        ({"canonical": {"prompts": 1}}, "canonical.prompts"),
        ({"pushed_at": "yesterday"}, "pushed_at"),
        ({"workspace_id": 5}, "workspace_id"),
    ],
)
def test_malformed_envelope_names_its_path(body: dict[str, Any], path: str) -> None:
    with pytest.raises(EnvelopeError) as info:
        validate_push(encode(body))
    assert str(info.value).startswith(f"{path}: ")


@pytest.mark.parametrize("body", [b"[]", b"[{}]", b"null", b"1", b'"data"'])
def test_body_that_is_not_an_object_is_an_envelope_error(body: bytes) -> None:
    with pytest.raises(EnvelopeError):
        validate_push(body)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"{'data': {}}",
        b'{"a":"\xff"}',
        b'{"push_id":"\xff"}',
        b'{"data":{"sessions":[{"branch":"\xc3"}]}}',
        b'{"a":"\x00"}',
    ],
    ids=["empty", "truncated", "single-quotes", "bad-utf8-unknown", "bad-utf8-envelope", "bad-utf8-record", "raw-nul"],
)
def test_body_that_is_not_json_is_a_decode_error(body: bytes) -> None:
    with pytest.raises(msgspec.DecodeError) as info:
        validate_push(body)
    assert not isinstance(info.value, msgspec.ValidationError)


@pytest.mark.parametrize("push_id", ["", "x" * 201])
def test_push_id_length_is_bounded(push_id: str) -> None:
    with pytest.raises(EnvelopeError, match=r"^push_id: "):
        validate_push(encode({"push_id": push_id}))


def test_push_id_of_200_characters_is_accepted() -> None:
    assert validate_push(encode({"push_id": "x" * 200})).envelope.push_id == "x" * 200


# -- 8. errors, accepted and rejected counts ---------------------------------------------


def bad_sessions(n: int) -> list[dict[str, Any]]:
    return [FACTORIES["sessions"](i, platform="vim") for i in range(n)]


def test_errors_list_100_lines_then_a_summary() -> None:
    v = push({"sessions": bad_sessions(150)})
    assert len(v.rejected) == 150
    assert v.rejected_counts == {"sessions": 150}
    assert len(v.errors) == 101
    assert v.errors[:100] == [f"data.sessions[{i}].platform: Invalid enum value 'vim'" for i in range(100)]
    assert v.errors[100] == "... and 50 more rejected records"


def test_errors_of_exactly_100_records_have_no_summary() -> None:
    v = push({"sessions": bad_sessions(100)})
    assert len(v.errors) == 100
    assert v.errors[-1] == "data.sessions[99].platform: Invalid enum value 'vim'"


def test_counts_by_type() -> None:
    records = {
        "sessions": bad_sessions(2),
        "prompts": [FACTORIES["prompts"](0), FACTORIES["prompts"](1, prompt_kind="x")],
        "grading_results": [FACTORIES["grading_results"](0, pass_rate=2)],
        "improvement_signals": [],
        "evolution_evidence": [FACTORIES["evolution_evidence"](0)],
    }
    v = push(records)
    assert v.accepted_counts == {"prompts": 1, "evolution_evidence": 1}
    assert v.rejected_counts == {"sessions": 2, "prompts": 1, "grading_results": 1}
    assert len(v.errors) == 4


# -- 9. one push with both sections -------------------------------------------------------


def test_indexes_run_on_from_data_into_canonical() -> None:
    good, bad = FACTORIES["prompts"](0), FACTORIES["prompts"](1, prompt_text="")
    signal = FACTORIES["improvement_signals"](0, query="")
    body = {
        "data": {"prompts": [good, bad, good], "improvement_signals": [signal]},
        "canonical": {"prompts": [bad, good], "improvement_signals": [signal]},
    }
    v = validate_push(encode(body))

    assert v.accepted_counts == {"prompts": 3}
    assert decoded(v.records["prompts"]) == [good, good, good]
    assert [(r.record_type, r.index) for r in v.rejected] == [
        ("prompts", 1),
        ("improvement_signals", 0),
        ("prompts", 3),
        ("improvement_signals", 1),
    ]
    assert [e.split(":")[0] for e in v.errors] == [
        "data.prompts[1].prompt_text",
        "data.improvement_signals[0].query",
        "canonical.prompts[0].prompt_text",
        "canonical.improvement_signals[0].query",
    ]
    assert [json.loads(bytes(r.raw)) for r in v.rejected] == [bad, signal, bad, signal]


def _record_by_record(body: bytes) -> ValidatedPush:
    """What validation says when every record is decoded on its own (the path for pushes with bad records)."""
    from schema.envelope import ENVELOPE_DECODER
    from schema.record_checks import DEFAULT_LIMITS
    from schema.validation import _validate_each

    return _validate_each(ENVELOPE_DECODER.decode(body), DEFAULT_LIMITS, clean=True)


@pytest.mark.parametrize("section", ["data", "canonical"])
@pytest.mark.parametrize("copies", [1, 7])
def test_a_wholly_valid_push_is_accepted_exactly_as_record_by_record_checking_would(section: str, copies: int) -> None:
    arrays: dict[str, list[dict[str, Any]]] = {name: [] for name in FACTORIES}
    for n in range(copies):
        for name, records in one_of_each(n).items():
            arrays[name].extend(records)
    body = json.dumps({section: arrays}).encode()
    fast, slow = validate_push(body), _record_by_record(body)
    assert not fast.rejected and not slow.rejected
    assert {k: [bytes(r) for r in v] for k, v in fast.records.items()} == {
        k: [bytes(r) for r in v] for k, v in slow.records.items()
    }


def test_one_record_nested_too_deeply_in_free_form_json_is_rejected_alone_by_a_push_otherwise_valid() -> None:
    deep: Any = "bottom"
    for _ in range(40):
        deep = {"d": deep}
    records = one_of_each(1)
    records["prompts"][0]["raw_source_ref"] = {"path": "/x", "metadata": deep}
    pushed = validate_push(json.dumps({"data": records}).encode())
    assert [r.index for r in pushed.rejected] == [0]
    assert "MAX_NESTING_DEPTH" in pushed.rejected[0].error
    assert pushed.accepted_counts == {name: 1 for name in FACTORIES if name != "prompts"}


def test_a_queued_batch_decodes_without_walking_its_rejected_records_however_deep() -> None:
    # A record nested just under the decoder's limit is rejected by the api; the worker must
    # still decode the batch, even with less stack to spare than the api had.
    import sys
    from datetime import UTC, datetime

    from schema.batches import decode_batch, encode_batch, queued_batch

    records = one_of_each(1)
    records["prompts"][0]["raw_source_ref"] = {"path": "/x", "metadata": {"d": "MARK"}}
    body = json.dumps({"data": records}).replace('"MARK"', "[" * 900 + "]" * 900).encode()
    pushed = validate_push(body)
    assert [r.record_type for r in pushed.rejected] == ["prompts"]
    now = datetime.now(UTC)
    payload = encode_batch(queued_batch(pushed, workspace_id="w", push_id="p", received_at=now))
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)
    try:
        batch = decode_batch(payload)
    finally:
        sys.setrecursionlimit(limit)
    assert batch.rejected[0].raw == pushed.rejected[0].raw and b"[" * 900 in batch.rejected[0].raw
