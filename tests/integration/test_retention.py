"""Retention on real Postgres: partitions by time dropped whole, bounded deletes, a re-push across a
partition boundary still one row, and an existing database converted while it is written to."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

from api.app import create_app
from bench import samples
from runtime.settings import Retention, Settings
from store import partitions
from store.migrate import migrate
from store.retention import maintain
from tests.integration.test_ops import run_cli
from tests.support import batch_of, write_queued

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)  # a Wednesday; its period (PARTITION_DAYS=7) starts Monday 11-30
KEEP_PROMPTS = Retention(default_days=0, days={"prompts": 14, "sessions": 14}, partition_days=7, partitions_ahead=2)


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def prompts_at(times: list[datetime], prefix: str = "p") -> dict[str, list[dict[str, Any]]]:
    return {"prompts": [samples.prompt(i, prompt_id=f"{prefix}-{i}", occurred_at=iso(t)) for i, t in enumerate(times)]}


def push(conn: psycopg.Connection, records: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Write records as a worker does, as a new push each time (so a re-push is really written again)."""
    return write_queued(conn, batch_of(records, push_id=uuid.uuid4().hex, workspace_id="ws_a"))


def count(conn: psycopg.Connection, query: str, *args: Any) -> int:
    row = conn.execute(query, args).fetchone()
    assert row is not None
    return int(row[0])


def where(conn: psycopg.Connection, prompt_id: str) -> list[str]:
    """The partitions holding rows of this prompt id."""
    rows = conn.execute(
        "SELECT tableoid::regclass::text FROM prompts WHERE workspace_id = 'ws_a' AND prompt_id = %s", (prompt_id,)
    ).fetchall()
    return [r[0] for r in rows]


@pytest.fixture
def fresh(empty_database_url: str) -> Iterator[psycopg.Connection]:
    """A database of its own, migrated with KEEP_PROMPTS at NOW (maintain changes its partitions)."""
    with psycopg.connect(empty_database_url, autocommit=True, options="-c timezone=UTC") as conn:
        migrate(conn, KEEP_PROMPTS)
        assert maintain(conn, KEEP_PROMPTS, now=NOW) is not None
        yield conn


def test_partitions_past_retention_are_dropped_whole_and_the_rest_is_kept(fresh: psycopg.Connection) -> None:
    old, kept, future, ancient = (NOW + timedelta(days=d) for d in (-16, -6, 400, -3000))
    push(fresh, prompts_at([old, kept, NOW, future, ancient]))
    # A session is kept by arrival (no time of its own is fixed at first write): one arrived 30 days ago.
    push(fresh, {"sessions": [samples.session(1), samples.session(2)]})
    fresh.execute("UPDATE sessions SET ingested_at = %s WHERE session_id = 'sess-1'", (NOW - timedelta(days=30),))
    assert where(fresh, "p-0") == ["prompts_p20261116"]
    assert where(fresh, "p-3") == ["prompts_default"] and where(fresh, "p-4") == ["prompts_default"]

    later = NOW + timedelta(days=7)  # the period holding `old` ends more than 14 days before this
    dry = maintain(fresh, KEEP_PROMPTS, now=later, dry_run=True)
    assert dry is not None
    would = next(t for t in dry if t.table == "prompts")
    assert would.dropped_partitions and count(fresh, "SELECT count(*) FROM prompts") == 5  # a dry run changes nothing

    done = maintain(fresh, KEEP_PROMPTS, now=later)
    assert done is not None
    prompts = next(t for t in done if t.table == "prompts")
    horizon = later - timedelta(days=14)
    assert prompts.dropped_partitions == would.dropped_partitions
    assert all(p.upper > horizon for p in partitions.range_partitions(fresh, "prompts"))
    # `old` went with its partition, the ancient one from the default partition; the rest stays.
    kept_ids = {r[0] for r in fresh.execute("SELECT prompt_id FROM prompts")}
    assert kept_ids == {"p-1", "p-2", "p-3"}
    assert prompts.deleted_rows == 1 and prompts.partitions_ahead == 2
    assert {r[0] for r in fresh.execute("SELECT session_id FROM sessions")} == {"sess-2"}
    # The CLI re-sends the dropped record, twice: one row (in the default partition), which the
    # next maintain deletes as past retention.
    push(fresh, prompts_at([old]))
    push(fresh, prompts_at([old]))
    assert where(fresh, "p-0") == ["prompts_default"]
    again = maintain(fresh, KEEP_PROMPTS, now=later)
    assert again is not None and next(t for t in again if t.table == "prompts").deleted_rows == 1
    assert where(fresh, "p-0") == []
    # Tables kept forever (RETENTION_DAYS=0 here) lose nothing and report no horizon.
    signals = next(t for t in done if t.table == "improvement_signals")
    assert signals.kept_since is None and not signals.dropped_partitions


