"""Byte-level checks of a whole JSON body, done before (and instead of) walking its records.

Both run over every byte of every push, in the api and again in the worker,
so they are written for speed on what CLIs send: mostly ASCII JSON with a few
non-ASCII characters, and backslash escapes everywhere.
"""

from __future__ import annotations

import codecs

# The escape a JSON string uses for U+0000, which Postgres text cannot hold.
NUL_ESCAPE = b"\\u0000"

# Bytes per slice in first_invalid_utf8: small enough that most slices of
# mostly-ASCII text are pure ASCII, large enough that the Python loop is cheap.
UTF8_CHUNK = 4096


def has_nul_escape(data: bytes) -> bool:
    """Whether the bytes hold a \\u0000 escape anywhere.

    `rfind`, not `in`: CPython's search skips ahead by a table keyed on the
    needle's last byte, here "0", which digits make frequent in JSON; the
    backward search keys on the first byte, a backslash, and runs about twice
    as fast on realistic pushes (bench/README.md).
    """
    return data.rfind(NUL_ESCAPE) >= 0


def first_invalid_utf8(data: bytes, chunk: int = UTF8_CHUNK) -> int | None:
    """The offset of the first byte that is not valid UTF-8, or None if all of it is.

    Gives the same answer as `data.decode()` (its UnicodeDecodeError.start),
    without building a decoded copy of the whole body: slices that are pure
    ASCII (the bulk of a push) are only tested with `bytes.isascii`, the
    others fed to an incremental decoder, which carries a character cut by a
    slice's end into the next one.
    """
    if chunk <= 0:
        raise ValueError("chunk must be positive")
    decoder = codecs.getincrementaldecoder("utf-8")()
    carried = 0  # bytes of an unfinished character held by the decoder
    for start in range(0, len(data), chunk):
        piece = data[start : start + chunk]
        if not carried and piece.isascii():
            continue
        try:
            decoder.decode(piece)
        except UnicodeDecodeError as exc:
            return start - carried + exc.start
        carried = len(decoder.getstate()[0])
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        return len(data) - carried + exc.start
    return None
