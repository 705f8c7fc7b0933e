"""The api's local spool (spool/store.py) on a real SQLite file, and the key lookup without Postgres."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import fakeredis
import psycopg
import pytest

from api.auth import KeyStore
from api.errors import ApiError
from spool.store import Spool, SpoolFull, read_stats
from store.keys import KEY_MIRROR, KEY_MIRROR_REFRESHED, hash_key, mirror_value

KEY = "st_live_" + "k" * 43


def put(spool: Spool, push_id: str, payload: bytes = b"payload", workspace: str = "ws_1") -> bytes | None:
    return spool.put(workspace, push_id, "key_1", payload, b'{"answer":"' + push_id.encode() + b'"}', 3)


def test_a_spooled_batch_is_read_back_whole_and_its_push_id_answers_its_first_answer(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", 10_000)
    assert put(spool, "p1", b"\x00\x01batch") is None
    assert put(spool, "p1", b"another body") == b'{"answer":"p1"}'  # the same push id again: not a second copy
    assert put(spool, "p1", workspace="ws_2") is None  # another workspace's push id is another push
    [first, second] = spool.lease("drainer-a")
    assert (first.push_id, first.payload, first.records) == ("p1", b"\x00\x01batch", 3)
    assert second.workspace_id == "ws_2"
    assert spool.stats().batches == 2


def test_two_drainers_never_lease_the_same_batch_and_a_dead_ones_lease_expires(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    a, b = Spool(path, 10_000), Spool(path, 10_000)  # two api processes of one host
    for i in range(5):
        put(a, f"p{i}")
    taken_a = a.lease("a", limit=3)
    taken_b = b.lease("b", limit=10)
    assert {x.id for x in taken_a}.isdisjoint({x.id for x in taken_b})
    assert len(taken_a) + len(taken_b) == 5
    assert b.remove("b", [x.id for x in taken_a]) == 0  # not b's to delete
    # "a" dies holding its lease: once it expires, another drainer takes those batches.
    assert b.lease("b", limit=10) == []  # all leased: a's for another 30 s
    expired = Spool(path, 10_000)
    with expired._lock:  # the lease ran out (time passing, without waiting 30 s)
        expired._conn.execute("UPDATE spooled SET lease_until = 0 WHERE lease_owner = 'a'")
    assert sorted(x.push_id for x in b.lease("b", limit=10)) == sorted(x.push_id for x in taken_a)


def test_the_spool_refuses_past_its_size_and_frees_room_as_it_drains(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", 100)
    put(spool, "p1", b"x" * 60)
    with pytest.raises(SpoolFull, match="SPOOL_MAX_BYTES"):
        put(spool, "p2", b"x" * 60)
    [batch] = spool.lease("d")
    assert spool.remove("d", [batch.id]) == 1
    assert put(spool, "p2", b"x" * 60) is None
    assert spool.writable() is None
    assert spool.stats().batches == 1


def test_what_was_spooled_survives_a_process_killed_without_closing(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    script = (
        "import os, sys; sys.path.insert(0, sys.argv[2]); from spool.store import Spool; "
        "s = Spool(sys.argv[1], 10**6); s.put('ws', 'p-killed', 'k', b'body', b'{}', 1); os._exit(9)"
    )
    done = subprocess.run([sys.executable, "-c", script, str(path), str(Path(__file__).parents[2])], timeout=30)
    assert done.returncode == 9
    stats = read_stats(path)
    assert stats is not None and stats.batches == 1
    assert [b.push_id for b in Spool(path, 10**6).lease("next")] == ["p-killed"]


def test_read_stats_says_none_where_there_is_no_spool(tmp_path: Path) -> None:
    assert read_stats(tmp_path / "none.db") is None
    put(Spool(tmp_path / "s.db", 1000), "p1")
    stats = read_stats(tmp_path / "s.db")
    assert stats is not None and stats.batches == 1 and stats.oldest_age_s(time.time() + 5) >= 5


# -- keys without Postgres --------------------------------------------------------------------


class DownPool:
    """A pool whose Postgres is down: every connection attempt fails."""

    def connection(self, timeout: float) -> DownPool:
        return self

    async def __aenter__(self) -> None:
        raise psycopg.OperationalError("connection refused")

    async def __aexit__(self, *exc: object) -> None:
        return None


def test_with_postgres_down_a_key_is_found_in_the_mirror() -> None:
    async def run() -> object:
        redis = fakeredis.FakeAsyncRedis()
        await redis.hset(KEY_MIRROR, hash_key(KEY), mirror_value("ws_1", "key_1", revoked=False))
        return await KeyStore(DownPool(), 30, redis).lookup(KEY)  # type: ignore[arg-type]

    found = asyncio.run(run())
    assert found is not None and (found.key_id, found.workspace_id) == ("key_1", "ws_1")  # type: ignore[attr-defined]


def test_with_postgres_down_a_key_revoked_in_the_mirror_stays_refused() -> None:
    async def run() -> object:
        redis = fakeredis.FakeAsyncRedis()
        await redis.hset(KEY_MIRROR, hash_key(KEY), mirror_value("ws_1", "key_1", revoked=True))
        return await KeyStore(DownPool(), 30, redis).lookup(KEY)  # type: ignore[arg-type]

    assert asyncio.run(run()) is None


def test_with_postgres_down_a_key_the_full_mirror_does_not_hold_is_unknown_but_without_a_mirror_503() -> None:
    async def run() -> tuple[int, object]:
        redis = fakeredis.FakeAsyncRedis()
        try:
            await KeyStore(DownPool(), 30, redis).lookup(KEY)  # type: ignore[arg-type]
        except ApiError as exc:
            status = exc.status
        await redis.set(KEY_MIRROR_REFRESHED, "1")
        return status, await KeyStore(DownPool(), 30, redis).lookup(KEY)  # type: ignore[arg-type]

    assert asyncio.run(run()) == (503, None)


def test_with_postgres_and_redis_down_the_last_answer_of_this_process_still_serves() -> None:
    server = fakeredis.FakeServer()

    async def run() -> tuple[object, object, ApiError]:
        redis = fakeredis.FakeAsyncRedis(server=server)
        await redis.hset(KEY_MIRROR, hash_key(KEY), mirror_value("ws_1", "key_1", revoked=False))
        store = KeyStore(DownPool(), 0.0, redis)  # type: ignore[arg-type]
        first = await store.lookup(KEY)  # from the mirror; remembered by the process
        server.connected = False
        stale = await store.lookup(KEY)  # the entry is stale (TTL 0), but nothing fresher can be had
        try:
            await store.lookup("st_live_" + "o" * 43)
        except ApiError as exc:
            return first, stale, exc
        raise AssertionError("a key nobody knows was accepted")

    first, stale, refused = asyncio.run(run())
    assert first is not None and stale == first
    assert refused.status == 503 and "Postgres is down" in refused.message
