"""A lean HTTP/1.1 keep-alive load generator on raw asyncio (uvloop) protocols.

Why not httpx2: the generator shares the 2 cores with everything it measures.
A request here costs ~4 us to build (the body is `token.join(parts)`), one
`writelines` and a bytes search for the end of the response headers, with
none of an HTTP client library's per-request machinery (request and response
models, pool bookkeeping). The client's own CPU is measured and reported with
everything else.

Two modes, both over `connections` keep-alive connections:
- closed loop (`rate=None`): each connection sends its next push as soon as
  the previous answer arrives (full speed); an optional `gate` (an
  asyncio.Event) pauses sending while it is clear, for backpressure.
- paced (`rate=R` requests/s): request i is due at t0 + i/R; latency is
  measured from that due time, so a stall delays (and counts against) every
  request behind it instead of hiding them (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.gen import Push, PushStream


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.lost = False
        self._head_end = -1
        self._length = 0
        self._status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        buf = self.buf
        if self._head_end < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            self._status = int(head[9:12])
            i = head.find(b"\r\ncontent-length:")
            if i < 0:
                self._length = 0
            else:
                j = head.find(b"\r\n", i + 2)
                self._length = int(head[i + 17 : j if j > 0 else len(head)])
            self._head_end = end + 4
        total = self._head_end + self._length
        if len(buf) < total:
            return
        body = bytes(buf[self._head_end : total])
        del buf[:total]
        self._head_end = -1
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self._status, body))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def request(self, head: bytes, body: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.writelines((head, body))
        return self.waiter


@dataclass
class Sample:
    due: float  # perf_counter: when it was sent (closed loop) or due (paced)
    done: float  # perf_counter when the answer was complete
    wall_done: float  # time.time() of the same instant (to compare with Postgres timestamps)
    status: int
    records: int
    push_id: str
    repeat: bool


@dataclass
class LoadResult:
    samples: list[Sample] = field(default_factory=list)
    errors: int = 0
    started: float = 0.0  # perf_counter
    window: tuple[float, float] = (0.0, 0.0)  # perf_counter
    wall_window: tuple[float, float] = (0.0, 0.0)  # time.time()


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


def summarize(result: LoadResult) -> dict[str, object]:
    """Throughput and latency of the requests completed inside the measurement window."""
    w0, w1 = result.window
    inside = [s for s in result.samples if w0 <= s.done < w1]
    seconds = w1 - w0
    ok = [s for s in inside if 200 <= s.status < 300]
    accepted = [s for s in inside if s.status == 202]
    statuses: dict[str, int] = {}
    for s in inside:
        statuses[str(s.status)] = statuses.get(str(s.status), 0) + 1
    lat = sorted((s.done - s.due) * 1000 for s in ok)
    return {
        "seconds": round(seconds, 3),
        "requests": len(inside),
        "ok_per_s": round(len(ok) / seconds, 1),
        "records_ok_per_s": round(sum(s.records for s in ok) / seconds, 1),
        "accepted_per_s": round(len(accepted) / seconds, 1),
        "records_accepted_per_s": round(sum(s.records for s in accepted) / seconds, 1),
        "records_ok": sum(s.records for s in ok),
        "statuses": statuses,
        "repeats": sum(s.repeat for s in inside),
        "errors": result.errors,
        "latency_ms": {
            "p50": _round(_percentile(lat, 0.50)),
            "p90": _round(_percentile(lat, 0.90)),
            "p99": _round(_percentile(lat, 0.99)),
            "max": _round(lat[-1] if lat else None),
        },
    }


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


class Target:
    """Where to push: host, port, path and the Bearer keys (one per workspace)."""

    def __init__(self, port: int, keys: list[str], path: str = "/v2/push", host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self.path = path
        self.keys = keys
        self._heads: dict[tuple[int, int], bytes] = {}

    def head(self, push: Push) -> bytes:
        k = (push.workspace, len(push.body))
        h = self._heads.get(k)
        if h is None:
            h = (
                f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Authorization: Bearer {self.keys[push.workspace]}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(push.body)}\r\n\r\n"
            ).encode()
            self._heads[k] = h
        return h

    async def connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(_Conn, self.host, self.port)
        return proto


async def run(
    target: Target,
    stream: PushStream,
    *,
    connections: int,
    warmup_s: float,
    duration_s: float,
    rate: float | None = None,
    gate: asyncio.Event | None = None,
    pushes_per_connection: int = 0,
    on_window_start: Callable[[], None] | None = None,
    on_window_end: Callable[[], None] | None = None,
) -> LoadResult:
    """Push for warmup_s + duration_s; the window is the last duration_s.

    pushes_per_connection > 0: each connection is closed after that many pushes
    and a new one opened, as the CLIs of a fleet each open one for a sync's
    pushes; 0 keeps every connection for the whole run.
    """
    loop = asyncio.get_running_loop()
    result = LoadResult()
    t0 = time.perf_counter()
    result.started = t0
    w0, w1 = t0 + warmup_s, t0 + warmup_s + duration_s
    result.window = (w0, w1)
    wall0 = time.time()
    result.wall_window = (wall0 + warmup_s, wall0 + warmup_s + duration_s)
    if on_window_start:
        loop.call_later(warmup_s, on_window_start)
    if on_window_end:
        loop.call_later(warmup_s + duration_s, on_window_end)
    slot = 0
    samples = result.samples

    async def one_connection() -> None:
        nonlocal slot
        conn = await target.connect()
        sent = 0
        try:
            while True:
                if rate is None:
                    if gate is not None and not gate.is_set():
                        await gate.wait()
                    due = time.perf_counter()
                    if due >= w1:
                        return
                else:
                    i = slot
                    slot += 1
                    due = t0 + i / rate
                    if due >= w1:
                        return
                    delay = due - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                push = stream.next()
                try:
                    # After the wait, so that a new connection's setup counts in the push's latency.
                    if conn.lost or 0 < pushes_per_connection <= sent:
                        conn.close()
                        conn = await target.connect()
                        sent = 0
                    status, _ = await conn.request(target.head(push), push.body)
                except OSError:  # refused, reset, or lost mid-answer: the next push reconnects
                    result.errors += 1
                    continue
                samples.append(
                    Sample(due, time.perf_counter(), time.time(), status, push.records, push.push_id, push.repeat)
                )
                sent += 1
        finally:
            conn.close()

    await asyncio.gather(*(one_connection() for _ in range(connections)))
    return result
