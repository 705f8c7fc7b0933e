"""The app in this process, with fakeredis and keys held in memory: the unit tier's way in.

The fixtures built on it are in tests/unit/conftest.py; the fuzz harness
(tests/unit/fuzzing.py) runs the same app.
"""

from __future__ import annotations

from typing import Any

from starlette.testclient import TestClient

from api.app import create_app
from api.auth import ApiKey
from runtime.settings import Settings

KEY = "st_live_" + "a" * 43
OTHER_KEY = "st_live_" + "b" * 43
WORKSPACE = "ws_test"


class MemoryKeys:
    """Stands in for the Postgres-backed KeyStore (the api's only use of Postgres here)."""

    def __init__(self, keys: dict[str, ApiKey]) -> None:
        self.keys = keys

    async def lookup(self, key: str) -> ApiKey | None:
        return self.keys.get(key)


def make_client(settings: Settings, redis: Any) -> TestClient:
    """A TestClient of the app on `redis` (a fakeredis client) that knows KEY (of WORKSPACE) and OTHER_KEY."""
    keys = MemoryKeys({KEY: ApiKey("key_1", WORKSPACE), OTHER_KEY: ApiKey("key_2", "ws_other")})
    return TestClient(create_app(settings, redis=redis, keys=keys))
