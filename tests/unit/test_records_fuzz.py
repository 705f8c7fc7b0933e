"""Bad records through the real app: each is rejected alone, kept with its reason, and its neighbours land.

Every push here is built from Python values, so what was sent is known exactly:
`push_records` checks that the answer's counts add up per type, that every
rejected record is in the queued job verbatim with its path, and that every
other record is in the job's `records`, in order.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schema.records import RECORD_TYPES
from tests.unit.fuzzing import FuzzTarget, push_records
from tests.unit.mutate import (
    MISSING,
    sample,
    schema_accepts,
    set_at,
    string_paths,
    type_mutations,
    unformatted_timestamps,
)

TYPES = list(RECORD_TYPES)
FUZZ = settings(max_examples=100, deadline=None)
FUZZ_LONG = settings(FUZZ, max_examples=1000)


def envelope_of(record_type: str, records: list[Any], push_id: str) -> dict[str, Any]:
    half = len(records) // 2
    return {
        "push_id": push_id,
        "data": {record_type: records[:half]},
        "canonical": {record_type: records[half:]},
    }


def rejected_positions(batch: Any, record_type: str) -> set[int]:
    return {r.index for r in batch.rejected if r.record_type == record_type}


def json_path(path: tuple[str | int, ...]) -> str:
    """A path as the api writes it in errors: `.raw_source_ref.line`, `.skill_actions[0].skill`."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


@pytest.mark.parametrize("record_type", TYPES)
def test_wrong_type_at_every_path_is_judged_as_the_openapi_schema_says(target: FuzzTarget, record_type: str) -> None:
    mutations = type_mutations(record_type)
    records = [sample(record_type), *(set_at(sample(record_type), path, value) for path, value in mutations)]
    _, batch = push_records(target, envelope_of(record_type, records, f"types-{record_type}"))

    rejected = rejected_positions(batch, record_type)
    assert 0 not in rejected, "the untouched sample is accepted"
    disagreements = [
        (".".join(map(str, path)), "deleted" if value is MISSING else value, i in rejected)
        for i, (path, value) in enumerate(mutations, start=1)
        if schema_accepts(record_type, records[i]) == (i in rejected)
        and not (isinstance(value, str) and path[0] in unformatted_timestamps(record_type))
    ]
    assert disagreements == [], "(path, value, rejected by the api) where the OpenAPI schema says otherwise"
    assert len(rejected) > len(mutations) // 2  # most wrong types are wrong

    # Each rejection names the path made wrong (for a deleted field: the field), after the record's own.
    half = len(records) // 2  # as envelope_of splits them
    errors = {r.index: r.error for r in batch.rejected}
    for i, (path, value) in enumerate(mutations, start=1):
        if i in errors:
            section, position = ("data", i) if i < half else ("canonical", i - half)
            if value is MISSING:
                assert f"`{path[-1]}`" in errors[i], errors[i]
                continue
            where = f"{section}.{record_type}[{position}]{json_path(path)}: "
            # msgspec writes a value inside a dict (tool_calls_json) as `[...]`, without its key.
            in_dict = f"{section}.{record_type}[{position}]{json_path(path[:-1])}[...]: "
            assert where in errors[i] or in_dict in errors[i], (where, errors[i])


@pytest.mark.parametrize("record_type", TYPES)
def test_empty_string_at_every_path(target: FuzzTarget, record_type: str) -> None:
    paths = string_paths(record_type)
    records = [set_at(sample(record_type), path, "") for path in paths]
    _, batch = push_records(target, envelope_of(record_type, records, f"empty-{record_type}"))

    rejected = rejected_positions(batch, record_type)
    for i, record in enumerate(records):
        where = ".".join(map(str, paths[i]))
        if paths[i][0] in unformatted_timestamps(record_type):
            assert i in rejected, f"{where} = '' is not a timestamp"
        else:
            assert schema_accepts(record_type, record) == (i not in rejected), f"{where} = ''"


