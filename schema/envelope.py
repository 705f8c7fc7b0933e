"""The push envelopes (SPEC 2.1) and the per-record validation of a batch (SPEC 2.4).

Two envelopes are accepted: the documented one (records under `data`) and the
one the real CLI sends (`PushPayloadV2`, records under `canonical`). Both are
decoded by one Struct; the record arrays are kept as `msgspec.Raw` so each
record is validated on its own: a bad record is rejected with its JSON path,
and its neighbours still land.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from msgspec import Meta, inspect

from schema.jsonbytes import first_invalid_utf8, has_nul_escape
from schema.records import OUT_OF_RANGE_MESSAGE, RECORD_DECODERS, RECORD_TYPES, Timestamp, in_utc_range
from schema.scan import FIELD_CAP_BYTES, PushScanner, ScanError

MAX_ERRORS_LISTED = 100  # a batch of 10,000 bad records gets a readable answer
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
_ENVELOPE_FIELDS = [
    (f.name, f.type, f.default) for f in msgspec.structs.fields(PushEnvelope) if f.name not in ("data", "canonical")
]
# The envelope's strings: the push row stores push_id and the version, so a NUL in
# any of them would make the worker fail the whole batch after the api's 202.
_ENVELOPE_STRINGS = tuple(name for name, _, _ in _ENVELOPE_FIELDS if name != "pushed_at")


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
_TYPED_DECODER = msgspec.json.Decoder(
    msgspec.defstruct(
        "TypedPushEnvelope",
        [*_ENVELOPE_FIELDS, ("data", TypedRecordArrays | None, None), ("canonical", TypedRecordArrays | None, None)],
    )
)


class RejectedRecord(msgspec.Struct):
    """A record that failed validation, kept verbatim so it can be replayed after a fix."""

    record_type: str
    index: int  # position among all of the push's records of this type
    error: str
    # Bytes, not msgspec.Raw: in the queued batch they travel as an opaque string, so
    # decoding the batch never walks a rejected record's nesting, however deep the api
    # found it (near the decoder's recursion limit the worker could fail where the api did not).
    raw: bytes


class ValidatedPush:
    """What validation made of a push: good records by type, and the rejected ones.

    When every record is good (most pushes), `body` is the body as sent: the api
    queues it whole, and `records` is split out of it only if someone asks.
    """

    def __init__(
        self,
        envelope: PushEnvelope,
        records: dict[str, list[msgspec.Raw]] | None,
        rejected: list[RejectedRecord],
        counts: dict[str, int],
        body: bytes | None = None,
    ) -> None:
        self.envelope = envelope
        self._records = records
        self.rejected = rejected
        self.accepted_counts = counts  # records accepted per type, listing only types with at least one
        self.body = body

    @property
    def records(self) -> dict[str, list[msgspec.Raw]]:
        """The accepted records by type, each still the bytes the client sent."""
        if self._records is None:
            assert self.body is not None
            self._records = split_records(self.body)
        return self._records

    @property
    def rejected_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.rejected:
            counts[r.record_type] = counts.get(r.record_type, 0) + 1
        return counts

    @property
    def errors(self) -> list[str]:
        """One line per rejected record (the first MAX_ERRORS_LISTED), path first."""
        lines = [r.error for r in self.rejected[:MAX_ERRORS_LISTED]]
        if len(self.rejected) > MAX_ERRORS_LISTED:
            lines.append(f"... and {len(self.rejected) - MAX_ERRORS_LISTED} more rejected records")
        return lines


class EnvelopeError(ValueError):
    """The envelope itself is malformed (422): the message names the JSON path."""


def error_with_path(prefix: str, exc: msgspec.ValidationError) -> str:
    """Turn msgspec's "msg - at `$.a[0].b`" into "prefix.a[0].b: msg"."""
    message = str(exc)
    msg, sep, where = message.rpartition(" - at `$")
    if not sep:
        return f"{prefix}: {message}"
    return f"{prefix}{where.rstrip('`')}: {msg}"


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


def _surrogate_problem(value: Any, path: str) -> str | None:
    """'path: reason' for the first string holding an unpaired surrogate, if any."""
    escapes: list[str] = []

    def holds_one(text: str) -> bool:
        escape = _lone_surrogate(text)
        if escape is not None:
            escapes.append(escape)
        return escape is not None

    where = _path_of_string(value, path, holds_one)
    return None if where is None else f"{where}: {SURROGATE_MESSAGE.format(escapes[-1])}"


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


def _nesting_problem(record: Any, record_type: str, path: str, limits: RecordLimits) -> str | None:
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
    over = _nesting_problem(record, record_type, path, limits)
    return (None, over) if over else (record, None)


