"""Every Redis client of the service is made here: the api's, the workers', the ops command line's.

`REDIS_URL` is either a plain Redis URL (`redis://`, `rediss://`, `unix://`: redis-py's own
`from_url`) or a Sentinel one:

    redis+sentinel://[:password@]host:port[,host:port...]/service_name[/db]

For a Sentinel URL the client is redis-py's `Sentinel(...).master_for(service_name)`: its
connection pool asks the sentinels where the primary is whenever it opens a connection, and a
connection to a primary that was demoted (a `READONLY` answer) is dropped and reopened to the
new one. So after a failover each process follows the new primary on its next command, with no
restart: the command in flight fails once (a ConnectionError, which the api treats as "Redis
cannot take it" and spools, and a worker as a lost claim that is retried).

The password, if any, is the data nodes' (`requirepass`); the sentinels are asked without one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel

SENTINEL_SCHEME = "redis+sentinel"
# How long a sentinel may take to answer "where is the primary" (the client asks at each connect).
SENTINEL_TIMEOUT_S = 2.0


class RedisUrlError(ValueError):
    """REDIS_URL cannot be read."""


@dataclass(frozen=True)
class SentinelTarget:
    """What a `redis+sentinel://` URL names."""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int
    password: str | None


def parse_sentinel_url(url: str) -> SentinelTarget | None:
    """The sentinels, service and db of a `redis+sentinel://` URL; None for any other URL."""
    if not url.startswith(SENTINEL_SCHEME + "://"):
        return None
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    sentinels = []
    for item in hosts.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise RedisUrlError(f"REDIS_URL: sentinel address {item!r} must be host:port")
        sentinels.append((host.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise RedisUrlError("REDIS_URL: a sentinel URL reads redis+sentinel://host:port[,host:port]/service_name[/db]")
    if len(path) == 2 and not path[1].isdigit():
        raise RedisUrlError(f"REDIS_URL: the database must be a number, got {path[1]!r}")
    password = unquote(parts.password) if parts.password else None
    return SentinelTarget(tuple(sentinels), unquote(path[0]), int(path[1]) if len(path) == 2 else 0, password)


def check_url(url: str) -> None:
    """Raise RedisUrlError if `url` is neither a Redis URL redis-py reads nor a Sentinel URL (no I/O)."""
    if parse_sentinel_url(url) is None:
        try:
            Redis.from_url(url).close()  # parses only: connections open at the first command
        except ValueError as exc:
            raise RedisUrlError(f"REDIS_URL: {exc}") from None


def _sentinel_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    return {
        "socket_timeout": options.get("socket_timeout") or SENTINEL_TIMEOUT_S,
        "socket_connect_timeout": options.get("socket_connect_timeout") or SENTINEL_TIMEOUT_S,
    }


def _client(url: str, plain: Any, sentinel_class: Any, options: dict[str, Any]) -> Any:
    target = parse_sentinel_url(url)
    if target is None:
        return plain.from_url(url, **options)
    sentinel = sentinel_class(list(target.sentinels), sentinel_kwargs=_sentinel_kwargs(options))
    return sentinel.master_for(target.service_name, db=target.db, password=target.password, **options)


def redis_client(url: str, **options: Any) -> Redis:
    """A sync client for REDIS_URL (a Sentinel-managed one for `redis+sentinel://`); `options` go to redis-py."""
    client: Redis = _client(url, Redis, Sentinel, options)
    return client


def async_redis_client(url: str, **options: Any) -> AsyncRedis:
    """An asyncio client for REDIS_URL (a Sentinel-managed one for `redis+sentinel://`)."""
    client: AsyncRedis = _client(url, AsyncRedis, AsyncSentinel, options)
    return client
