"""A structural scanner of push bodies: finds each record's bytes without recursion, in chunks.

msgspec decodes a body recursively and gives up near 1,000 levels of nesting
(RecursionError), and it needs the whole body in memory. This scanner does
neither: it walks the bytes with an explicit stack, so a record nested 100,000
levels deep is just a long record, and it takes the body in chunks of any size,
cut anywhere, so a body of hundreds of megabytes is read with bounded memory.

What it reports, for the envelope of SPEC 2.1:

- each record of the nine arrays under `data` and `canonical`, as a `Record`
  with its byte span (and, when asked, its bytes, up to a size limit);
- the top-level fields the envelope reads (`push_id`, `pushed_at`, ...) as
  their JSON text, and the kind of anything misplaced (`data` not an object,
  an array that is not a list), so `skeleton()` can rebuild a small envelope
  without records for the envelope's own decoder to check (the 422s).

How strict it is: the envelope's own levels (the top object, `data` and
`canonical`, the record arrays) are read token by token and must be JSON. A
value that is skipped whole (a record, or a field nobody reads) is only checked
for what finding its end needs: strings (escapes included) and balanced
brackets. A record's content is then checked by the record decoder, alone.

Speed: a compiled regex jumps over everything that is not a bracket, strings
included, so a 17 MB string costs one C-level match, and Python runs only per
bracket and per envelope token.

Why one module of ~550 lines: the scanner is one state machine (its states,
the stack, the chunk boundary it must survive anywhere); split, every piece
would have to share its internals.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import msgspec

# The record arrays and the envelope fields (schema.records and schema.envelope name the same ones).
SECTIONS = ("data", "canonical")
RECORD_ARRAYS = (
    "sessions",
    "prompts",
    "skill_invocations",
    "execution_facts",
    "normalization_runs",
    "evolution_evidence",
    "orchestrate_runs",
    "grading_results",
    "improvement_signals",
)
ENVELOPE_FIELDS = (
    "workspace_id",
    "cli_version",
    "client_version",
    "schema_version",
    "normalizer_version",
    "pushed_at",
    "push_id",
)

FIELD_CAP_BYTES = 64 * 1024  # an envelope field longer than this is refused (push ids are <= 200 characters)
KEY_CAP_BYTES = 256  # a longer key is none of the names the envelope reads
SCALAR_CAP_BYTES = 4096  # a number or literal longer than this is not JSON anyone sends
TRACKED_DEPTH = 65_536  # bracket kinds checked this deep; deeper, only counted (bounded memory)

_WS = re.compile(rb"[ \t\r\n]*+")
# Inside a skipped value: everything up to the next bracket, whole strings included, in one C-level match.
_SKIP = re.compile(rb'(?:[^"\[\]{}]++|"[^"\\]*+(?:\\[\s\S][^"\\]*+)*+")*+')
_OPENS = re.compile(rb"[\[{]++")
_CLOSES = re.compile(rb"[\]}]++")
# The rest of a string after its opening quote: up to its closing quote, the chunk's end, or a cut escape.
_LAX_STRING = re.compile(rb'[^"\\]*+(?:\\[\s\S][^"\\]*+)*+')
_STRICT_STRING = re.compile(rb'(?:[^"\\\x00-\x1f]++|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*+')
_SCALAR_EXTENT = re.compile(rb'[^ \t\r\n,:\[\]{}"]*+')
# A whole value up to FAST_DEPTH levels deep, brackets matched, in one C-level match: the common record.
FAST_DEPTH = 6
_STRING_RX = rb'"[^"\\]*+(?:\\[\s\S][^"\\]*+)*+"'
_inner = rb'(?:[^"\[\]{}]++|' + _STRING_RX + rb")*+"
for _ in range(FAST_DEPTH - 1):
    _inner = rb'(?:[^"\[\]{}]++|' + _STRING_RX + rb"|\[" + _inner + rb"\]|\{" + _inner + rb"\})*+"
_FAST_VALUE = re.compile(rb"\[" + _inner + rb"\]|\{" + _inner + rb"\}")
del _inner
_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?(?:[eE][+-]?[0-9]++)?")
_LITERALS = (b"true", b"false", b"null")
_OPEN_OF = bytes.maketrans(b"]}", b"[{")

_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_LBRACKET, _RBRACKET, _LBRACE, _RBRACE = ord("["), ord("]"), ord("{"), ord("}")
_COMMA, _COLON = ord(","), ord(":")

# What the parser expects next at the envelope's levels.
_VALUE, _KEY_OR_CLOSE, _KEY, _COLON_NEXT, _COMMA_OR_CLOSE, _ELEM_OR_CLOSE, _DONE = range(7)
# What a value is, by where it stands.
_TOP, _SECTION, _ARRAY, _RECORD, _FIELD, _IGNORED = range(6)


class ScanError(ValueError):
    """The body is not JSON (or is cut short): the message says what and at which byte."""


@dataclass(frozen=True, slots=True)
class Record:
    """One record of a record array: where its bytes are, and the bytes when they were kept.

    `raw` is None when the scanner was not asked to keep bytes, or the record is
    longer than its `max_record_bytes`; `end - start` is its size either way.
    """

    section: str
    record_type: str
    index: int  # position in its array
    start: int  # byte offsets in the body, end exclusive
    end: int
    raw: bytes | None = None

    @property
    def size(self) -> int:
        return self.end - self.start


class _Frame:
    """One open container at the envelope's levels (the top object, a section, a record array)."""

    __slots__ = ("close", "key", "name", "role")

    def __init__(self, role: int, close: int, name: str = "") -> None:
        self.role = role
        self.close = close
        self.name = name  # the section's name, or "section.record_type" for an array
        self.key: str | None = None  # the object's current key


