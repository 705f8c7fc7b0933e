"""The api's local durable spool: where a push goes when Redis cannot take it (SPEC 2.3, 2.5).

The real CLI never sends a refused batch again, so a push that Redis cannot
hold (unreachable, or past its memory headroom) is written here, exactly as it
would have been queued, and fsynced before the 202. A drainer (`api.intake.SpoolDrainer`)
moves spooled batches into the queue, oldest first, once Redis can take them.

The store is SQLite (the standard library's `sqlite3`) in WAL mode with
`synchronous=FULL`: every commit is fsynced, a crash or SIGKILL never leaves a
half-written batch, and several api processes on one host share one file
safely (SQLite's own locking). A drainer leases the batches it moves, so two
processes never drain the same batch at once; a lease left by a killed process
expires and another drains it. Draining is idempotent anyway: the enqueue
script skips a push id Redis has already accepted (counted as a duplicate).

Why one module of ~500 lines: the spool's tables, its lease rules and its size
accounting are one transaction design; `Spool` (blocking) and `AsyncSpool` (the
api's thread-hop wrapper) must change together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000  # another api process holding the write lock (a commit is a few ms)
LEASE_S = 30.0  # a drainer that died mid-drain releases its batches after this
DRAIN_BATCH = 50  # batches leased per round
DRAIN_IDLE_S = 0.5  # pause between rounds while the spool is empty or Redis cannot take more

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spooled (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- drain order: oldest first
    workspace_id TEXT NOT NULL,
    push_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    payload BLOB NOT NULL,       -- the job argument, exactly as it would have been queued
    answer BLOB NOT NULL,        -- the 202's body, for the 200 duplicate answer
    records INTEGER NOT NULL,    -- accepted records (the shared rate counter)
    bytes INTEGER NOT NULL,
    spooled_at REAL NOT NULL,    -- unix time
    lease_owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0,
    UNIQUE (workspace_id, push_id)
);
CREATE TABLE IF NOT EXISTS spool_size (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    batches INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
INSERT OR IGNORE INTO spool_size VALUES (1, 0, 0);
"""

# -- streamed pushes (past MAX_BODY_BYTES): the body in chunks, never whole in memory -----------
# A push is written chunk by chunk while it streams in (push_id NULL: it is learned from the
# body), then completed in one commit (fsynced) before its 202. Its bytes count in spool_size
# as they arrive, its batch once complete. An upload its api abandoned (killed mid-body) is
# swept after ABANDONED_UPLOAD_S.
_STREAMED_SCHEMA = """
CREATE TABLE IF NOT EXISTS streamed (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- drain order: oldest first
    workspace_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    push_id TEXT,                -- NULL until the upload is complete
    payload BLOB,                -- the job argument without its body (schema.batches.QueuedBatch)
    answer BLOB,                 -- the 202's body, for the 200 duplicate answer
    records INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    chunks INTEGER NOT NULL DEFAULT 0,
    started_at REAL NOT NULL,    -- unix time
    spooled_at REAL,             -- unix time the upload completed; NULL while it streams in
    lease_owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS streamed_push ON streamed (workspace_id, push_id);
CREATE TABLE IF NOT EXISTS streamed_chunks (
    streamed_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (streamed_id, seq)
);
"""
ABANDONED_UPLOAD_S = 600.0  # an upload not completed in this long lost its api (bodies take <= BODY_READ_TIMEOUT_S)


class SpoolFull(Exception):
    """The spool is at SPOOL_MAX_BYTES: the batch was not written."""


class SpoolError(Exception):
    """The spool could not be written (disk full, read-only, corrupt...): the batch was not written."""


@dataclass(frozen=True)
class _Leased:
    """What the drainer needs of any spooled push to enqueue it."""

    id: int
    workspace_id: str
    push_id: str
    key_id: str
    payload: bytes  # the job argument
    answer: bytes
    records: int


@dataclass(frozen=True)
class Spooled(_Leased):
    """One spooled batch, as the drainer reads it back."""

    spooled_at: float


@dataclass(frozen=True)
class StreamedSpooled(_Leased):
    """One complete streamed push, as the drainer reads it back (its chunks are read one at a time)."""

    bytes: int
    chunks: int


