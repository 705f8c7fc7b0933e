"""One record's checks (SPEC 2.4): its schema, the limits on its strings and nesting, NUL and surrogates.

A record that fails is rejected alone with "json.path: reason"; its neighbours
still land. The limits are settings (RecordLimits).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from msgspec import inspect

from schema.envelope import error_with_path
from schema.jsonbytes import first_invalid_utf8, has_nul_escape
from schema.records import RECORD_DECODERS, RECORD_TYPES


@dataclass(frozen=True)
class RecordLimits:
    """Bounds on a push's records (settings MAX_STRING_CHARS, MAX_NESTING_DEPTH, MAX_RECORDS_PER_PUSH)."""

    max_string_chars: int = 1_000_000
    max_nesting_depth: int = 32
    max_records_per_push: int = 10_000


class TooManyRecords(ValueError):
    """More records than MAX_RECORDS_PER_PUSH (413): found before any record is validated."""

    def __init__(self, records: int, limit: int) -> None:
        super().__init__(f"{records} records is over the limit of {limit} per push")
        self.records = records
        self.limit = limit


DEFAULT_LIMITS = RecordLimits()


def check_count(records: int, limits: RecordLimits) -> None:
    if records > limits.max_records_per_push:
        raise TooManyRecords(records, limits.max_records_per_push)


NUL_MESSAGE = "string holds a NUL character (\\u0000), which cannot be stored"


def nul_path(value: Any, path: str) -> str | None:
    """The JSON path of the first string (or key) holding U+0000 (Postgres cannot store it), if any."""
    return _path_of_string(value, path, lambda text: "\x00" in text)


SURROGATE_MESSAGE = "string holds an unpaired UTF-16 surrogate ({}), which is not text and cannot be stored"


def _lone_surrogate(text: str) -> str | None:
    """The first unpaired surrogate of a decoded string, as its JSON escape (a pair decodes to one character)."""
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        return f"\\u{ord(text[exc.start]):04x}"
    return None


def _path_of_string(value: Any, path: str, bad: Callable[[str], bool]) -> str | None:
    """The JSON path of the first string or object key for which `bad(text)` holds, if any."""
    if isinstance(value, str):
        return path if bad(value) else None
    if isinstance(value, dict):
        for k, v in value.items():
            if bad(k):
                return path
            found = _path_of_string(v, f"{path}.{k}", bad)
            if found:
                return found
    if isinstance(value, list):
        for i, v in enumerate(value):
            found = _path_of_string(v, f"{path}[{i}]", bad)
            if found:
                return found
    return None


def surrogate_problem(value: Any, path: str) -> str | None:
    """'path: reason' for the first string holding an unpaired surrogate, if any."""
    escapes: list[str] = []

    def holds_one(text: str) -> bool:
        escape = _lone_surrogate(text)
        if escape is not None:
            escapes.append(escape)
        return escape is not None

    where = _path_of_string(value, path, holds_one)
    return None if where is None else f"{where}: {SURROGATE_MESSAGE.format(escapes[-1])}"


def _over_limits(value: Any, path: str, limits: RecordLimits, depth: int = 0) -> str | None:
    """The first place a decoded record breaks a limit, as "path: reason", if any."""
    if isinstance(value, str):
        if len(value) > limits.max_string_chars:
            return f"{path}: string of {len(value)} characters is over MAX_STRING_CHARS={limits.max_string_chars}"
        return None
    if isinstance(value, dict | list):
        if depth >= limits.max_nesting_depth:
            return f"{path}: nested deeper than MAX_NESTING_DEPTH={limits.max_nesting_depth}"
        if isinstance(value, dict):
            for k in value:
                if len(k) > limits.max_string_chars:
                    return f"{path}: key of {len(k)} characters is over MAX_STRING_CHARS={limits.max_string_chars}"
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, v in items:
            found = _over_limits(v, f"{path}.{k}" if isinstance(value, dict) else f"{path}[{k}]", limits, depth + 1)
            if found:
                return found
    return None


def _free_form_paths(struct: type[msgspec.Struct]) -> tuple[tuple[str, ...], ...]:
    """Attribute paths to the free-form JSON in a record type: the only places nesting is unbounded."""
    paths: list[tuple[str, ...]] = []

    def visit(info: inspect.Type, prefix: tuple[str, ...]) -> None:
        if isinstance(info, inspect.UnionType):
            for member in info.types:
                visit(member, prefix)
        elif isinstance(info, inspect.StructType):
            for f in info.fields:
                visit(f.type, (*prefix, f.name))
        elif isinstance(info, inspect.AnyType) or (
            isinstance(info, inspect.DictType | inspect.ListType)
            and isinstance(getattr(info, "value_type", getattr(info, "item_type", None)), inspect.AnyType)
        ):
            paths.append(prefix)

    visit(inspect.type_info(struct), ())
    return tuple(dict.fromkeys(paths))


FREE_FORM = {name: _free_form_paths(struct) for name, struct in RECORD_TYPES.items()}


