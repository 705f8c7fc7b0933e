"""The bench's load generator opens connections as a fleet of CLIs would (bench/load.py)."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter

from bench import load
from bench.gen import Push


class _Stream:
    def __init__(self) -> None:
        self.n = 0

    def next(self) -> Push:
        self.n += 1
        return Push(0, 0, b'{"push_id": "%d"}' % self.n, 1, str(self.n), False)


async def _serve_and_load(pushes_per_connection: int, drop_every: int = 0) -> tuple[Counter[int], load.LoadResult]:
    """A server answering 202, counting requests per connection; 2 connections, 0.3 s.

    drop_every=N: every Nth request is met by closing the connection unanswered.
    """
    served: Counter[int] = Counter()
    numbers = itertools.count()
    requests = itertools.count(1)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        me = next(numbers)
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:  # the client closed the connection
                break
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            if drop_every and next(requests) % drop_every == 0:
                break
            served[me] += 1
            writer.write(b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await load.run(
            load.Target(port, ["key"]),
            _Stream(),  # type: ignore[arg-type]
            connections=2,
            warmup_s=0.0,
            duration_s=0.3,
            rate=200.0,
            pushes_per_connection=pushes_per_connection,
        )
    finally:
        server.close()
    return served, result


def test_connections_are_closed_after_k_pushes_and_reopened() -> None:
    served, result = asyncio.run(_serve_and_load(pushes_per_connection=3))
    assert result.errors == 0 and all(s.status == 202 for s in result.samples)
    assert sum(served.values()) == len(result.samples) >= 50
    assert max(served.values()) <= 3
    assert len(served) >= len(result.samples) // 3


def test_without_a_limit_each_connection_lasts_the_whole_phase() -> None:
    served, result = asyncio.run(_serve_and_load(pushes_per_connection=0))
    assert len(served) == 2
    assert sum(served.values()) == len(result.samples) >= 50


def test_a_connection_lost_mid_push_counts_an_error_and_the_next_push_reconnects() -> None:
    served, result = asyncio.run(_serve_and_load(pushes_per_connection=4, drop_every=3))
    assert result.errors >= 10
    assert all(s.status == 202 for s in result.samples)
    assert sum(served.values()) == len(result.samples) >= 30
    assert max(served.values()) <= 4
