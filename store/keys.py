"""API keys: their format, and how they are stored (SPEC 6).

A key reads `st_live_` (or `st_test_`) followed by 43 URL-safe characters
(32 random bytes). Only its SHA-256 is stored; the full key is shown once, at
creation. A random 256-bit secret needs no slow hash: SHA-256 cannot be
brute-forced back to it, and lookups by hash stay one index probe.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

KEY_PATTERN = re.compile(r"st_(live|test)_[A-Za-z0-9_-]{32,200}")
SHOWN_PREFIX_LENGTH = 12  # "st_live_" plus 4 characters: enough to tell keys apart in a list


def generate_key(live: bool = True) -> str:
    """A new random API key."""
    return ("st_live_" if live else "st_test_") + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The stored form of a key (hex SHA-256)."""
    return hashlib.sha256(key.encode()).hexdigest()


def is_well_formed(key: str) -> bool:
    return KEY_PATTERN.fullmatch(key) is not None


def key_prefix(key: str) -> str:
    """The part of a key that may be shown again (in lists, in /alpha/verify)."""
    return key[:SHOWN_PREFIX_LENGTH]


INSERT_KEY = "INSERT INTO api_keys (key_id, workspace_id, key_hash, key_prefix) VALUES (%s, %s, %s, %s)"


@dataclass(frozen=True)
class IssuedKey:
    """A new key, its id, and the api_keys row that stores it (`INSERT_KEY` with `params`)."""

    key: str  # shown once, never stored
    key_id: str
    workspace_id: str

    @property
    def params(self) -> tuple[str, str, str, str]:
        return (self.key_id, self.workspace_id, hash_key(self.key), key_prefix(self.key))


def issue_key(workspace_id: str, live: bool = True) -> IssuedKey:
    """The one place a key is made: the api's device flow and the ops CLI execute its row."""
    return IssuedKey(generate_key(live), "key_" + secrets.token_hex(8), workspace_id)


# The key mirror (SPEC 6, issue 13): every key's hash in one Redis hash, so the api can
# authenticate a push while Postgres is down. Postgres stays the source of truth: the
# mirror is written when a key is issued or revoked, and replaced whole from Postgres
# every KEY_MIRROR_REFRESH_S (which also removes deleted keys).
KEY_MIRROR = "selftune:keys"  # hash: key hash -> mirror_value(...)
KEY_MIRROR_REFRESHED = "selftune:keys:refreshed_at"  # unix time of the last full copy (absent: never made)
KEY_MIRROR_LOCK = "selftune:keys:refresh-lock"  # one api per interval makes the full copy
_LIVE, _REVOKED = "live", "revoked"


def mirror_value(workspace_id: str, key_id: str, revoked: bool) -> str:
    """A mirror entry: 'live|revoked <key_id> <workspace_id>' (ids hold no spaces)."""
    return f"{_REVOKED if revoked else _LIVE} {key_id} {workspace_id}"


def parse_mirror_value(value: bytes | str) -> tuple[str, str, bool] | None:
    """(key_id, workspace_id, revoked) from a mirror entry, or None if it is not one."""
    text = value.decode() if isinstance(value, bytes) else value
    parts = text.split(" ")
    if len(parts) != 3 or parts[0] not in (_LIVE, _REVOKED):
        return None
    return parts[1], parts[2], parts[0] == _REVOKED
