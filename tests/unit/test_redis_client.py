"""REDIS_URL: plain Redis URLs and `redis+sentinel://` ones, read by the one client factory."""

from __future__ import annotations

import pytest
from redis.sentinel import SentinelConnectionPool

from runtime.redis_client import SentinelTarget, parse_sentinel_url, redis_client
from runtime.settings import Settings, SettingsError


def test_a_sentinel_url_names_its_sentinels_service_and_db() -> None:
    assert parse_sentinel_url("redis+sentinel://:pw@s1:26379,10.0.0.2:26380/ingest/2") == SentinelTarget(
        (("s1", 26379), ("10.0.0.2", 26380)), "ingest", 2, "pw"
    )
    assert parse_sentinel_url("redis+sentinel://s1:26379/ingest").db == 0  # type: ignore[union-attr]
    assert parse_sentinel_url("redis://127.0.0.1:6379/0") is None


def test_a_sentinel_url_gives_a_client_that_asks_the_sentinels() -> None:
    client = redis_client("redis+sentinel://127.0.0.1:1,127.0.0.1:2/ingest/3", socket_timeout=5)
    assert isinstance(client.connection_pool, SentinelConnectionPool)
    assert client.connection_pool.service_name == "ingest"
    assert client.connection_pool.connection_kwargs["db"] == 3


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://s1:26379", "service_name"),
        ("redis+sentinel://s1/ingest", "host:port"),
        ("redis+sentinel://s1:26379/ingest/zero", "must be a number"),
        ("http://redis:6379/0", "REDIS_URL"),
    ],
)
def test_a_bad_redis_url_is_a_settings_error_naming_it(monkeypatch: pytest.MonkeyPatch, url: str, says: str) -> None:
    monkeypatch.setenv("REDIS_URL", url)
    with pytest.raises(SettingsError, match=says):
        Settings.from_env()


def test_a_sentinel_password_is_never_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis+sentinel://:s3cret@s1:26379,s2:26379/ingest/0")
    assert Settings.from_env().redacted()["redis_url"] == "redis+sentinel://:***@s1:26379,s2:26379/ingest/0"