@dataclass(frozen=True)
class SpoolStats:
    batches: int
    bytes: int
    oldest_spooled_at: float | None  # unix time

    def oldest_age_s(self, now: float | None = None) -> float:
        if self.oldest_spooled_at is None:
            return 0.0
        return max(0.0, (time.time() if now is None else now) - self.oldest_spooled_at)


class Spool:
    """The SQLite file at SPOOL_PATH. Thread-safe; blocking (the api calls it through `AsyncSpool`)."""

    def __init__(self, path: str | Path, max_bytes: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE takes the write lock at once).
        self._conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")  # fsync at every commit: a 202 survives a power cut
        self._conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        # Idempotent (IF NOT EXISTS, OR IGNORE): every api process of the host runs it at start.
        self._conn.executescript(_SCHEMA)
        self._conn.executescript(_STREAMED_SCHEMA)

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise SpoolError(f"{type(exc).__name__}: {exc}") from exc
            try:
                yield self._conn
            except sqlite3.Error as exc:  # the disk refused (full, read-only, corrupt): the batch is not written
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise SpoolError(f"{type(exc).__name__}: {exc}") from exc
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise SpoolError(f"{type(exc).__name__}: {exc}") from exc

    def put(
        self, workspace_id: str, push_id: str, key_id: str, payload: bytes, answer: bytes, records: int
    ) -> bytes | None:
        """Write a batch durably; return the first answer instead if this push id is spooled already.

        Raises SpoolFull past SPOOL_MAX_BYTES and SpoolError when the disk refuses.
        """
        size = len(payload) + len(answer)
        with self._write() as conn:
            prior = conn.execute(
                "SELECT answer FROM spooled WHERE workspace_id = ? AND push_id = ?", (workspace_id, push_id)
            ).fetchone()
            if prior is not None:
                return bytes(prior[0])
            (held,) = conn.execute("SELECT bytes FROM spool_size").fetchone()
            if held + size > self.max_bytes:
                raise SpoolFull(f"the spool holds {held} bytes of its {self.max_bytes} (SPOOL_MAX_BYTES)")
            conn.execute(
                "INSERT INTO spooled (workspace_id, push_id, key_id, payload, answer, records, bytes, spooled_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (workspace_id, push_id, key_id, payload, answer, records, size, time.time()),
            )
            conn.execute("UPDATE spool_size SET batches = batches + 1, bytes = bytes + ?", (size,))
        return None

    def first_answer(self, workspace_id: str, push_id: str) -> bytes | None:
        """The answer a push id still in the spool (a batch, or a complete streamed push) was accepted with, or None."""
        with self._lock:
            row = self._conn.execute(
                "SELECT answer FROM spooled WHERE workspace_id = ?1 AND push_id = ?2"
                " UNION ALL SELECT answer FROM streamed WHERE workspace_id = ?1 AND push_id = ?2 AND answer IS NOT NULL"
                " LIMIT 1",
                (workspace_id, push_id),
            ).fetchone()
        return None if row is None else bytes(row[0])

    def lease(self, owner: str, limit: int = DRAIN_BATCH, lease_s: float = LEASE_S) -> list[Spooled]:
        """Up to `limit` of the oldest batches no live drainer holds, now held by `owner` for `lease_s`."""
        now = time.time()
        with self._write() as conn:
            rows = conn.execute(
                "SELECT id, workspace_id, push_id, key_id, payload, answer, records, spooled_at FROM spooled"
                " WHERE lease_until < ? ORDER BY id LIMIT ?",
                (now, limit),
            ).fetchall()
            if rows:
                conn.executemany(
                    "UPDATE spooled SET lease_owner = ?, lease_until = ? WHERE id = ?",
                    [(owner, now + lease_s, row[0]) for row in rows],
                )
        return [Spooled(r[0], r[1], r[2], r[3], bytes(r[4]), bytes(r[5]), r[6], r[7]) for r in rows]

    def remove(self, owner: str, ids: list[int]) -> int:
        """Delete drained batches this owner still leases; return how many went."""
        if not ids:
            return 0
        with self._write() as conn:
            marks = ",".join("?" * len(ids))
            (count, size) = conn.execute(
                f"SELECT count(*), coalesce(sum(bytes), 0) FROM spooled WHERE lease_owner = ? AND id IN ({marks})",
                (owner, *ids),
            ).fetchone()
            conn.execute(f"DELETE FROM spooled WHERE lease_owner = ? AND id IN ({marks})", (owner, *ids))
            conn.execute("UPDATE spool_size SET batches = batches - ?, bytes = bytes - ?", (count, size))
        return int(count)

    def release(self, owner: str, ids: list[int]) -> None:
        """Give leased batches back (Redis failed mid-drain): the next round takes them again."""
        if not ids:
            return
        with self._write() as conn:
            marks = ",".join("?" * len(ids))
            conn.execute(
                f"UPDATE spooled SET lease_owner = NULL, lease_until = 0 WHERE lease_owner = ? AND id IN ({marks})",
                (owner, *ids),
            )

    def drop_workspace(self, workspace_id: str) -> int:
        """Delete a workspace's spooled batches and streamed pushes (its data is being deleted); return how many."""
        with self._write() as conn:
            (count, size) = conn.execute(
                "SELECT count(*), coalesce(sum(bytes), 0) FROM spooled WHERE workspace_id = ?", (workspace_id,)
            ).fetchone()
            conn.execute("DELETE FROM spooled WHERE workspace_id = ?", (workspace_id,))
            conn.execute("UPDATE spool_size SET batches = batches - ?, bytes = bytes - ?", (count, size))
            streamed = self._delete_streamed(conn, "workspace_id = ?", (workspace_id,))  # uploads too, complete or not
        return int(count) + streamed

    def stats(self) -> SpoolStats:
        with self._lock:
            return _stats(self._conn)

    def writable(self) -> str | None:
        """None if a batch could be written now, else why not."""
        try:
            with self._write() as conn:
                (held,) = conn.execute("SELECT bytes FROM spool_size").fetchone()
        except SpoolError as exc:
            return f"spool: {exc}"
        if held >= self.max_bytes:
            return f"spool: full ({held} bytes, SPOOL_MAX_BYTES={self.max_bytes})"
        return None

    # -- streamed pushes ---------------------------------------------------------------------

    def begin_streamed(self, workspace_id: str, key_id: str) -> int:
        """Start the upload of a push too big for memory; return its id. SpoolFull if the spool is full already."""
        with self._write() as conn:
            (held,) = conn.execute("SELECT bytes FROM spool_size").fetchone()
            if held >= self.max_bytes:
                raise SpoolFull(f"the spool holds {held} bytes of its {self.max_bytes} (SPOOL_MAX_BYTES)")
            cur = conn.execute(
                "INSERT INTO streamed (workspace_id, key_id, started_at) VALUES (?, ?, ?)",
                (workspace_id, key_id, time.time()),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

    def put_streamed_chunk(self, streamed_id: int, seq: int, data: bytes) -> None:
        """Append one chunk of an upload (committed, so fsynced: memory holds one chunk, never the body)."""
        with self._write() as conn:
            (held,) = conn.execute("SELECT bytes FROM spool_size").fetchone()
            if held + len(data) > self.max_bytes:
                raise SpoolFull(f"the spool holds {held} bytes of its {self.max_bytes} (SPOOL_MAX_BYTES)")
            conn.execute(
                "INSERT INTO streamed_chunks (streamed_id, seq, data) VALUES (?, ?, ?)", (streamed_id, seq, data)
            )
            conn.execute(
                "UPDATE streamed SET bytes = bytes + ?, chunks = chunks + 1 WHERE id = ?", (len(data), streamed_id)
            )
            conn.execute("UPDATE spool_size SET bytes = bytes + ?", (len(data),))

    def finish_streamed(
        self, streamed_id: int, push_id: str, payload: bytes, answer: bytes, records: int
    ) -> bytes | None:
        """Complete an upload durably (one fsynced commit); return the first answer instead if the push id is spooled already.

        On a prior answer the upload is left for the caller to discard.
        """
        with self._write() as conn:
            (workspace_id,) = conn.execute("SELECT workspace_id FROM streamed WHERE id = ?", (streamed_id,)).fetchone()
            prior = conn.execute(
                "SELECT answer FROM spooled WHERE workspace_id = ? AND push_id = ?"
                " UNION ALL SELECT answer FROM streamed WHERE workspace_id = ? AND push_id = ?",
                (workspace_id, push_id, workspace_id, push_id),
            ).fetchone()
            if prior is not None:
                return bytes(prior[0])
            conn.execute(
                "UPDATE streamed SET push_id = ?, payload = ?, answer = ?, records = ?, spooled_at = ? WHERE id = ?",
                (push_id, payload, answer, records, time.time(), streamed_id),
            )
            conn.execute("UPDATE spool_size SET batches = batches + 1")
        return None

    def _delete_streamed(self, conn: sqlite3.Connection, where: str, args: tuple[Any, ...]) -> int:
        rows = conn.execute(f"SELECT id, bytes, spooled_at FROM streamed WHERE {where}", args).fetchall()
        for streamed_id, size, spooled_at in rows:
            conn.execute("DELETE FROM streamed_chunks WHERE streamed_id = ?", (streamed_id,))
            conn.execute("DELETE FROM streamed WHERE id = ?", (streamed_id,))
            complete = 1 if spooled_at is not None else 0
            conn.execute("UPDATE spool_size SET batches = batches - ?, bytes = bytes - ?", (complete, size))
        return len(rows)

    def discard_streamed(self, streamed_id: int) -> None:
        """Delete an upload that will not be answered 202 (refused, a duplicate, or its client gone)."""
        with self._write() as conn:
            self._delete_streamed(conn, "id = ?", (streamed_id,))

    def sweep_abandoned_streamed(self, older_than_s: float = ABANDONED_UPLOAD_S) -> int:
        """Delete uploads never completed (their api died mid-body); return how many."""
        with self._write() as conn:
            return self._delete_streamed(conn, "spooled_at IS NULL AND started_at < ?", (time.time() - older_than_s,))

    def lease_streamed(self, owner: str, lease_s: float = LEASE_S) -> StreamedSpooled | None:
        """The oldest complete streamed push no live drainer holds, now held by `owner`; None if there is none."""
        now = time.time()
        with self._write() as conn:
            row = conn.execute(
                "SELECT id, workspace_id, push_id, key_id, payload, answer, records, bytes, chunks FROM streamed"
                " WHERE spooled_at IS NOT NULL AND lease_until < ? ORDER BY id LIMIT 1",
                (now,),
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE streamed SET lease_owner = ?, lease_until = ? WHERE id = ?", (owner, now + lease_s, row[0])
            )
        return StreamedSpooled(row[0], row[1], row[2], row[3], bytes(row[4]), bytes(row[5]), *row[6:])

    def streamed_chunk(self, streamed_id: int, seq: int) -> bytes:
        """One chunk of a streamed push, in order from 0."""
        with self._lock:
            (data,) = self._conn.execute(
                "SELECT data FROM streamed_chunks WHERE streamed_id = ? AND seq = ?", (streamed_id, seq)
            ).fetchone()
        return bytes(data)

    def remove_streamed(self, owner: str, streamed_id: int) -> int:
        """Delete a drained streamed push this owner still leases; return 1 if it went."""
        with self._write() as conn:
            return self._delete_streamed(conn, "id = ? AND lease_owner = ?", (streamed_id, owner))

    def release_streamed(self, owner: str, streamed_id: int) -> None:
        """Give a leased streamed push back (Redis failed mid-drain)."""
        with self._write() as conn:
            conn.execute(
                "UPDATE streamed SET lease_owner = NULL, lease_until = 0 WHERE id = ? AND lease_owner = ?",
                (streamed_id, owner),
            )

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def read_stats(path: str | Path) -> SpoolStats | None:
    """What a spool file holds, read-only (the ops command line); None if there is no spool there."""
    return _read_only(path, _stats)


def count_workspace(path: str | Path, workspace_id: str) -> int | None:
    """How many batches and streamed pushes of a workspace a spool file holds, read-only; None if there is no spool there."""

    def count(conn: sqlite3.Connection) -> int:
        (held,) = conn.execute(
            "SELECT (SELECT count(*) FROM spooled WHERE workspace_id = ?1)"
            " + (SELECT count(*) FROM streamed WHERE workspace_id = ?1)",
            (workspace_id,),
        ).fetchone()
        return int(held)

    return _read_only(path, count)


def _read_only(path: str | Path, read: Callable[[sqlite3.Connection], T]) -> T | None:
    """`read(conn)` on the spool file opened read-only; None if there is no spool there or it cannot be read."""
    path = Path(path)
    if not path.exists():
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        return read(conn)
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def _stats(conn: sqlite3.Connection) -> SpoolStats:
    """Batches and bytes held (streamed pushes included, once complete), and the oldest one's spool time."""
    batches, size = conn.execute("SELECT batches, bytes FROM spool_size").fetchone()
    (oldest,) = conn.execute(
        "SELECT min(t) FROM (SELECT min(spooled_at) AS t FROM spooled UNION ALL SELECT min(spooled_at) FROM streamed)"
    ).fetchone()
    return SpoolStats(int(batches), int(size), oldest)


class AsyncSpool:
    """The spool for the event loop: every call runs on one thread of its own, in order."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        # Known to hold batches (set by a put or a stats read, cleared by a stats read showing none):
        # while false, a push skips the spool's push-id lookup altogether.
        self.maybe_holds = True

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def put(self, *args: Any) -> bytes | None:
        prior = await self._run(self.spool.put, *args)
        self.maybe_holds = True
        return prior  # type: ignore[no-any-return]

    async def first_answer(self, workspace_id: str, push_id: str) -> bytes | None:
        if not self.maybe_holds:
            return None
        return await self._run(self.spool.first_answer, workspace_id, push_id)  # type: ignore[no-any-return]

    async def stats(self) -> SpoolStats:
        stats: SpoolStats = await self._run(self.spool.stats)
        self.maybe_holds = stats.batches > 0
        return stats

    async def lease(self, owner: str, limit: int = DRAIN_BATCH) -> list[Spooled]:
        return await self._run(self.spool.lease, owner, limit)  # type: ignore[no-any-return]

    async def remove(self, owner: str, ids: list[int]) -> int:
        return await self._run(self.spool.remove, owner, ids)  # type: ignore[no-any-return]

    async def release(self, owner: str, ids: list[int]) -> None:
        await self._run(self.spool.release, owner, ids)

    async def writable(self) -> str | None:
        return await self._run(self.spool.writable)  # type: ignore[no-any-return]

    # -- streamed pushes (see Spool) -----------------------------------------------------------

    async def begin_streamed(self, workspace_id: str, key_id: str) -> int:
        return await self._run(self.spool.begin_streamed, workspace_id, key_id)  # type: ignore[no-any-return]

    async def put_streamed_chunk(self, streamed_id: int, seq: int, data: bytes) -> None:
        await self._run(self.spool.put_streamed_chunk, streamed_id, seq, data)

    async def finish_streamed(self, *args: Any) -> bytes | None:
        prior = await self._run(self.spool.finish_streamed, *args)
        self.maybe_holds = True
        return prior  # type: ignore[no-any-return]

    async def discard_streamed(self, streamed_id: int) -> None:
        await self._run(self.spool.discard_streamed, streamed_id)

    async def sweep_abandoned_streamed(self) -> int:
        return await self._run(self.spool.sweep_abandoned_streamed)  # type: ignore[no-any-return]

    async def lease_streamed(self, owner: str) -> StreamedSpooled | None:
        return await self._run(self.spool.lease_streamed, owner)  # type: ignore[no-any-return]

    async def streamed_chunk(self, streamed_id: int, seq: int) -> bytes:
        return await self._run(self.spool.streamed_chunk, streamed_id, seq)  # type: ignore[no-any-return]

    async def remove_streamed(self, owner: str, streamed_id: int) -> int:
        return await self._run(self.spool.remove_streamed, owner, streamed_id)  # type: ignore[no-any-return]

    async def release_streamed(self, owner: str, streamed_id: int) -> None:
        await self._run(self.spool.release_streamed, owner, streamed_id)

    async def close(self) -> None:
        await self._run(self.spool.close)
        self._executor.shutdown(wait=False)


def drainer_name() -> str:
    """A lease owner unique to this process (host, pid and a random part: pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
