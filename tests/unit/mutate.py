"""Records made wrong one field at a time, and an oracle for them that is not msgspec.

Paths are the keys and list positions of a valid sample (bench/samples.py),
plus every field of the record's Struct the sample leaves out. The oracle is
the record's JSON Schema from the OpenAPI document, checked with `jsonschema`.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from typing import Any

import jsonschema
import msgspec
import msgspec.inspect

from api import openapi
from bench.samples import FACTORIES
from schema.records import RECORD_TYPES

Path = tuple[str | int, ...]
MISSING = object()  # "delete this key"

# One value of each JSON type; a mutation puts one of another type than the original.
JSON_VALUES: dict[str, Any] = {
    "null": None,
    "boolean": True,
    "integer": 7,
    "number": 2.5,
    "string": "x",
    "array": [],
    "object": {},
}


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def paths(value: Any, prefix: Path = ()) -> Iterator[tuple[Path, Any]]:
    """Every (path, value) below `value`, containers included."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield (*prefix, key), child
        yield from paths(child, (*prefix, key))


def set_at(record: dict[str, Any], path: Path, value: Any) -> dict[str, Any]:
    """A copy of `record` with `value` at `path` (or the key deleted, for MISSING).

    Raises (KeyError, IndexError, TypeError) when the path no longer fits the
    record: a list position where an earlier mutation left an object would
    otherwise make a Python-only integer key, which JSON turns into a string.
    """
    out = copy.deepcopy(record)
    parent: Any = out
    for i, key in enumerate(path):
        if isinstance(key, int) and not isinstance(parent, list):
            raise TypeError(f"position {key} in a {type(parent).__name__}")
        if i < len(path) - 1:
            parent = parent[key]
    if value is MISSING:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return out


def sample(record_type: str, n: int = 1) -> dict[str, Any]:
    return FACTORIES[record_type](n)  # type: ignore[no-any-return]


def all_paths(record_type: str) -> list[tuple[Path, Any]]:
    """The sample's paths, and the Struct's fields the sample leaves out (value MISSING)."""
    record = sample(record_type)
    absent = [((f.name,), MISSING) for f in msgspec.structs.fields(RECORD_TYPES[record_type]) if f.name not in record]
    return [*paths(record), *absent]


def type_mutations(record_type: str) -> list[tuple[Path, Any]]:
    """Every path given a value of every other JSON type, and every present key deleted."""
    out: list[tuple[Path, Any]] = []
    for path, original in all_paths(record_type):
        kind = None if original is MISSING else json_type(original)
        out.extend((path, value) for t, value in JSON_VALUES.items() if t != kind)
        if original is not MISSING and isinstance(path[-1], str):
            out.append((path, MISSING))
    return out


def string_paths(record_type: str) -> list[Path]:
    return [path for path, value in paths(sample(record_type)) if isinstance(value, str)]


@functools.cache
def _components() -> dict[str, Any]:
    return openapi.build()["components"]  # type: ignore[no-any-return]


@functools.cache
def _validator(record_type: str) -> jsonschema.Draft202012Validator:
    name = RECORD_TYPES[record_type].__name__
    schema = {"$ref": f"#/components/schemas/{name}", "components": _components()}
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


@functools.cache
def unformatted_timestamps(record_type: str) -> frozenset[str]:
    """Timestamp fields whose schema is a bare "string": there the schema accepts any string, the api RFC 3339 only.

    (msgspec gives a datetime that may be naive no "date-time" format.) Empty once
    the Structs' timestamps carry the format.
    """
    struct = RECORD_TYPES[record_type]
    properties = _components()["schemas"][struct.__name__]["properties"]
    out = set()
    for f in msgspec.inspect.type_info(struct).fields:  # type: ignore[attr-defined]
        members = f.type.types if isinstance(f.type, msgspec.inspect.UnionType) else (f.type,)
        if any(isinstance(m, msgspec.inspect.DateTimeType) for m in members) and "format" not in repr(
            properties[f.name]
        ):
            out.add(f.name)
    return frozenset(out)


def schema_accepts(record_type: str, record: Any) -> bool:
    """What the OpenAPI document says of this record."""
    return _validator(record_type).is_valid(record)