def _kind(first: int, token: bytes = b"") -> str:
    if first == _LBRACE:
        return "object"
    if first == _LBRACKET:
        return "array"
    if first == _QUOTE:
        return "string"
    return token.decode() if token in _LITERALS else "number"


_STAND_INS = {"object": b"{}", "array": b"[]", "string": b'""', "number": b"0"}


class PushScanner:
    """Scan a push body fed in chunks; `feed` and `finish` return the records completed so far.

    With `keep_records`, each `Record` carries its bytes when it is at most
    `max_record_bytes` long; memory then stays within one chunk plus one such
    record, whatever the body's size or depth.
    """

    def __init__(self, keep_records: bool = False, max_record_bytes: int | None = None) -> None:
        self._keep = keep_records
        self._max_record = max_record_bytes
        self._buf = bytearray()
        self._base = 0  # offset in the body of self._buf[0]
        self._i = 0  # next index of self._buf to read
        self._frames: list[_Frame] = []
        self._expect = _VALUE
        self._role = _TOP  # of the value being read
        self._field = ""  # its field name (_FIELD), section (_SECTION) or "section.type" (_ARRAY)
        # A skipped value in progress: its open brackets (kinds up to TRACKED_DEPTH) and deeper ones counted.
        self._stack = bytearray()
        self._untracked = 0
        self._value_start = 0
        # A string in progress: whether it is read strictly, and its bytes when kept (None: not kept).
        self._in_string = False
        self._strict = False
        self._text: bytearray | None = None
        self._text_cap = 0
        self._text_overflow = False
        self._record_too_big = False
        self._counters: dict[str, int] = {}
        self._out: list[Record] = []
        # What skeleton() rebuilds the envelope from.
        self.top_kind = "object"
        self.fields: dict[str, bytes] = {}  # name -> JSON text (a stand-in for a misplaced container)
        self.overlong_fields: list[str] = []
        self.sections: dict[str, str] = {}  # name -> kind of its value
        self.arrays: dict[str, dict[str, str]] = {}  # section -> record type -> kind of its value
        self.counts: dict[str, int] = {}  # records per type, both sections
        self.size = 0  # bytes fed

    # -- feeding ------------------------------------------------------------------------------

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[Record]:
        """Scan the next bytes of the body; return the records they complete. Raises ScanError."""
        self._buf += chunk
        self.size += len(chunk)
        self._i = self._run(self._buf, self._i, False)
        self._trim()
        return self._take()

    def finish(self) -> list[Record]:
        """The body has ended: return the last records, or raise ScanError if it was cut short."""
        self._i = self._run(self._buf, self._i, True)
        if self._expect != _DONE:
            raise ScanError(f"JSON is malformed: truncated (byte {self._base + len(self._buf)})")
        return self._take()

    def scan(self, body: bytes | bytearray) -> list[Record]:
        """Scan a whole body held in memory; return all of its records, as spans (never copies: `raw` is None)."""
        if self.size:
            raise ValueError("scan() reads a whole body; this scanner was fed already")
        self.size = len(body)
        self._keep = False
        self._run(body, 0, True)
        if self._expect != _DONE:
            raise ScanError(f"JSON is malformed: truncated (byte {len(body)})")
        return self._take()

    def _take(self) -> list[Record]:
        out, self._out = self._out, []
        return out

    def _trim(self) -> None:
        """Drop what is read, keeping the bytes of a record being kept (while it is within its limit)."""
        keep_from = self._i
        if self._keep and self._in_record() and not self._record_too_big:
            held = self._base + len(self._buf) - self._value_start
            if self._max_record is not None and held > self._max_record:
                self._record_too_big = True
            else:
                keep_from = self._value_start - self._base
        if keep_from:
            del self._buf[:keep_from]
            self._base += keep_from
            self._i -= keep_from

    def _in_record(self) -> bool:
        return self._role == _RECORD and (bool(self._stack) or self._untracked > 0 or self._in_string)

    # -- the scan -----------------------------------------------------------------------------

    def _error(self, what: str, at: int) -> ScanError:
        return ScanError(f"JSON is malformed: {what} (byte {self._base + at})")

    def _run(self, buf: bytes | bytearray, i: int, final: bool) -> int:
        """Scan buf from i; return where to go on from when more bytes come (all of buf once `final`)."""
        n = len(buf)
        while True:
            if self._in_string:
                i = self._string(buf, i, n, final)
                if self._in_string:
                    return i
                continue
            if self._stack or self._untracked:
                i = _SKIP.match(buf, i).end()  # type: ignore[union-attr]
                if i >= n:
                    if final:
                        raise self._error("truncated inside a value", n)
                    return i
                c = buf[i]
                if c == _QUOTE:  # a string the chunk cut: read on from inside it
                    self._start_string(strict=False, cap=0)
                    i += 1
                elif c in (_LBRACKET, _LBRACE):
                    i = self._open(buf, i)
                else:
                    i = self._close(buf, i)
                continue
            i = _WS.match(buf, i).end()  # type: ignore[union-attr]
            if i >= n:
                if final and self._expect != _DONE:
                    raise self._error("truncated", n)
                return i
            i = self._token(buf, i, n, final)
            if i < 0:  # a number or literal the chunk may have cut: wait for more
                return -i - 1

    def _open(self, buf: bytes | bytearray, i: int) -> int:
        end = _OPENS.match(buf, i).end()  # type: ignore[union-attr]
        room = max(0, TRACKED_DEPTH - len(self._stack))
        if self._untracked or end - i > room:
            self._stack += buf[i : i + room]
            self._untracked += end - i - room
        else:
            self._stack += buf[i:end]
        return end

    def _close(self, buf: bytes | bytearray, i: int) -> int:
        end = _CLOSES.match(buf, i).end()  # type: ignore[union-attr]
        k = min(end - i, len(self._stack) + self._untracked)  # the rest close the envelope's containers
        untracked = min(k, self._untracked)
        self._untracked -= untracked
        checked = k - untracked
        if checked:
            closes = bytes(buf[i + untracked : i + k])
            if closes.translate(_OPEN_OF)[::-1] != self._stack[len(self._stack) - checked :]:
                raise self._error("a closing bracket does not match its opening one", i + untracked)
            del self._stack[len(self._stack) - checked :]
        i += k
        if not self._stack and not self._untracked:
            self._value_done(buf, i)
        return i

    def _start_string(self, strict: bool, cap: int) -> None:
        self._in_string = True
        self._strict = strict
        self._text = bytearray() if cap else None
        self._text_cap = cap
        self._text_overflow = False

    def _string(self, buf: bytes | bytearray, i: int, n: int, final: bool) -> int:
        """Read on inside a string; return the index after its closing quote, or where to wait."""
        if self._strict:
            end = _STRICT_STRING.match(buf, i).end()  # type: ignore[union-attr]
        else:
            # A long string (a pasted log) is what makes a body big: find its end at memchr speed
            # when no escape comes before the next quote, else with the regex (still C, ~60 MB/s).
            quote = buf.find(b'"', i)
            stop = n if quote < 0 else quote
            escaped = buf.find(b"\\", i, stop) >= 0
            end = _LAX_STRING.match(buf, i).end() if escaped else stop  # type: ignore[union-attr]
        if self._text is not None:
            if len(self._text) + end - i <= self._text_cap:
                self._text += buf[i:end]
            else:
                self._text = None
                self._text_overflow = True
        if end < n and buf[end] == _QUOTE:
            self._in_string = False
            self._string_done(buf, end + 1)
            return end + 1
        if end < n:  # a control character, a bad escape, or an escape the chunk cut
            if not final and buf[end] == _BACKSLASH and n - end < 6:
                return end
            raise self._error("invalid character or escape in a string", end)
        if final:
            raise self._error("truncated inside a string", n)
        return end

    def _string_done(self, buf: bytes | bytearray, i: int) -> None:
        text, self._text = self._text, None
        if self._stack or self._untracked:
            return  # a string inside a skipped value
        if self._expect == _KEY:
            key = None
            if text is not None:
                try:
                    key = msgspec.json.decode(b'"' + bytes(text) + b'"', type=str) if b"\\" in text else text.decode()
                except (msgspec.DecodeError, UnicodeDecodeError):
                    key = None  # not a name the envelope reads
            self._frames[-1].key = key
            self._expect = _COLON_NEXT
            return
        if self._role == _FIELD:
            if text is None:
                self.overlong_fields.append(self._field)
            else:
                self.fields[self._field] = b'"' + bytes(text) + b'"'
        elif self._role == _SECTION:
            self.sections[self._field] = "string"
        elif self._role == _ARRAY:
            self._array_kind("string")
        elif self._role == _TOP:
            self.top_kind = "string"
        self._value_done(buf, i)

    def _token(self, buf: bytes | bytearray, i: int, n: int, final: bool) -> int:
        """One token at the envelope's levels; return the index after it, or -(i+1) to wait for more."""
        c = buf[i]
        expect = self._expect
        if expect == _DONE:
            raise self._error("trailing characters after the top-level value", i)
        if expect in (_KEY, _KEY_OR_CLOSE):
            if c == _RBRACE and expect == _KEY_OR_CLOSE:
                return self._close_frame(buf, i)
            if c != _QUOTE:
                raise self._error("expected '\"' (an object key)", i)
            self._expect = _KEY
            self._start_string(strict=True, cap=KEY_CAP_BYTES)
            return i + 1
        if expect == _COLON_NEXT:
            if c != _COLON:
                raise self._error("expected ':'", i)
            self._begin_value(self._frames[-1])
            return i + 1
        if expect == _COMMA_OR_CLOSE:
            frame = self._frames[-1]
            if c == _COMMA:
                if frame.role == _ARRAY:
                    self._begin_value(frame)
                else:
                    self._expect = _KEY
                return i + 1
            if c == frame.close:
                return self._close_frame(buf, i)
            raise self._error(f"expected ',' or '{chr(frame.close)}'", i)
        if expect == _ELEM_OR_CLOSE and c == _RBRACKET:
            return self._close_frame(buf, i)
        # A value begins.
        self._value_start = self._base + i
        role = self._role
        if c in (_LBRACE, _LBRACKET):
            if c == _LBRACE and role in (_TOP, _SECTION):
                if role == _SECTION:
                    self.sections[self._field] = "object"
                    self.arrays.setdefault(self._field, {})
                self._frames.append(_Frame(role, _RBRACE, self._field))
                self._expect = _KEY_OR_CLOSE
                return i + 1
            if c == _LBRACKET and role == _ARRAY:
                self._array_kind("array")
                self._frames.append(_Frame(role, _RBRACKET, self._field))
                self._role = _RECORD
                self._expect = _ELEM_OR_CLOSE
                return i + 1
            self._misplaced(_kind(c))
            self._record_too_big = False
            if role == _RECORD:
                whole = _FAST_VALUE.match(buf, i)
                if whole is not None:  # the common record: found whole, no Python per bracket
                    self._value_done(buf, whole.end())
                    return whole.end()
            self._stack.append(c)
            return i + 1
        if c == _QUOTE:
            if role == _FIELD:
                self._start_string(strict=True, cap=FIELD_CAP_BYTES)
            else:
                self._record_too_big = False
                self._start_string(strict=True, cap=0)
            return i + 1
        end = _SCALAR_EXTENT.match(buf, i).end()  # type: ignore[union-attr]
        if end >= n and not final:
            if end - i > SCALAR_CAP_BYTES:
                raise self._error("a number or literal is too long", i)
            return -(i + 1)
        token = bytes(buf[i:end])
        if token not in _LITERALS and not _NUMBER.fullmatch(token):
            raise self._error("invalid character", i)
        if role == _FIELD:
            self.fields[self._field] = token
        else:
            self._misplaced(_kind(c, token))
        self._value_done(buf, end)
        return end

    def _begin_value(self, frame: _Frame) -> None:
        """After a key's colon, or an array's comma: say what the coming value is."""
        self._expect = _VALUE
        if frame.role == _TOP:
            key = frame.key
            if key in SECTIONS:
                self._role, self._field = _SECTION, key
            elif key in ENVELOPE_FIELDS:
                self._role, self._field = _FIELD, key
            else:
                self._role = _IGNORED
        elif frame.role == _SECTION:
            key = frame.key
            self._role = _ARRAY if key in RECORD_ARRAYS else _IGNORED
            self._field = f"{frame.name}.{key}"
        else:
            self._role = _RECORD

    def _array_kind(self, kind: str) -> None:
        section, _, record_type = self._field.partition(".")
        self.arrays.setdefault(section, {})[record_type] = kind

    def _misplaced(self, kind: str) -> None:
        """A value whose kind is all the envelope needs of it (or a record, or something ignored)."""
        role = self._role
        if role == _TOP:
            self.top_kind = kind
        elif role == _SECTION:
            self.sections[self._field] = kind
        elif role == _ARRAY:
            self._array_kind(kind)
        elif role == _FIELD:
            self.fields[self._field] = _STAND_INS.get(kind, kind.encode())

    def _close_frame(self, buf: bytes | bytearray, i: int) -> int:
        frame = self._frames.pop()
        self._role = frame.role
        self._value_done(buf, i + 1)
        return i + 1

    def _value_done(self, buf: bytes | bytearray, end: int) -> None:
        """A value ended at buf[end]: report it if it is a record, then expect what follows it."""
        if self._role == _RECORD:
            self._record(buf, end)
        if not self._frames:
            self._expect = _DONE
            return
        self._expect = _COMMA_OR_CLOSE
        frame = self._frames[-1]
        self._role = _RECORD if frame.role == _ARRAY else frame.role

    def _record(self, buf: bytes | bytearray, end: int) -> None:
        section, _, record_type = self._frames[-1].name.partition(".")
        start, stop = self._value_start, self._base + end
        raw = None
        if self._keep and not self._record_too_big and (self._max_record is None or stop - start <= self._max_record):
            raw = bytes(buf[start - self._base : end])
        self._record_too_big = False
        index = self._counters.get(self._frames[-1].name, 0)
        self._counters[self._frames[-1].name] = index + 1
        self.counts[record_type] = self.counts.get(record_type, 0) + 1
        self._out.append(Record(section, record_type, index, start, stop, raw))

    # -- the envelope without its records ------------------------------------------------------

    def skeleton(self) -> bytes:
        """The envelope as JSON, every record array empty: for the envelope's decoder to check.

        A misplaced value stands in as an empty one of its kind, so the decoder
        refuses it with its usual message (and never meets its depth).
        """
        if self.top_kind != "object":
            return _STAND_INS.get(self.top_kind, self.top_kind.encode())
        parts = [b'"' + name.encode() + b'":' + text for name, text in self.fields.items()]
        for section, kind in self.sections.items():
            if kind != "object":
                parts.append(b'"' + section.encode() + b'":' + _STAND_INS.get(kind, kind.encode()))
                continue
            arrays = [
                b'"' + t.encode() + b'":' + _STAND_INS.get(k, k.encode())
                for t, k in self.arrays.get(section, {}).items()
            ]
            parts.append(b'"' + section.encode() + b'":{' + b",".join(arrays) + b"}")
        return b"{" + b",".join(parts) + b"}"


def scan_chunks(chunks: Iterable[bytes], max_record_bytes: int | None = None) -> tuple[PushScanner, list[Record]]:
    """Scan a body given in chunks, keeping records' bytes; return the scanner and every record (for tests and tools)."""
    scanner = PushScanner(keep_records=True, max_record_bytes=max_record_bytes)
    records: list[Record] = []
    for chunk in chunks:
        records += scanner.feed(chunk)
    records += scanner.finish()
    return scanner, records


def nesting_depth(body: bytes | bytearray) -> int:
    """The deepest nesting of arrays and objects in a JSON text, strings skipped (no recursion, no decode)."""
    depth = deepest = i = 0
    n = len(body)
    while True:
        i = _SKIP.match(body, i).end()  # type: ignore[union-attr]
        if i >= n or body[i] == _QUOTE:  # the end, or a string never closed (the decoder says what is wrong)
            return deepest
        if body[i] in (_LBRACKET, _LBRACE):
            end = _OPENS.match(body, i).end()  # type: ignore[union-attr]
            depth += end - i
            deepest = max(deepest, depth)
        else:
            end = _CLOSES.match(body, i).end()  # type: ignore[union-attr]
            depth = max(0, depth - (end - i))
        i = end