@pytest.mark.parametrize("record_type", TYPES)
def test_enormous_string_at_every_path(target: FuzzTarget, record_type: str) -> None:
    paths = string_paths(record_type)
    size = target.settings.max_body_bytes // 3 // len(paths)  # "é" is two bytes: the push stays under the limit
    records = [set_at(sample(record_type), path, "é" * size) for path in paths]
    push_records(target, envelope_of(record_type, records, f"huge-{record_type}"))


@pytest.mark.parametrize("record_type", TYPES)
def test_string_over_max_string_chars_is_rejected_alone(target: FuzzTarget, record_type: str) -> None:
    path = string_paths(record_type)[0]
    too_long = set_at(sample(record_type), path, "s" * (target.settings.max_string_chars + 1))
    _, batch = push_records(target, envelope_of(record_type, [sample(record_type), too_long], f"long-{record_type}"))
    [rejected] = batch.rejected
    assert rejected.index == 1 and "MAX_STRING_CHARS" in rejected.error


@pytest.mark.slow
def test_one_string_just_under_the_body_limit(target: FuzzTarget) -> None:
    size = target.settings.max_body_bytes - 10_000
    record = sample("prompts") | {"prompt_text": "p" * size}
    push_records(target, envelope_of("prompts", [record], "just-under"))


# -- hypothesis: mixed batches --------------------------------------------------------------

MUTATIONS = {t: type_mutations(t) for t in TYPES}


@st.composite
def records(draw: st.DrawFn) -> tuple[str, str, Any]:
    """(section, record type, record): valid, or wrong at one or two paths."""
    record_type = draw(st.sampled_from(TYPES))
    record = sample(record_type, draw(st.integers(0, 10_000)))
    for _ in range(draw(st.integers(0, 2))):
        path, value = draw(st.sampled_from(MUTATIONS[record_type]))
        with contextlib.suppress(KeyError, IndexError, TypeError):  # an earlier mutation removed the parent
            record = set_at(record, path, value)
    return draw(st.sampled_from(["data", "canonical"])), record_type, record


@st.composite
def text_records(draw: st.DrawFn) -> tuple[str, str, Any, str]:
    """(section, record type, record, text) with arbitrary text (NUL, emoji, RTL marks...) at one string path."""
    record_type = draw(st.sampled_from(TYPES))
    path = draw(st.sampled_from(string_paths(record_type)))
    text = draw(st.text(max_size=50))
    return "data", record_type, set_at(sample(record_type), path, text), text


def build(items: list[tuple[str, str, Any]], envelope: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = dict(envelope)
    for section, record_type, record in items:
        if out.get(section) is None:
            out[section] = {}
        out[section].setdefault(record_type, []).append(record)
    return out


ENVELOPE_EXTRAS = st.sampled_from(
    [
        {},
        {"cli_version": "0.2.32", "pushed_at": "2026-11-28T10:00:00Z"},
        {"schema_version": "2.0", "client_version": "0.2.40", "content_hashes": {"prompt:p": "ab" * 32}},
        {"unknown": [1, {"nested": None}], "data": None},
    ]
)


@FUZZ
@given(items=st.lists(records(), max_size=30), extras=ENVELOPE_EXTRAS)
def test_mixed_batches_lose_nothing(
    target: FuzzTarget, items: list[tuple[str, str, Any]], extras: dict[str, Any]
) -> None:
    push_records(target, build(items, extras))


@FUZZ
@given(items=st.lists(text_records(), min_size=1, max_size=10))
def test_any_text_in_any_string_field_loses_nothing(target: FuzzTarget, items: list[tuple[str, str, Any, str]]) -> None:
    _, batch = push_records(target, build([item[:3] for item in items], {}))
    positions: dict[str, int] = {}
    for _, record_type, _, text in items:
        index = positions[record_type] = positions.get(record_type, -1) + 1
        if "\x00" in text:  # Postgres cannot store NUL: the record is rejected, not the push
            assert index in rejected_positions(batch, record_type)


@pytest.mark.slow
@FUZZ_LONG
@given(items=st.lists(records(), max_size=200), extras=ENVELOPE_EXTRAS)
def test_mixed_batches_lose_nothing_long(
    target: FuzzTarget, items: list[tuple[str, str, Any]], extras: dict[str, Any]
) -> None:
    push_records(target, build(items, extras))
