"""Keyset pagination of the read lists: cursors, and the query of one page newest first.

A list is paginated by `limit` and `cursor`, the previous page's `next_cursor`
(base64url of the last row's sort key, opaque to clients; null on the last
page). A page reads its rows from an index in order, so page 10,000 costs what
page 1 costs, and rows pushed meanwhile never shift a page (no duplicates, no
gaps).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import msgspec
from psycopg import sql

from api.db import select_list
from api.reads.params import invalid

T = TypeVar("T")
TimeKey = tuple[datetime, str]  # (time, id) of the last row of a page
# A cursor is [kind, *sort key]: `kind` keeps one list's cursor out of another.
TIME_CURSOR = tuple[str, datetime, str]
NAME_CURSOR = tuple[str, str]


def encode_cursor(kind: str, key: Sequence[Any]) -> str:
    """The opaque cursor after `key`."""
    raw = msgspec.json.encode([kind, *key])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(params: dict[str, str], kind: str, cursor_type: Any) -> Any:
    """The sort key a cursor holds (None without a cursor), or a 422 naming `cursor`."""
    cursor = params.get("cursor")
    if cursor is None:
        return None
    try:
        tagged = msgspec.json.decode(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)), type=cursor_type)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        tagged = None
    # Every cursor given holds a stored key, and no stored string holds a NUL.
    if tagged is None or tagged[0] != kind or any(isinstance(v, str) and "\x00" in v for v in tagged):
        raise invalid("cursor", "not a cursor this endpoint gave; pass the previous page's next_cursor unchanged")
    return tuple(tagged[1:])


def page_of(kind: str, rows: Sequence[T], limit: int, key: Callable[[T], Sequence[Any]]) -> tuple[list[T], str | None]:
    """A page read with `limit + 1` rows: its first `limit` rows, and the cursor after them (None on the last page)."""
    cursor = encode_cursor(kind, key(rows[limit - 1])) if len(rows) > limit else None
    return list(rows[:limit]), cursor


@dataclass(frozen=True)
class Listing:
    """A table listed newest first by (`time`, `id`), the order one of its indexes holds."""

    table: str
    columns: tuple[str, ...]
    time: str
    id: str


def newest_first(
    listing: Listing,
    where: Sequence[sql.Composable],
    args: Sequence[Any],
    window: tuple[datetime | None, datetime | None],
    after: TimeKey | None,
    limit: int,
) -> tuple[sql.Composed, list[Any]]:
    """One page of a listing, newest first, and its arguments.

    `where` (with `args`) is the list's own filter; the page adds the time
    window [since, until) and the cursor, and asks for `limit + 1` rows to tell
    whether another page follows.
    """
    time, key = sql.Identifier(listing.time), sql.Identifier(listing.id)
    since, until = window
    conditions, values = [*where], [*args]
    if since is not None:
        conditions.append(sql.SQL("{} >= %s").format(time))
        values.append(since)
    if until is not None:
        conditions.append(sql.SQL("{} < %s").format(time))
        values.append(until)
    if after is not None:
        conditions.append(sql.SQL("({}, {}) < (%s, %s)").format(time, key))
        values.extend(after)
    query = sql.SQL("SELECT {cols} FROM {table} WHERE {where} ORDER BY {time} DESC, {key} DESC LIMIT %s").format(
        cols=select_list(listing.columns),
        table=sql.Identifier(listing.table),
        where=sql.SQL(" AND ").join(conditions),
        time=time,
        key=key,
    )
    return query, [*values, limit + 1]
