"""Reading a body that holds an unpaired UTF-16 surrogate escape, which msgspec refuses anywhere.

JSON allows "\\ud83d" alone, and JavaScript makes one by cutting a string inside
an emoji. Such a body is read by Python's json instead, and only the record that
holds the surrogate (in a field that is read) is rejected.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from schema.envelope import ENVELOPE_FIELDS, EnvelopeError, PushEnvelope, decode_envelope
from schema.record_checks import RecordLimits, check_count, not_json, record_bytes, surrogate_problem
from schema.records import RECORD_TYPES


def read_around_surrogates(body: bytes) -> Any:
    """The body read by Python's json, which takes unpaired surrogates; None if it is not JSON even so.

    Raises RecursionError when the body is nested deeper than json can follow.
    """
    try:
        # From str, not bytes: json would take a BOM or UTF-16 that msgspec refuses (the body is UTF-8).
        return json.loads(body.decode(), parse_constant=not_json)
    except ValueError:
        return None


def envelope_around_surrogates(tree: Any, limits: RecordLimits) -> PushEnvelope:
    """The envelope of a body that holds an unpaired surrogate escape, each record re-encoded alone.

    The envelope is checked as usual (its shape through msgspec, with each record
    as a placeholder) and the records counted before any is looked at; a record
    without a surrogate (in a field it is read for) is re-encoded as UTF-8 JSON,
    one with a surrogate keeps its escape (ASCII JSON), which check_record then
    rejects with the string's path.
    """
    if not isinstance(tree, dict):  # msgspec's own 422 for it
        decode_envelope(msgspec.json.encode(stand_in(tree)))
    sections = [tree.get(section) for section in ("data", "canonical")]
    # The known types only, as the usual path counts them (a newer CLI's types are ignored).
    counted = (v for a in sections if isinstance(a, dict) for t, v in a.items() if t in RECORD_TYPES)
    check_count(sum(len(v) for v in counted if isinstance(v, list)), limits)
    head = {name: tree[name] for name, _, _ in ENVELOPE_FIELDS if name in tree}
    problem = surrogate_problem(head, "")
    if problem:
        raise EnvelopeError(problem.removeprefix("."))
    records: dict[str, dict[str, list[bytes]]] = {}
    skeleton: dict[str, Any] = dict(head)
    for section in ("data", "canonical"):
        arrays = tree.get(section)
        if not isinstance(arrays, dict):
            if section in tree:
                skeleton[section] = stand_in(arrays)  # the usual 422, from msgspec
            continue
        skeleton[section] = {}
        for record_type in RECORD_TYPES:
            if record_type not in arrays:
                continue
            items = arrays[record_type]
            if not isinstance(items, list):
                skeleton[section][record_type] = stand_in(items)
                continue
            skeleton[section][record_type] = [{}] * len(items)
            known = RECORD_TYPES[record_type].__struct_fields__
            records.setdefault(section, {})[record_type] = [record_bytes(r, known) for r in items]
    envelope = decode_envelope(msgspec.json.encode(skeleton))
    for section, by_type in records.items():
        arrays = getattr(envelope, section)
        for record_type, raws in by_type.items():
            setattr(arrays, record_type, [msgspec.Raw(raw) for raw in raws])
    return envelope


def stand_in(value: Any) -> Any:
    """A misplaced value, about to be refused for its type: an empty one of that type (no surrogate, no depth)."""
    return type(value)() if isinstance(value, str | list | dict) else value
