"""Read a request body within the size limits, inflating gzip as it streams.

The compressed limit applies to the bytes on the wire, the decompressed limit
to what they inflate to; inflation stops as soon as the limit is passed, so a
small gzip bomb never grows in memory. The small JSON bodies of the other
endpoints (consume, device code, poll) are read the same way, then decoded.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec
from starlette.requests import ClientDisconnect, Request

from api.errors import (
    BAD_GZIP,
    CLIENT_DISCONNECTED,
    INVALID_BODY,
    INVALID_JSON,
    PAYLOAD_TOO_LARGE,
    REQUEST_TIMEOUT,
    UNSUPPORTED_ENCODING,
    UNSUPPORTED_MEDIA_TYPE,
    ApiError,
)
from runtime.settings import Settings
from schema.jsonbytes import has_nul_escape
from schema.record_checks import NUL_MESSAGE, nul_path
from schema.scan import nesting_depth

_GZIP_WBITS = 16 + zlib.MAX_WBITS  # gzip header and trailer
MAX_SMALL_BODY_BYTES = 64 * 1024  # consume, device-code and poll bodies are a few dozen bytes
MAX_SMALL_BODY_DEPTH = 32  # their JSON is one flat object; the decoder would recurse past ~1,000 levels


def _too_large(what: str, limit: int, setting: str) -> ApiError:
    return PAYLOAD_TOO_LARGE(
        f"{what} is over the limit of {limit} bytes ({setting}); split the push into smaller batches",
    )


def check_content_headers(request: Request) -> bool:
    """Refuse content types and encodings we cannot read (415); return True for gzip."""
    content_type = request.headers.get("content-type", "application/json")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise UNSUPPORTED_MEDIA_TYPE(f"Content-Type must be application/json, got {media_type!r}")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip"):
        raise UNSUPPORTED_ENCODING(f"Content-Encoding must be gzip or identity, got {encoding!r}")
    return encoding == "gzip"


async def read_body(
    request: Request, gzip: bool, max_bytes: int, max_compressed_bytes: int, timeout_s: float = 30.0
) -> bytes:
    """The request body, inflated if gzip, or ApiError 400/408/413.

    A client slower than `timeout_s` to send its body gets 408, so slow
    clients cannot hold the server's connections.
    """
    try:
        async with asyncio.timeout(timeout_s):
            return await _read_body(request, gzip, max_bytes, max_compressed_bytes)
    except TimeoutError:
        raise timed_out(timeout_s) from None


async def _read_body(request: Request, gzip: bool, max_bytes: int, max_compressed_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    wire_limit = max_compressed_bytes if gzip else max_bytes
    wire_setting = "MAX_COMPRESSED_BODY_BYTES" if gzip else "MAX_BODY_BYTES"
    if declared and declared.isdigit() and int(declared) > wire_limit:
        raise _too_large("request body", wire_limit, wire_setting)
    inflated = _inflated(request, gzip, wire_limit, wire_setting, max_bytes, "MAX_BODY_BYTES")
    return b"".join([chunk async for chunk in inflated])


# -- pushes past MAX_BODY_BYTES: read in chunks, never whole ---------------------------------------

INFLATE_STEP = 1 << 20  # inflated bytes per step: a small gzip chunk can hold a gigabyte


@dataclass
class Overflow:
    """A push body past the in-memory limit: the inflated chunks read so far, and the rest, still arriving.

    `rest` yields inflated chunks and raises ApiError (400 bad gzip, 413 past the
    hard cap) as the body arrives; reading it must end by `deadline` (the loop's clock).
    """

    head: list[bytes]
    rest: AsyncIterator[bytes]
    deadline: float


async def _inflated(
    request: Request, gzip: bool, wire_limit: int, wire_setting: str, size_limit: int, size_setting: str
) -> AsyncIterator[bytes]:
    """The body's bytes as they arrive, inflated if gzip, in steps of at most INFLATE_STEP; ApiError past a limit."""
    inflater = zlib.decompressobj(_GZIP_WBITS) if gzip else None
    wire = size = 0
    try:
        async for chunk in request.stream():
            wire += len(chunk)
            if wire > wire_limit:
                raise _too_large("request body", wire_limit, wire_setting)
            if inflater is None:
                if chunk:
                    yield chunk
                continue
            data = chunk
            while data:
                try:
                    out = inflater.decompress(data, INFLATE_STEP)
                except zlib.error as exc:
                    raise BAD_GZIP(f"body is not valid gzip: {exc}") from None
                size += len(out)
                if size > size_limit:
                    raise _too_large("decompressed body", size_limit, size_setting)
                if out:
                    yield out
                data = inflater.unconsumed_tail
    except ClientDisconnect:
        raise CLIENT_DISCONNECTED("the client closed the connection mid-body") from None
    if inflater is not None and not inflater.eof:
        raise BAD_GZIP("body is not valid gzip: the stream is truncated")
    if inflater is not None and inflater.unused_data:
        raise BAD_GZIP("body is not valid gzip: bytes follow the end of the gzip stream")


def timed_out(timeout_s: float) -> ApiError:
    """The 408 for a body slower than BODY_READ_TIMEOUT_S."""
    return REQUEST_TIMEOUT(f"the body took longer than {timeout_s:g} s to arrive (BODY_READ_TIMEOUT_S)")


async def read_push_body(request: Request, gzip: bool, settings: Settings, can_stream: bool) -> bytes | Overflow:
    """A push body: bytes when within MAX_BODY_BYTES, else an Overflow to stream (when `can_stream`).

    Past MAX_BODY_BYTES (declared by Content-Length, or once the bytes read pass it)
    the body is not gathered in memory: the caller streams the rest. 413 only past
    MAX_PUSH_BYTES (inflated), or its gzip wire cap; without streaming, past MAX_BODY_BYTES as before.
    """
    if not can_stream or settings.max_push_bytes <= settings.max_body_bytes:
        return await read_body(
            request, gzip, settings.max_body_bytes, settings.max_compressed_body_bytes, settings.body_read_timeout_s
        )
    timeout_s = settings.body_read_timeout_s
    deadline = asyncio.get_running_loop().time() + timeout_s
    if gzip:
        wire_limit, wire_setting = (
            settings.max_compressed_push_bytes,
            "MAX_COMPRESSED_BODY_BYTES scaled by MAX_PUSH_BYTES",
        )
    else:
        wire_limit, wire_setting = settings.max_push_bytes, "MAX_PUSH_BYTES"
    declared = request.headers.get("content-length")
    declared_size = int(declared) if declared and declared.isdigit() else None
    if declared_size is not None and declared_size > wire_limit:
        raise _too_large("request body", wire_limit, wire_setting)
    chunks = _inflated(request, gzip, wire_limit, wire_setting, settings.max_push_bytes, "MAX_PUSH_BYTES")
    if not gzip and declared_size is not None and declared_size > settings.max_body_bytes:
        return Overflow([], chunks, deadline)  # known big: not one byte of it gathered in memory
    head: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout_at(deadline):
            async for piece in chunks:
                head.append(piece)
                size += len(piece)
                if size > settings.max_body_bytes:
                    return Overflow(head, chunks, deadline)
    except TimeoutError:
        raise timed_out(timeout_s) from None
    return b"".join(head)


async def read_json(request: Request, decoder: msgspec.json.Decoder[Any]) -> Any:
    """A small JSON body decoded into its Struct: 400 if not JSON, 422 naming the field at fault."""
    body = await read_body(request, check_content_headers(request), MAX_SMALL_BODY_BYTES, MAX_SMALL_BODY_BYTES)
    # Checked before decoding: msgspec raises RecursionError (a 500) near 1,000 levels.
    depth = nesting_depth(body)
    if depth > MAX_SMALL_BODY_DEPTH:
        raise INVALID_JSON(
            f"body is nested {depth} levels deep, deeper than MAX_SMALL_BODY_DEPTH={MAX_SMALL_BODY_DEPTH}",
        )
    try:
        decoded = decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise INVALID_BODY(f"body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise INVALID_JSON(f"body is not valid JSON: {exc}") from None
    if has_nul_escape(body):  # JSON carries U+0000 only as an escape
        bad = nul_path(msgspec.to_builtins(decoded), "body")
        if bad:
            raise INVALID_BODY(f"{bad}: {NUL_MESSAGE}")
    return decoded