def _undecodable(raw: msgspec.Raw | bytes, path: str, exc: msgspec.DecodeError) -> str:
    """Why msgspec cannot read a record: the path of an unpaired surrogate if that is it, else its message."""
    try:
        problem = _surrogate_problem(json.loads(bytes(raw)), path)
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
        tree = json.loads(data.decode(), parse_constant=_not_json)
    except (ValueError, RecursionError):
        return None, raw, error
    fixed = _record_bytes(tree, RECORD_TYPES[record_type].__struct_fields__)
    record, second = check_record(record_type, fixed, path, limits)
    return (record, fixed, None) if second is None else (None, raw, second)


def oversized_error(path: str, size: int, limit: int) -> str:
    """Why a streamed push's record over MAX_RECORD_BYTES is rejected: it is quarantined verbatim, unread."""
    return f"{path}: record of {size} bytes is over MAX_RECORD_BYTES={limit}; kept unread in quarantine"


def validate_push(body: bytes, limits: RecordLimits = DEFAULT_LIMITS) -> ValidatedPush:
    """Decode a push body and validate every record, each on its own account.

    A body whose records are all good is settled by one typed decode; otherwise
    each record is decoded alone, so the bad ones are named by their JSON path
    and their neighbours still land. Raises msgspec.DecodeError when the body is not JSON (400) and EnvelopeError
    when the envelope is malformed (422). Record errors never raise: they are
    returned in `rejected`.
    """
    # JSON is UTF-8. msgspec skips unknown strings unchecked and raises a bare
    # UnicodeDecodeError (a 500) for known ones, so check the whole body first.
    bad_byte = first_invalid_utf8(body)
    if bad_byte is not None:
        raise msgspec.DecodeError(f"JSON is malformed: invalid UTF-8 (byte {bad_byte})")
    # One byte test of the whole body spares each record its NUL and length checks (see check_record).
    clean = not has_nul_escape(body) and len(body) <= limits.max_string_chars
    typed = _decode_if_all_valid(body, limits) if clean else None
    if typed is not None:
        envelope = PushEnvelope(**{name: getattr(typed, name) for name, _, _ in _ENVELOPE_FIELDS})
        _check_pushed_at(envelope)
        counts = {name: len(records) for name, records in _by_type(typed).items() if records}
        _check_count(sum(counts.values()), limits)
        return ValidatedPush(envelope=envelope, records=None, rejected=[], counts=counts, body=body)
    # Something is wrong, with the envelope or with some records: find what, and where.
    try:
        envelope = _decode_envelope(body)
    except RecursionError:
        # Deeper than the decoder can follow (~1,000 levels): the scanner finds where each
        # record ends without recursing, and the record too deep to read is rejected alone.
        return _validate_scanned(body, limits)
    except msgspec.DecodeError:
        # msgspec refuses an unpaired UTF-16 surrogate escape ("\\ud83d") anywhere, even in a
        # field it would ignore; JSON allows it, and JavaScript makes one by cutting a string
        # inside an emoji. Only the record holding it is rejected: read the body the slow way.
        if b"\\ud" not in body and b"\\uD" not in body:
            raise
        try:
            tree = _read_around_surrogates(body)
            if tree is None:  # not JSON for Python either: msgspec's own message
                raise
            envelope = _envelope_around_surrogates(tree, limits)
        except RecursionError:
            return _validate_scanned(body, limits)
    _check_pushed_at(envelope)
    # Before any record is looked at: a few kilobytes of gzipped `{},` can hold millions.
    _check_count(sum(len(raws) for raws in _by_type(envelope).values()), limits)
    if not clean:  # a clean body has no NUL anywhere, the envelope's strings included
        _check_envelope_strings(envelope)
    return _validate_each(envelope, limits, clean)


def _check_envelope_strings(envelope: PushEnvelope) -> None:
    for name in _ENVELOPE_STRINGS:
        value = getattr(envelope, name)
        if value is not None and "\x00" in value:
            raise EnvelopeError(f"{name}: {NUL_MESSAGE}")


def envelope_of_scan(scanner: PushScanner) -> PushEnvelope:
    """The envelope a scanner saw, its record arrays empty; EnvelopeError (422) as the usual decode says.

    The scanner rebuilds the envelope without its records (a misplaced value as an
    empty one of its kind), so this decode never meets a record's size or depth.
    """
    if scanner.overlong_fields:
        name = scanner.overlong_fields[0]
        raise EnvelopeError(f"{name}: longer than {FIELD_CAP_BYTES} bytes")
    skeleton = scanner.skeleton()
    try:
        envelope = _decode_envelope(skeleton)
    except msgspec.DecodeError as exc:
        # An unpaired surrogate in one of the envelope's strings: name the field, as the usual path does.
        problem = None
        if b"\\ud" in skeleton or b"\\uD" in skeleton:
            tree = _read_around_surrogates(skeleton)
            problem = _surrogate_problem(tree, "") if tree is not None else None
        raise EnvelopeError(problem.removeprefix(".") if problem else str(exc)) from None
    _check_pushed_at(envelope)
    _check_envelope_strings(envelope)
    return envelope