def test_a_re_push_across_a_partition_boundary_is_one_row(fresh: psycopg.Connection) -> None:
    boundary = partitions.period_start(NOW, 7) + timedelta(days=7)
    times = [boundary - timedelta(microseconds=1), boundary, NOW + timedelta(days=60)]
    records = prompts_at(times)
    push(fresh, records)
    first = [where(fresh, f"p-{i}") for i in range(3)]
    assert first[0] != first[1] and first[2] == ["prompts_default"]
    # Weeks later the clock reaches the record 60 days ahead: its period is made, and its row moves there.
    longer = Retention(default_days=0, days={"prompts": 60}, partition_days=7, partitions_ahead=2)
    made = maintain(fresh, longer, now=NOW + timedelta(days=50))
    assert made is not None and where(fresh, "p-2") != ["prompts_default"]
    assert where(fresh, "p-2")[0] in next(t for t in made if t.table == "prompts").created_partitions
    # The CLI sends all three again, one with a value it lacked the first time: still one row each.
    again = prompts_at(times)
    again["prompts"][1]["source_message_id"] = "msg-late"
    push(fresh, again)
    assert [where(fresh, f"p-{i}") for i in range(3)] == [first[0], first[1], where(fresh, "p-2")]
    assert count(fresh, "SELECT count(*) FROM prompts WHERE source_message_id = 'msg-late'") == 1
    assert count(fresh, "SELECT count(*) FROM prompts") == 3


def test_one_maintain_at_a_time(fresh: psycopg.Connection, empty_database_url: str) -> None:
    with psycopg.connect(empty_database_url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (0x5E1F7F,))
        assert maintain(fresh, KEEP_PROMPTS, now=NOW) is None
        other.execute("SELECT pg_advisory_unlock(%s)", (0x5E1F7F,))
    assert maintain(fresh, KEEP_PROMPTS, now=NOW) is not None


def test_an_existing_database_is_partitioned_with_writes_going_on(empty_database_url: str) -> None:
    with psycopg.connect(empty_database_url, autocommit=True, options="-c timezone=UTC") as conn:
        migrate(conn, partition=False)  # the schema as the previous release left it
        assert not partitions.is_partitioned(conn, "prompts")
        # A database holding data: 20,000 prompts over the last 40 days, and signals.
        conn.execute(
            "INSERT INTO prompts (workspace_id, prompt_id, record_kind, schema_version, normalizer_version,"
            " normalized_at, platform, capture_mode, raw_source_ref, source_session_kind, session_id, occurred_at,"
            " prompt_text, prompt_kind, is_actionable)"
            " SELECT 'ws_a', 'old-' || i, 'prompt', '2.0', '1', now(), 'claude_code', 'hook', '{}', 'interactive',"
            " 'sess-' || i / 10, now() - i * interval '3 minutes', 'text ' || i, 'user', true"
            " FROM generate_series(1, 20000) AS i"
        )
        old_writes: list[str] = []
        refused: list[str] = []
        stop = threading.Event()

        def an_old_worker() -> None:
            """Writes as the previous release's workers do (its conflict target), until stopped or refused."""
            with psycopg.connect(empty_database_url, autocommit=True) as w:
                n = 0
                while not stop.is_set():
                    prompt_id = f"during-{n}"
                    n += 1
                    try:
                        w.execute(
                            "INSERT INTO prompts (workspace_id, prompt_id, record_kind, schema_version,"
                            " normalizer_version, normalized_at, platform, capture_mode, raw_source_ref,"
                            " source_session_kind, session_id, occurred_at, prompt_text, prompt_kind, is_actionable)"
                            " VALUES ('ws_a', %s, 'prompt', '2.0', '1', now(), 'claude_code', 'hook', '{}',"
                            " 'interactive', 's', now(), 'x', 'user', true) ON CONFLICT (workspace_id, prompt_id)"
                            " DO NOTHING",
                            (prompt_id,),
                        )
                        old_writes.append(prompt_id)
                    except psycopg.Error:
                        refused.append(prompt_id)  # its batch fails, and RQ retries it with the new workers
                        return
                    stop.wait(0.005)

        writer = threading.Thread(target=an_old_worker)
        writer.start()
        try:
            migrate(conn, Retention(default_days=30))
        finally:
            stop.set()
            writer.join()

        assert partitions.is_partitioned(conn, "prompts")
        legacy = next(p for p in partitions.range_partitions(conn, "prompts") if p.lower is None)
        assert legacy.name == "prompts_legacy" and legacy.upper > datetime.now(UTC)
        assert old_writes, "the old workers could not write while the indexes were built"
        # The retries of the refused batches, now by the new workers (the new writer, its new key).
        retried = {"prompts": [samples.prompt(i, prompt_id=p, occurred_at=iso(NOW)) for i, p in enumerate(refused)]}
        if refused:
            push(conn, retried)
        # A re-push of rows that were in the table before: no second copy.
        before = conn.execute(
            "SELECT prompt_id, occurred_at FROM prompts WHERE prompt_id IN ('old-1', 'old-19999')"
        ).fetchall()
        push(conn, {"prompts": [samples.prompt(i, prompt_id=p, occurred_at=iso(t)) for i, (p, t) in enumerate(before)]})
        ids = [r[0] for r in conn.execute("SELECT prompt_id FROM prompts")]
        assert len(ids) == len(set(ids)) == 20000 + len(old_writes) + len(refused)
        assert all(where(conn, p) == ["prompts_legacy"] for p, _ in before)

        # Once all of the legacy range is past retention, it goes whole, like any partition.
        after = legacy.upper + timedelta(days=31)
        done = maintain(conn, Retention(default_days=30), now=after)
        assert done is not None and "prompts_legacy" in next(t for t in done if t.table == "prompts").dropped_partitions
        assert count(conn, "SELECT count(*) FROM prompts WHERE prompt_id LIKE 'old-%%'") == 0


