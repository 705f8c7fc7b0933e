"""The push envelopes (SPEC 2.1): the Structs both are decoded by, and the record arrays they carry.

Two envelopes are accepted: the documented one (records under `data`) and the
one the real CLI sends (`PushPayloadV2`, records under `canonical`). Both are
decoded by one Struct; the record arrays are kept as `msgspec.Raw` so each
record is validated on its own (schema/validation.py).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from schema.records import RECORD_TYPES, Timestamp

MAX_PUSH_ID_LENGTH = 200


class RecordArrays(msgspec.Struct):
    """The nine arrays of a push, each optional, each record still undecoded."""

    sessions: list[msgspec.Raw] | None = None
    prompts: list[msgspec.Raw] | None = None
    skill_invocations: list[msgspec.Raw] | None = None
    execution_facts: list[msgspec.Raw] | None = None
    normalization_runs: list[msgspec.Raw] | None = None
    evolution_evidence: list[msgspec.Raw] | None = None
    orchestrate_runs: list[msgspec.Raw] | None = None
    grading_results: list[msgspec.Raw] | None = None
    improvement_signals: list[msgspec.Raw] | None = None


class PushEnvelope(msgspec.Struct):
    """Both envelopes in one: `data`/`cli_version` (documented) or `canonical`/`client_version` (CLI)."""

    workspace_id: str | None = None
    cli_version: str | None = None
    client_version: str | None = None
    schema_version: str | None = None
    normalizer_version: str | None = None
    pushed_at: Timestamp | None = None
    push_id: Annotated[str, Meta(min_length=1, max_length=MAX_PUSH_ID_LENGTH)] | None = None
    data: RecordArrays | None = None
    canonical: RecordArrays | None = None


ENVELOPE_DECODER = msgspec.json.Decoder(PushEnvelope)


# The same envelope with every record typed: one decode checks all of a push's
# records at C speed, without a Python call per record. Most pushes are wholly
# valid, and for those this one pass settles validation (validate_push); the
# worker decodes the records of such a push the same way (decode_valid_records).
ENVELOPE_FIELDS = [
    (f.name, f.type, f.default) for f in msgspec.structs.fields(PushEnvelope) if f.name not in ("data", "canonical")
]


# The envelope's strings: the push row stores push_id and the version, so a NUL in
# any of them would make the worker fail the whole batch after the api's 202.
ENVELOPE_STRINGS = tuple(name for name, _, _ in ENVELOPE_FIELDS if name != "pushed_at")


def _optional_list(item: Any) -> Any:
    """`list[item] | None`, for an item type known only at run time."""
    return list[item] | None


# RecordArrays with each record typed: the one derivation, used by this decoder and
# by the OpenAPI document (api/openapi.py), where it is the `RecordArrays` schema.
TypedRecordArrays: Any = msgspec.defstruct(
    "RecordArrays",
    [(f.name, _optional_list(RECORD_TYPES[f.name]), None) for f in msgspec.structs.fields(RecordArrays)],
    namespace={"__doc__": "The nine record arrays, each optional. A record that fails its schema is rejected alone."},
)


TYPED_DECODER = msgspec.json.Decoder(
    msgspec.defstruct(
        "TypedPushEnvelope",
        [*ENVELOPE_FIELDS, ("data", TypedRecordArrays | None, None), ("canonical", TypedRecordArrays | None, None)],
    )
)


class EnvelopeError(ValueError):
    """The envelope itself is malformed (422): the message names the JSON path."""


def error_with_path(prefix: str, exc: msgspec.ValidationError) -> str:
    """Turn msgspec's "msg - at `$.a[0].b`" into "prefix.a[0].b: msg"."""
    message = str(exc)
    msg, sep, where = message.rpartition(" - at `$")
    if not sep:
        return f"{prefix}: {message}"
    return f"{prefix}{where.rstrip('`')}: {msg}"


def decode_envelope(data: bytes) -> PushEnvelope:
    """The envelope, its records undecoded; a malformed one raises EnvelopeError naming its path (422)."""
    try:
        return ENVELOPE_DECODER.decode(data)
    except msgspec.ValidationError as exc:
        raise EnvelopeError(error_with_path("body", exc).removeprefix("body.")) from None


def split_records(body: bytes) -> dict[str, list[msgspec.Raw]]:
    """The records of a valid push body by type (data's before canonical's), each still undecoded."""
    return by_type(ENVELOPE_DECODER.decode(body))


def by_type(envelope: Any) -> dict[str, list[Any]]:
    """Each type's records of a decoded envelope (typed or raw), data's before canonical's."""
    records: dict[str, list[Any]] = {}
    for record_type in RECORD_TYPES:
        data = getattr(envelope.data, record_type, None) if envelope.data is not None else None
        canonical = getattr(envelope.canonical, record_type, None) if envelope.canonical is not None else None
        records[record_type] = (data or []) + canonical if canonical else (data or [])
    return records