def _validate_scanned(body: bytes, limits: RecordLimits) -> ValidatedPush:
    """validate_push for a body too deep for the decoder: records found by the scanner, each checked alone."""
    scanner = PushScanner()
    try:
        found = scanner.scan(body)
    except ScanError as exc:
        raise msgspec.DecodeError(str(exc)) from None
    envelope = envelope_of_scan(scanner)
    _check_count(sum(scanner.counts.values()), limits)
    view = memoryview(body)
    spans: dict[tuple[str, str], list[msgspec.Raw]] = {}
    for r in found:
        spans.setdefault((r.section, r.record_type), []).append(msgspec.Raw(view[r.start : r.end]))
    for (section, record_type), raws in spans.items():
        arrays = getattr(envelope, section)
        if arrays is not None:  # None: the section was null, and held no records
            setattr(arrays, record_type, raws)
    return _validate_each(envelope, limits, clean=False, read_around_surrogates=True)


def _read_around_surrogates(body: bytes) -> Any:
    """The body read by Python's json, which takes unpaired surrogates; None if it is not JSON even so.

    Raises RecursionError when the body is nested deeper than json can follow.
    """
    try:
        # From str, not bytes: json would take a BOM or UTF-16 that msgspec refuses (the body is UTF-8).
        return json.loads(body.decode(), parse_constant=_not_json)
    except ValueError:
        return None


def _envelope_around_surrogates(tree: Any, limits: RecordLimits) -> PushEnvelope:
    """The envelope of a body that holds an unpaired surrogate escape, each record re-encoded alone.

    The envelope is checked as usual (its shape through msgspec, with each record
    as a placeholder) and the records counted before any is looked at; a record
    without a surrogate (in a field it is read for) is re-encoded as UTF-8 JSON,
    one with a surrogate keeps its escape (ASCII JSON), which check_record then
    rejects with the string's path.
    """
    if not isinstance(tree, dict):  # msgspec's own 422 for it
        _decode_envelope(msgspec.json.encode(_stand_in(tree)))
    sections = [tree.get(section) for section in ("data", "canonical")]
    # The known types only, as the usual path counts them (a newer CLI's types are ignored).
    counted = (v for a in sections if isinstance(a, dict) for t, v in a.items() if t in RECORD_TYPES)
    _check_count(sum(len(v) for v in counted if isinstance(v, list)), limits)
    head = {name: tree[name] for name, _, _ in _ENVELOPE_FIELDS if name in tree}
    problem = _surrogate_problem(head, "")
    if problem:
        raise EnvelopeError(problem.removeprefix("."))
    records: dict[str, dict[str, list[bytes]]] = {}
    skeleton: dict[str, Any] = dict(head)
    for section in ("data", "canonical"):
        arrays = tree.get(section)
        if not isinstance(arrays, dict):
            if section in tree:
                skeleton[section] = _stand_in(arrays)  # the usual 422, from msgspec
            continue
        skeleton[section] = {}
        for record_type in RECORD_TYPES:
            if record_type not in arrays:
                continue
            items = arrays[record_type]
            if not isinstance(items, list):
                skeleton[section][record_type] = _stand_in(items)
                continue
            skeleton[section][record_type] = [{}] * len(items)
            known = RECORD_TYPES[record_type].__struct_fields__
            records.setdefault(section, {})[record_type] = [_record_bytes(r, known) for r in items]
    envelope = _decode_envelope(msgspec.json.encode(skeleton))
    for section, by_type in records.items():
        arrays = getattr(envelope, section)
        for record_type, raws in by_type.items():
            setattr(arrays, record_type, [msgspec.Raw(raw) for raw in raws])
    return envelope


def _record_bytes(record: Any, known: tuple[str, ...]) -> bytes:
    """A record as JSON to validate, from Python's reading of it.

    With no unpaired surrogate, as it is; with one only in fields nobody reads, without
    those fields (they are ignored anyway); with one in a field that is read, whole and
    with the escape (ASCII JSON), for check_record to reject and quarantine.
    """
    if _surrogate_problem(record, "") is None:
        return msgspec.json.encode(record)
    read = {k: v for k, v in record.items() if k in known} if isinstance(record, dict) else record
    if _surrogate_problem(read, "") is None:
        return msgspec.json.encode(read)
    return json.dumps(record).encode()