def test_status_and_metrics_show_retention(
    db: psycopg.Connection, cli_env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    done = run_cli(capsys, "maintain")
    assert {t["table"] for t in done["tables"]} >= {"prompts", "sessions", "pushes", "quarantine"}
    status = run_cli(capsys, "status")["retention"]
    prompts = next(t for t in status if t["table"] == "prompts")
    assert prompts["retention_days"] == cli_env.retention.days_for("prompts") and prompts["partitioned"]
    assert prompts["partitions_ahead"] == cli_env.retention.partitions_ahead
    with TestClient(create_app(cli_env)) as c:
        text = c.get("/metrics").text
    days = float(prompts["retention_days"])
    assert f'selftune_ingest_retention_days{{scope="shared",table="prompts"}} {days}' in text
    assert "selftune_ingest_retention_last_run_timestamp_seconds{" in text


def test_maintain_every_keeps_running_while_postgres_is_down_and_runs_once_it_is_back(
    settings: Settings, empty_database_url: str
) -> None:
    """As the Procfile's process, a Postgres it cannot reach is a warning and a retry, not an exit
    (honcho stops every process once one exits); and each run publishes its figures for `status`."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from redis import Redis

    from queueing import stats

    command = Path(sys.executable).with_name("selftune-ingest")
    env = {**os.environ, "REDIS_URL": settings.redis_url, "DATABASE_URL": "postgresql://selftune@127.0.0.1:9/none"}
    down = subprocess.Popen([command, "maintain", "--every", "1"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)
        assert down.poll() is None, f"maintain exited: {down.stderr.read() if down.stderr else ''}"
    finally:
        down.send_signal(signal.SIGINT)
        _, err = down.communicate(timeout=10)
    assert err.count("Postgres is unreachable") >= 2, err

    redis = Redis.from_url(settings.redis_url)
    redis.delete(stats.RETENTION)
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        migrate(conn, KEEP_PROMPTS)
    up = subprocess.Popen(
        [command, "maintain", "--every", "1"], env={**env, "DATABASE_URL": empty_database_url}, stdout=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 20
        while not redis.hexists(stats.RETENTION, "prompts"):
            assert up.poll() is None and time.monotonic() < deadline, "maintain --every did not run"
            time.sleep(0.2)
    finally:
        up.send_signal(signal.SIGINT)
        up.communicate(timeout=10)
