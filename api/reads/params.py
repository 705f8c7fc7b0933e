"""The read endpoints' query parameters: checked, parsed, and described for the OpenAPI document.

An unknown, repeated or malformed parameter is a 422 naming it, and so is one
holding a NUL character (no stored value can hold one). An empty value
(`?skill=`) means the filter is not set. Times are RFC 3339
(`2026-11-28T10:00:00Z`) or a date (`2026-11-28`, midnight UTC); `since` is
inclusive, `until` exclusive. `limit` is 1 to 500, default 50.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated

from msgspec import Meta
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request

from api.errors import INVALID_PARAMETER, ApiError
from api.openapi import Param
from schema.record_checks import NUL_MESSAGE

DEFAULT_LIMIT = 50
MAX_LIMIT = 500


def invalid(name: str, message: str) -> ApiError:
    """A 422 naming the parameter or field at fault."""
    return INVALID_PARAMETER(f"{name}: {message}")


def query_params(request: Request, allowed: Sequence[str]) -> dict[str, str]:
    """The request's query parameters, each at most once and known; empty values dropped."""
    out: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in request.query_params.multi_items():
        if name not in allowed:
            raise invalid(name, f"unknown query parameter; this endpoint takes {', '.join(allowed) or 'none'}")
        if name in seen:
            raise invalid(name, "given more than once")
        seen.add(name)
        if value != "":
            out[name] = _no_nul(name, value)
    return out


def _no_nul(name: str, value: str) -> str:
    """The value; a NUL in it is a 422 (no stored value holds one, and Postgres cannot compare it)."""
    if "\x00" in value:
        raise invalid(name, NUL_MESSAGE)
    return value


class AnyTextConvertor(Convertor[str]):
    """`{name:text}`: a path parameter holding any characters, '/' (sent as %2F) and newlines included.

    Push ids, signal ids and skill names are any strings; Starlette's own converters stop
    at '/' (`str`) or at a newline (`path`).
    """

    regex = r"[\s\S]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("text", AnyTextConvertor())


def path_param(request: Request, name: str) -> str:
    """A path parameter (`/v2/pushes/{push_id}`); a NUL in it is a 422."""
    return _no_nul(name, request.path_params[name])


def parse_bool(params: dict[str, str], name: str) -> bool | None:
    value = params.get(name)
    if value is None:
        return None
    lowered = value.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise invalid(name, f"must be true or false, got {value!r}")


def parse_time(params: dict[str, str], name: str) -> datetime | None:
    """RFC 3339, or a date meaning midnight UTC; a time without offset is UTC."""
    value = params.get(name)
    if value is None:
        return None
    # An unencoded '+' in a query string arrives as a space: "10:00:00 02:00".
    for candidate in (value, re.sub(r" (\d\d:?\d\d)$", r"+\1", value)):
        try:
            parsed = datetime.fromisoformat(candidate)
        except ValueError:
            continue
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    raise invalid(name, f"must be an RFC 3339 time (2026-11-28T10:00:00Z) or a date (2026-11-28), got {value!r}")


def parse_window(params: dict[str, str]) -> tuple[datetime | None, datetime | None]:
    since, until = parse_time(params, "since"), parse_time(params, "until")
    if since is not None and until is not None and until <= since:
        raise invalid("until", "must be later than since")
    return since, until


def parse_limit(params: dict[str, str]) -> int:
    value = params.get("limit")
    if value is None:
        return DEFAULT_LIMIT
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_LIMIT:
        raise invalid("limit", f"must be an integer from 1 to {MAX_LIMIT}, got {value!r}")
    return int(value)


# -- for describe(...) ------------------------------------------------------------------------------------

_TIME = "RFC 3339 time, or a date (midnight UTC)"
PAGE = (
    Param(
        "limit",
        "query",
        Annotated[int, Meta(ge=1, le=MAX_LIMIT)],
        description=f"rows per page, default {DEFAULT_LIMIT}",
    ),
    Param("cursor", "query", description="the previous page's next_cursor"),
)
WINDOW = (
    Param("since", "query", description=f"{_TIME}, inclusive"),
    Param("until", "query", description=f"{_TIME}, exclusive"),
)
