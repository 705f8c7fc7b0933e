"""A push body validated (SPEC 2.4): the envelope checked, every record on its own account.

`validate_push` is the api's one entry: good records by type, the bad ones with
their JSON paths, or an error for the whole body (not JSON, a malformed envelope,
too many records).
"""

from __future__ import annotations

from typing import Any

import msgspec

from schema.envelope import (
    ENVELOPE_FIELDS,
    ENVELOPE_STRINGS,
    TYPED_DECODER,
    EnvelopeError,
    PushEnvelope,
    by_type,
    decode_envelope,
    split_records,
)
from schema.jsonbytes import first_invalid_utf8, has_nul_escape
from schema.record_checks import (
    DEFAULT_LIMITS,
    FREE_FORM,
    NUL_MESSAGE,
    RecordLimits,
    check_alone,
    check_count,
    check_record,
    nesting_problem,
    surrogate_problem,
)
from schema.records import OUT_OF_RANGE_MESSAGE, RECORD_TYPES, in_utc_range
from schema.scan import FIELD_CAP_BYTES, PushScanner, ScanError
from schema.surrogates import envelope_around_surrogates, read_around_surrogates

MAX_ERRORS_LISTED = 100  # a batch of 10,000 bad records gets a readable answer


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


def validate_push(body: bytes, limits: RecordLimits = DEFAULT_LIMITS) -> ValidatedPush:
    """Decode a push body and validate every record, each on its own account.

    Raises msgspec.DecodeError when the body is not JSON (400), EnvelopeError when
    the envelope is malformed (422) and TooManyRecords past MAX_RECORDS_PER_PUSH
    (413). Record errors never raise: they are returned in `rejected`.
    """
    _require_utf8(body)
    # One byte test of the whole body spares each record its NUL and length checks (see check_record).
    clean = not has_nul_escape(body) and len(body) <= limits.max_string_chars
    if clean:
        settled = _settle_at_once(body, limits)
        if settled is not None:  # most pushes: every record good, checked by one typed decode
            return settled
    # Something is wrong, with the envelope or with some records: find what, and where.
    envelope, as_sent = _open_envelope(body, limits)
    _check_pushed_at(envelope)
    # Before any record is looked at: a few kilobytes of gzipped `{},` can hold millions.
    check_count(sum(len(raws) for raws in by_type(envelope).values()), limits)
    if not clean:  # a clean body has no NUL anywhere, the envelope's strings included
        _check_envelope_strings(envelope)
    return _validate_each(envelope, limits, clean, read_around_surrogates=as_sent)


def _require_utf8(body: bytes) -> None:
    """JSON is UTF-8. msgspec skips unknown strings unchecked and raises a bare
    UnicodeDecodeError (a 500) for known ones, so the whole body is checked first."""
    bad_byte = first_invalid_utf8(body)
    if bad_byte is not None:
        raise msgspec.DecodeError(f"JSON is malformed: invalid UTF-8 (byte {bad_byte})")


def _settle_at_once(body: bytes, limits: RecordLimits) -> ValidatedPush | None:
    """A clean body whose every record is good, validated by one typed decode; None if anything is wrong."""
    typed = _decode_if_all_valid(body, limits)
    if typed is None:
        return None
    envelope = PushEnvelope(**{name: getattr(typed, name) for name, _, _ in ENVELOPE_FIELDS})
    _check_pushed_at(envelope)
    counts = {name: len(records) for name, records in by_type(typed).items() if records}
    check_count(sum(counts.values()), limits)
    return ValidatedPush(envelope=envelope, records=None, rejected=[], counts=counts, body=body)