def nesting_problem(record: Any, record_type: str, path: str, limits: RecordLimits) -> str | None:
    for attrs in FREE_FORM[record_type]:
        value = record
        for attr in attrs:
            value = getattr(value, attr, None)
            if value is None:
                break
        if isinstance(value, dict | list):
            found = _over_limits(value, f"{path}.{'.'.join(attrs)}", limits, depth=len(attrs))
            if found:
                return found
    return None


def check_record(
    record_type: str,
    raw: msgspec.Raw | bytes,
    path: str,
    limits: RecordLimits = DEFAULT_LIMITS,
    clean_bytes: bool = False,
) -> tuple[Any, str | None]:
    """Decode one record; return (record, None) or (None, "path: reason").

    `clean_bytes` says the caller already knows the bytes hold no NUL escape and
    nothing longer than MAX_STRING_CHARS (a single test of the whole body).
    """
    try:
        record = RECORD_DECODERS[record_type].decode(raw)
    except msgspec.ValidationError as exc:
        return None, error_with_path(path, exc)
    except msgspec.DecodeError as exc:  # an unpaired surrogate, or bytes that did not come from a valid body
        return None, _undecodable(raw, path, exc)
    except RecursionError:
        return None, f"{path}: nested deeper than MAX_NESTING_DEPTH={limits.max_nesting_depth}"
    if not clean_bytes:
        data = bytes(raw)
        # JSON carries U+0000 only as an escape, and a long string needs long bytes:
        # the precise walk of the decoded record runs only when a byte test says so
        # (unknown fields are ignored, so the walk looks at what is stored).
        if has_nul_escape(data) or len(data) > limits.max_string_chars:
            try:
                stored = msgspec.to_builtins(record)
            except RecursionError:
                return None, f"{path}: nested deeper than MAX_NESTING_DEPTH={limits.max_nesting_depth}"
            over = _over_limits(stored, path, limits)  # first: it bounds the depth the NUL walk meets
            if over:
                return None, over
            bad = nul_path(stored, path)
            if bad:
                return None, f"{bad}: {NUL_MESSAGE}"
            return record, None
    over = nesting_problem(record, record_type, path, limits)
    return (None, over) if over else (record, None)


def _undecodable(raw: msgspec.Raw | bytes, path: str, exc: msgspec.DecodeError) -> str:
    """Why msgspec cannot read a record: the path of an unpaired surrogate if that is it, else its message."""
    try:
        problem = surrogate_problem(json.loads(bytes(raw)), path)
    except (ValueError, RecursionError):
        problem = None
    return problem or f"{path}: {exc}"


def check_alone(
    record_type: str, raw: msgspec.Raw | bytes, path: str, limits: RecordLimits = DEFAULT_LIMITS
) -> tuple[Any, msgspec.Raw | bytes, str | None]:
    """check_record for a record's bytes as sent, found on their own (the scanner): (record, bytes to keep, error).

    Reads around an unpaired surrogate as validate_push does for a whole body: in a
    field nobody reads it is dropped with that field (the record is kept re-encoded),
    elsewhere the record is rejected with the string's path. Invalid UTF-8 rejects
    the record (msgspec would raise UnicodeDecodeError for it).
    """
    data = bytes(raw)
    bad_byte = first_invalid_utf8(data)
    if bad_byte is not None:
        return None, raw, f"{path}: JSON is malformed: invalid UTF-8 (byte {bad_byte} of the record)"
    record, error = check_record(record_type, raw, path, limits)
    if error is None or (b"\\ud" not in data and b"\\uD" not in data):
        return record, raw, error
    try:
        tree = json.loads(data.decode(), parse_constant=not_json)
    except (ValueError, RecursionError):
        return None, raw, error
    fixed = record_bytes(tree, RECORD_TYPES[record_type].__struct_fields__)
    record, second = check_record(record_type, fixed, path, limits)
    return (record, fixed, None) if second is None else (None, raw, second)


def record_bytes(record: Any, known: tuple[str, ...]) -> bytes:
    """A record as JSON to validate, from Python's reading of it.

    With no unpaired surrogate, as it is; with one only in fields nobody reads, without
    those fields (they are ignored anyway); with one in a field that is read, whole and
    with the escape (ASCII JSON), for check_record to reject and quarantine.
    """
    if surrogate_problem(record, "") is None:
        return msgspec.json.encode(record)
    read = {k: v for k, v in record.items() if k in known} if isinstance(record, dict) else record
    if surrogate_problem(read, "") is None:
        return msgspec.json.encode(read)
    return json.dumps(record).encode()


def not_json(literal: str) -> None:
    raise ValueError(f"{literal} is not JSON")


def oversized_error(path: str, size: int, limit: int) -> str:
    """Why a streamed push's record over MAX_RECORD_BYTES is rejected: it is quarantined verbatim, unread."""
    return f"{path}: record of {size} bytes is over MAX_RECORD_BYTES={limit}; kept unread in quarantine"
