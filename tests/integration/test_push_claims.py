"""The push row's claim (workers.writer.claim_push) on real Postgres: states a reader can see, one writer per push."""

from __future__ import annotations

import threading

import psycopg
import pytest

from bench import samples
from tests.support import batch_of, write_queued
from workers import db as worker_db
from workers.writer import claim_push, finish_push


def test_a_push_row_is_only_ever_processed_or_failed(db: psycopg.Connection) -> None:
    # 'processing' was written and replaced inside one transaction: no reader could see it (migration 0005).
    write_queued(db, batch_of({"sessions": [samples.session(1)]}, push_id="seen"))
    assert db.execute("SELECT status FROM pushes").fetchall() == [("processed",)]
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute("UPDATE pushes SET status = 'processing'")


def test_a_second_attempt_on_the_same_push_waits_for_the_first_then_is_a_no_op(
    db: psycopg.Connection, database_url: str
) -> None:
    batch = batch_of({"sessions": [samples.session(1)]}, push_id="twice")
    first = worker_db.connect(database_url)
    second = worker_db.connect(database_url)
    seen: dict[str, bool] = {}
    try:
        with first.transaction():
            assert claim_push(first, batch) is False  # new: write it
            waiter = threading.Thread(target=lambda: seen.update(second=claim_push(second, batch)))
            waiter.start()
            waiter.join(timeout=1.0)
            assert waiter.is_alive(), "the second attempt must wait on the first one's row lock"
            finish_push(first, batch.workspace_id, batch.push_id, {"sessions": 1}, {}, 1.0)
        waiter.join(timeout=10)
        assert seen == {"second": True}  # processed by the first: nothing to write
    finally:
        first.close()
        second.close()
    assert db.execute("SELECT status, attempts FROM pushes").fetchall() == [("processed", 2)]


def test_an_attempt_after_one_that_rolled_back_writes_the_push(db: psycopg.Connection, database_url: str) -> None:
    batch = batch_of({"sessions": [samples.session(1)]}, push_id="again")
    conn = worker_db.connect(database_url)
    try:
        with pytest.raises(RuntimeError), conn.transaction():
            assert claim_push(conn, batch) is False
            raise RuntimeError("the worker died mid-write")
        assert db.execute("SELECT count(*) FROM pushes").fetchone() == (0,)
        with conn.transaction():
            assert claim_push(conn, batch) is False
    finally:
        conn.close()