def _open_envelope(body: bytes, limits: RecordLimits) -> tuple[PushEnvelope, bool]:
    """The envelope with its records undecoded, and whether they are the bytes as sent (to be read as such).

    Three readings, the first that works: msgspec's; for a body nested deeper than
    the decoder can follow (~1,000 levels), the scanner's, which finds where each
    record ends without recursing; for an unpaired surrogate escape, which msgspec
    refuses even in a field it would ignore, Python's json (schema/surrogates.py).
    """
    try:
        return decode_envelope(body), False
    except RecursionError:
        return _envelope_by_scan(body, limits), True
    except msgspec.DecodeError as exc:
        if b"\\ud" not in body and b"\\uD" not in body:
            raise
        not_json = exc
    try:
        tree = read_around_surrogates(body)
        if tree is None:  # not JSON for Python either: msgspec's own message
            raise not_json
        return envelope_around_surrogates(tree, limits), False
    except RecursionError:
        return _envelope_by_scan(body, limits), True


def _check_envelope_strings(envelope: PushEnvelope) -> None:
    for name in ENVELOPE_STRINGS:
        value = getattr(envelope, name)
        if value is not None and "\x00" in value:
            raise EnvelopeError(f"{name}: {NUL_MESSAGE}")


def _check_pushed_at(envelope: PushEnvelope) -> None:
    """pushed_at must be an instant of years 1 to 9999 in UTC (the queue and the push row keep it in UTC)."""
    if envelope.pushed_at is not None and not in_utc_range(envelope.pushed_at):
        raise EnvelopeError(f"pushed_at: {OUT_OF_RANGE_MESSAGE}")


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
        envelope = decode_envelope(skeleton)
    except msgspec.DecodeError as exc:
        # An unpaired surrogate in one of the envelope's strings: name the field, as the usual path does.
        problem = None
        if b"\\ud" in skeleton or b"\\uD" in skeleton:
            tree = read_around_surrogates(skeleton)
            problem = surrogate_problem(tree, "") if tree is not None else None
        raise EnvelopeError(problem.removeprefix(".") if problem else str(exc)) from None
    _check_pushed_at(envelope)
    _check_envelope_strings(envelope)
    return envelope


def _envelope_by_scan(body: bytes, limits: RecordLimits) -> PushEnvelope:
    """The envelope of a body too deep for the decoder, its records the spans the scanner found."""
    scanner = PushScanner()
    try:
        found = scanner.scan(body)
    except ScanError as exc:
        raise msgspec.DecodeError(str(exc)) from None
    envelope = envelope_of_scan(scanner)
    check_count(sum(scanner.counts.values()), limits)  # before the spans are cut
    view = memoryview(body)
    spans: dict[tuple[str, str], list[msgspec.Raw]] = {}
    for r in found:
        spans.setdefault((r.section, r.record_type), []).append(msgspec.Raw(view[r.start : r.end]))
    for (section, record_type), raws in spans.items():
        arrays = getattr(envelope, section)
        if arrays is not None:  # None: the section was null, and held no records
            setattr(arrays, record_type, raws)
    return envelope


def decode_valid_records(body: bytes, limits: RecordLimits = DEFAULT_LIMITS) -> dict[str, list[Any]] | None:
    """Every record of a clean push body, decoded, by type (data's before canonical's); None if any is bad.

    "Clean" as validate_push tests it: no NUL escape, no string over the limit.
    """
    typed = _decode_if_all_valid(body, limits)
    return None if typed is None else by_type(typed)


def _decode_if_all_valid(body: bytes, limits: RecordLimits) -> Any:
    """The typed envelope when the body is JSON, the envelope well formed and every record good, else None.

    When it says None, validate_push looks at the envelope and at each record on
    its own, to name what is wrong (with JSON paths) and keep the good records.
    """
    try:
        typed: Any = TYPED_DECODER.decode(body)
    except (msgspec.DecodeError, RecursionError):  # DecodeError includes ValidationError
        return None
    for arrays in (typed.data, typed.canonical):
        if arrays is None:
            continue
        for record_type, paths in FREE_FORM.items():
            for record in (getattr(arrays, record_type) if paths else None) or ():
                if nesting_problem(record, record_type, "", limits):
                    return None
    return typed


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