def _decode_envelope(data: bytes) -> PushEnvelope:
    """The envelope, its records undecoded; a malformed one raises EnvelopeError naming its path (422)."""
    try:
        return ENVELOPE_DECODER.decode(data)
    except msgspec.ValidationError as exc:
        raise EnvelopeError(error_with_path("body", exc).removeprefix("body.")) from None


def _not_json(literal: str) -> None:
    raise ValueError(f"{literal} is not JSON")


def _stand_in(value: Any) -> Any:
    """A misplaced value, about to be refused for its type: an empty one of that type (no surrogate, no depth)."""
    return type(value)() if isinstance(value, str | list | dict) else value


def _check_count(records: int, limits: RecordLimits) -> None:
    if records > limits.max_records_per_push:
        raise TooManyRecords(records, limits.max_records_per_push)


def _check_pushed_at(envelope: PushEnvelope) -> None:
    """pushed_at must be an instant of years 1 to 9999 in UTC (the queue and the push row keep it in UTC)."""
    if envelope.pushed_at is not None and not in_utc_range(envelope.pushed_at):
        raise EnvelopeError(f"pushed_at: {OUT_OF_RANGE_MESSAGE}")


def split_records(body: bytes) -> dict[str, list[msgspec.Raw]]:
    """The records of a valid push body by type (data's before canonical's), each still undecoded."""
    return _by_type(ENVELOPE_DECODER.decode(body))


def decode_valid_records(body: bytes, limits: RecordLimits = DEFAULT_LIMITS) -> dict[str, list[Any]] | None:
    """Every record of a clean push body, decoded, by type (data's before canonical's); None if any is bad.

    "Clean" as validate_push tests it: no NUL escape, no string over the limit.
    """
    typed = _decode_if_all_valid(body, limits)
    return None if typed is None else _by_type(typed)


def _decode_if_all_valid(body: bytes, limits: RecordLimits) -> Any:
    """The typed envelope when the body is JSON, the envelope well formed and every record good, else None.

    When it says None, validate_push looks at the envelope and at each record on
    its own, to name what is wrong (with JSON paths) and keep the good records.
    """
    try:
        typed: Any = _TYPED_DECODER.decode(body)
    except (msgspec.DecodeError, RecursionError):  # DecodeError includes ValidationError
        return None
    for arrays in (typed.data, typed.canonical):
        if arrays is None:
            continue
        for record_type, paths in FREE_FORM.items():
            for record in (getattr(arrays, record_type) if paths else None) or ():
                if _nesting_problem(record, record_type, "", limits):
                    return None
    return typed


def _by_type(envelope: Any) -> dict[str, list[Any]]:
    """Each type's records of a decoded envelope (typed or raw), data's before canonical's."""
    records: dict[str, list[Any]] = {}
    for record_type in RECORD_TYPES:
        data = getattr(envelope.data, record_type, None) if envelope.data is not None else None
        canonical = getattr(envelope.canonical, record_type, None) if envelope.canonical is not None else None
        records[record_type] = (data or []) + canonical if canonical else (data or [])
    return records


def _validate_each(
    envelope: PushEnvelope, limits: RecordLimits, clean: bool, read_around_surrogates: bool = False
) -> ValidatedPush:
    """Check every record on its own: the good ones by type, the bad ones with their JSON paths.

    `read_around_surrogates`: records are the bytes as sent (not re-encoded by the
    surrogate path), so one with an unpaired surrogate is read as check_alone does.
    """
    records: dict[str, list[msgspec.Raw]] = {name: [] for name in RECORD_TYPES}
    rejected: list[RejectedRecord] = []
    seen = dict.fromkeys(RECORD_TYPES, 0)  # positions run on across both sections
    for section in ("data", "canonical"):
        arrays = getattr(envelope, section)
        if arrays is None:
            continue
        for record_type in RECORD_TYPES:
            raws = getattr(arrays, record_type)
            if not raws:
                continue
            good = records[record_type]
            for index, raw in enumerate(raws):
                path = f"{section}.{record_type}[{index}]"
                kept: msgspec.Raw | bytes = raw
                if read_around_surrogates:
                    _, kept, error = check_alone(record_type, raw, path, limits)
                else:
                    _, error = check_record(record_type, raw, path, limits, clean)
                if error is None:
                    good.append(kept if isinstance(kept, msgspec.Raw) else msgspec.Raw(kept))
                else:
                    rejected.append(RejectedRecord(record_type, seen[record_type] + index, error, bytes(raw)))
            seen[record_type] += len(raws)
    counts = {name: len(raws) for name, raws in records.items() if raws}
    return ValidatedPush(envelope=envelope, records=records, rejected=rejected, counts=counts)
