"""Each record type's JSON array, sliced from a valid push body: no record becomes a Python object.

A body queued whole is one the api found wholly valid (schema/batches.py), so the
worker hands each type's array to Postgres as the client sent it, and Postgres
parses the records (workers/tables.py, json_upsert). msgspec only finds where
each array starts and ends.
"""

from __future__ import annotations

import msgspec

from schema.records import RECORD_TYPES

# Each array as one undecoded value (JSON null, or absent, reads as empty).
_Arrays = msgspec.defstruct("_Arrays", [(name, msgspec.Raw, msgspec.Raw()) for name in RECORD_TYPES])


class _Body(msgspec.Struct):
    data: _Arrays | None = None  # type: ignore[valid-type]
    canonical: _Arrays | None = None  # type: ignore[valid-type]


_BODY_DECODER = msgspec.json.Decoder(_Body)


def _items(raw: msgspec.Raw) -> bytes:
    """What an array holds between its brackets (b"" for an empty or null array)."""
    data = bytes(raw)
    return b"" if data in (b"", b"null") else data[1:-1].strip()


def body_arrays(body: bytes) -> dict[str, bytes]:
    """Each type's records of a valid body as one JSON array, data's before canonical's (types with none left out)."""
    envelope = _BODY_DECODER.decode(body)
    sections = [s for s in (envelope.data, envelope.canonical) if s is not None]
    arrays: dict[str, bytes] = {}
    for record_type in RECORD_TYPES:
        parts = [p for p in (_items(getattr(s, record_type)) for s in sections) if p]
        if parts:
            arrays[record_type] = b"[" + b",".join(parts) + b"]"
    return arrays
