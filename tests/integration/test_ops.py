"""Operating the service: failed batches, replay, quarantine, status, metrics, back-pressure.

Modelled on RQ's own requeue CLI test: batches fail for real (Postgres refuses
them), the worker runs in burst mode, they sit in the failed registry, the
command line moves exactly the chosen ones, and they land once.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.job_lifecycle import record_job_failure
from rq.registry import StartedJobRegistry
from starlette.testclient import TestClient

from api.app import create_app
from bench import samples
from ops import accounts, actions, cli
from queueing.rq_compat import IngestJob, MsgpackSerializer, job_metas
from runtime.settings import Settings
from schema.batches import INGEST_JOB
from tests.support import Shards, count, new_account, push_json, run_burst_worker, with_lock_timeout


@pytest.fixture
def two_workspaces(db: psycopg.Connection) -> dict[str, str]:
    return {name: new_account(db, name).key for name in ("alpha", "beta")}


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    assert cli.main(["--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def workspace_id(db: psycopg.Connection, name: str) -> str:
    return accounts.find_workspace(db, name)


@pytest.fixture
def failed_pushes(
    two_workspaces: dict[str, str],
    settings: Settings,
    use_worker_settings: Callable[[Settings], None],
) -> Iterator[dict[str, str]]:
    """Three pushes (a1, a2 of alpha; b1 of beta) that failed for real: Postgres kept refusing them."""
    fail_pushes(settings, use_worker_settings, [("a1", two_workspaces["alpha"], 1), ("a2", two_workspaces["alpha"], 2)])
    fail_pushes(settings, use_worker_settings, [("b1", two_workspaces["beta"], 3)])
    yield two_workspaces


def fail_pushes(
    settings: Settings, use_worker_settings: Callable[[Settings], None], pushes: list[tuple[str, str, int]]
) -> None:
    """Push each (push id, key, n) and have Postgres refuse it until it is in RQ's failed registry."""
    app_settings = replace(settings, job_retries=1, job_retry_backoff_s=(0,))
    with TestClient(create_app(app_settings)) as c:
        for push_id, key, n in pushes:
            records = {"sessions": [samples.session(n)], "prompts": [samples.prompt(n)]}
            assert push_json(c, key, records, push_id).status_code == 202
    use_worker_settings(with_lock_timeout(settings, 100))
    with psycopg.connect(settings.database_url) as locker:
        locker.execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
        run_burst_worker(settings)
        locker.rollback()
    use_worker_settings(settings)


def test_failed_batches_are_listed_with_their_reason(
    failed_pushes: dict[str, str], cli_env: Settings, capsys: pytest.CaptureFixture[str], db: psycopg.Connection
) -> None:
    listed = run_cli(capsys, "failed", "list")
    assert sorted(b["push_id"] for b in listed) == ["a1", "a2", "b1"]
    assert all(b["attempts"] == 2 and "LockNotAvailable" in b["error"] for b in listed)
    beta = run_cli(capsys, "failed", "list", "--workspace", workspace_id(db, "beta"))
    assert [b["push_id"] for b in beta] == ["b1"]
    assert run_cli(capsys, "failed", "list", "--since", "2030-01-01T00:00:00Z") == []


def test_a_batch_abandoned_on_its_last_attempt_is_listed_by_the_time_it_failed(
    api_key: str, settings: Settings, cli_env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    # RQ fails an abandoned batch (its worker killed) in registry cleanup: the job has no ended_at
    # of that attempt, so `--since` must go by when the registry got it.
    with TestClient(create_app(settings)) as c:
        assert push_json(c, api_key, {"sessions": [samples.session(1)]}, "orphan").status_code == 202
    redis = Redis.from_url(settings.redis_url)
    queue = Shards(settings, redis).holding_jobs()  # the workspace's shard
    job = IngestJob.fetch(queue.pop_job_id(), connection=redis, serializer=MsgpackSerializer)
    assert job.ended_at is None
    with redis.pipeline() as pipe:
        record_job_failure(job, "Moved to FailedJobRegistry, due to AbandonedJobError", pipe)
        pipe.execute()

    [listed] = run_cli(capsys, "failed", "list", "--since", "5m")
    assert listed["push_id"] == "orphan"
    assert abs(datetime.fromisoformat(listed["failed_at"]) - datetime.now(UTC)) < timedelta(minutes=1)


def test_a_batch_abandoned_on_its_last_attempt_has_its_push_marked_failed(
    api_key: str, settings: Settings, db: psycopg.Connection, use_worker_settings: Any
) -> None:
    # Its worker was SIGKILLed mid-batch on the last attempt: RQ fails it when a worker cleans the
    # started registry, and only the job's failure callback is left to say so in the push row.
    with TestClient(create_app(replace(settings, job_retries=0))) as c:
        assert push_json(c, api_key, {"sessions": [samples.session(1)]}, "killed").status_code == 202
        assert c.get("/v2/pushes/killed", headers={"Authorization": f"Bearer {api_key}"}).json()["status"] == "queued"
        redis = Redis.from_url(settings.redis_url)
        queue = Shards(settings, redis).holding_jobs()  # the workspace's shard
        job = IngestJob.fetch(queue.pop_job_id(), connection=redis, serializer=MsgpackSerializer)
        job.set_status(JobStatus.STARTED)  # what its worker had recorded, before it died
        started = StartedJobRegistry(queue.name, connection=redis, serializer=MsgpackSerializer)
        redis.zadd(started.key, {f"{job.id}:dead-execution": time.time() - 1})

        started.cleanup()  # what any worker's maintenance does

        status = c.get("/v2/pushes/killed", headers={"Authorization": f"Bearer {api_key}"}).json()
    assert status["status"] == "failed"
    assert status["reason"] == "AbandonedJobError: its worker died during the last attempt"
    assert job.id in failed_registry_ids(redis, settings)


def failed_registry_ids(redis: Redis, settings: Settings) -> list[str]:
    return [job_id for registry in actions.failed_registries(redis, settings) for job_id in registry.get_job_ids()]


def test_replay_moves_exactly_the_chosen_batches_and_each_lands_once(
    failed_pushes: dict[str, str], cli_env: Settings, capsys: pytest.CaptureFixture[str], db: psycopg.Connection
) -> None:
    dry = run_cli(capsys, "replay", "a1", "--dry-run")
    assert [b["push_id"] for b in dry["would_replay"]] == ["a1"]
    assert len(run_cli(capsys, "failed", "list")) == 3  # a dry run moves nothing

    assert run_cli(capsys, "replay", "a1")["replayed"] == 1
    run_burst_worker(cli_env)
    assert sorted(b["push_id"] for b in run_cli(capsys, "failed", "list")) == ["a2", "b1"]
    assert count(db, "sessions") == 1 and count(db, "prompts") == 1

    assert run_cli(capsys, "replay", "--workspace", workspace_id(db, "beta"))["replayed"] == 1
    run_burst_worker(cli_env)
    assert [b["push_id"] for b in run_cli(capsys, "failed", "list")] == ["a2"]

    assert run_cli(capsys, "replay", "--all")["replayed"] == 1
    run_burst_worker(cli_env)
    assert run_cli(capsys, "failed", "list") == []
    assert count(db, "sessions") == 3 and count(db, "prompts") == 3
    statuses = db.execute("SELECT push_id, status FROM pushes ORDER BY push_id").fetchall()
    assert statuses == [("a1", "processed"), ("a2", "processed"), ("b1", "processed")]


def test_replay_puts_a_workspaces_failed_batches_on_its_own_shard_wherever_they_failed(
    two_workspaces: dict[str, str],
    settings: Settings,
    use_worker_settings: Callable[[Settings], None],
    cli_env: Settings,
    capsys: pytest.CaptureFixture[str],
    db: psycopg.Connection,
) -> None:
    # A replay of one workspace's failed batches (thousands, after an outage) must delay only its
    # own shard, as its pushes do: each goes to the workspace's shard, also one that failed in the
    # unsharded queue of a release before QUEUE_SHARDS.
    alpha = workspace_id(db, "alpha")
    fail_pushes(replace(settings, queue_shards=1), use_worker_settings, [("a-old", two_workspaces["alpha"], 1)])
    fail_pushes(settings, use_worker_settings, [("a-new", two_workspaces["alpha"], 2)])
    fail_pushes(settings, use_worker_settings, [("b1", two_workspaces["beta"], 3)])
    redis = Redis.from_url(settings.redis_url)
    origins = {
        b.push_id: Job.fetch(b.job_id, connection=redis, serializer=MsgpackSerializer).origin
        for b in actions.failed_batches(redis, cli_env)
    }
    assert origins == {
        "a-old": settings.queue_name,  # the unsharded queue
        "a-new": settings.queues.for_workspace(alpha),
        "b1": settings.queues.for_workspace(workspace_id(db, "beta")),
    }

    assert run_cli(capsys, "replay", "--workspace", alpha)["replayed"] == 2
    shards = Shards(settings, redis)
    queued = {
        q.name: sorted(job_metas(redis, q.get_job_ids())[j]["push_id"] for j in q.get_job_ids()) for q in shards.queues
    }
    assert {name: ids for name, ids in queued.items() if ids} == {
        settings.queues.for_workspace(alpha): ["a-new", "a-old"]
    }
    assert [b["push_id"] for b in run_cli(capsys, "failed", "list")] == ["b1"]

    run_burst_worker(cli_env)
    statuses = dict(db.execute("SELECT push_id, status FROM pushes").fetchall())
    assert statuses == {"a-old": "processed", "a-new": "processed", "b1": "failed"}


def test_replaying_a_batch_that_had_in_fact_committed_writes_nothing_twice(
    failed_pushes: dict[str, str], cli_env: Settings, capsys: pytest.CaptureFixture[str], db: psycopg.Connection
) -> None:
    # An abandoned job can have committed before its worker died: run the same batch again.
    redis = Redis.from_url(cli_env.redis_url)
    [failed] = actions.failed_batches(redis, cli_env, push_ids=["a1"])
    payload = Job.fetch(failed.job_id, connection=redis, serializer=MsgpackSerializer).args[0]
    run_cli(capsys, "replay", "a1")
    run_burst_worker(cli_env)
    before = (count(db, "sessions"), count(db, "prompts"))
    [attempts_before] = db.execute("SELECT attempts FROM pushes WHERE push_id = 'a1'").fetchone()  # type: ignore[misc]
    # The same batch once more, on the unsharded queue (where an earlier release queued it).
    Queue(cli_env.queue_name, connection=redis, serializer=MsgpackSerializer).enqueue(INGEST_JOB, payload)
    run_burst_worker(cli_env)
    assert (count(db, "sessions"), count(db, "prompts")) == before
    assert db.execute("SELECT attempts, status FROM pushes WHERE push_id = 'a1'").fetchone() == (
        attempts_before + 1,
        "processed",
    )


def test_quarantine_replay_writes_what_now_passes_and_keeps_the_rest(
    cli_env: Settings, capsys: pytest.CaptureFixture[str], db: psycopg.Connection
) -> None:
    # Quarantined by an older api (say, before a new platform was allowed): valid now.
    good = json.dumps(samples.prompt(7)).encode()
    bad = json.dumps({"prompt_id": "still-broken"}).encode()
    for index, raw in enumerate((good, bad)):
        db.execute(
            "INSERT INTO quarantine (workspace_id, push_id, record_type, record_index, error, raw, received_at)"
            " VALUES ('ws_q', 'p-old', 'prompts', %s, 'old reason', %s, now())",
            (index, raw),
        )
    listed = run_cli(capsys, "quarantine", "list")
    assert [r["record"] for r in listed] == ["prompts[0]", "prompts[1]"]

    assert run_cli(capsys, "quarantine", "replay", "--dry-run") == {"dry_run": True, "written": 1, "still_invalid": 1}
    assert count(db, "prompts") == 0
    assert run_cli(capsys, "quarantine", "replay") == {"dry_run": False, "written": 1, "still_invalid": 1}
    assert db.execute("SELECT workspace_id, prompt_id FROM prompts").fetchall() == [("ws_q", "prompt-7")]
    [(error,)] = db.execute("SELECT error FROM quarantine WHERE replayed_at IS NULL").fetchall()
    assert error.startswith("prompts[1]: Object missing required field")
    assert run_cli(capsys, "quarantine", "replay") == {"dry_run": False, "written": 0, "still_invalid": 1}
    assert count(db, "prompts") == 1


def test_quarantine_replay_goes_past_a_record_the_database_refuses(
    cli_env: Settings, capsys: pytest.CaptureFixture[str], db: psycopg.Connection
) -> None:
    # Valid to the schema, refused by Postgres (year 10000 in UTC, migration 0003): first in line.
    refused = json.dumps(samples.grading_result(1, graded_at="9999-12-31T23:59:59-14:00")).encode()
    good = json.dumps(samples.grading_result(2)).encode()
    for index, raw in enumerate((refused, good)):
        db.execute(
            "INSERT INTO quarantine (workspace_id, push_id, record_type, record_index, error, raw, received_at)"
            " VALUES ('ws_q', 'p-old', 'grading_results', %s, 'old reason', %s, now())",
            (index, raw),
        )

    assert run_cli(capsys, "quarantine", "replay") == {"dry_run": False, "written": 1, "still_invalid": 1}
    assert db.execute("SELECT grading_id FROM grading_results").fetchall() == [("grade-2",)]
    [(error,)] = db.execute("SELECT error FROM quarantine WHERE replayed_at IS NULL").fetchall()
    assert error.startswith("grading_results[0]: refused by the database") and "check constraint" in error


def test_push_show_tells_queued_processed_and_failed(
    failed_pushes: dict[str, str], cli_env: Settings, capsys: pytest.CaptureFixture[str], db: psycopg.Connection
) -> None:
    alpha = workspace_id(db, "alpha")
    [shown] = run_cli(capsys, "push", "show", "a1", "--workspace", alpha)
    assert shown["status"] == "failed" and "LockNotAvailable" in shown["error"]
    assert shown["failed_job"]["attempts"] == 2
    run_cli(capsys, "replay", "a1")
    run_burst_worker(cli_env)
    [shown] = run_cli(capsys, "push", "show", "a1")
    assert shown["status"] == "processed" and shown["accepted"] == {"sessions": 1, "prompts": 1}


def test_status_and_metrics_after_real_traffic_with_two_worker_processes(
    two_workspaces: dict[str, str], cli_env: Settings, capsys: pytest.CaptureFixture[str], db: psycopg.Connection
) -> None:
    accepted = 'selftune_ingest_pushes_total{code="202",outcome="accepted"}'
    duplicate = 'selftune_ingest_pushes_total{code="200",outcome="duplicate"}'
    prompts_accepted = 'selftune_ingest_records_accepted_total{type="prompts"}'
    with TestClient(create_app(cli_env)) as c:
        # This process's own counters are process-wide: compare against a baseline.
        base = c.get("/metrics").text
        first_push = time.monotonic()
        for i in range(6):
            records = {"prompts": [samples.prompt(10 * i + k) for k in range(5)], "sessions": [samples.session(i)]}
            assert push_json(c, two_workspaces["alpha"], records, f"m{i}").status_code == 202
        assert push_json(c, two_workspaces["alpha"], {}, "m0").status_code == 200  # duplicate
        status = run_cli(capsys, "status")
        # The lag is the age of the oldest of the 6: no older than the time since the first push (0.1: rounding).
        assert status["queue_depth"] == 6 and 0 <= status["lag_seconds"] <= time.monotonic() - first_push + 0.1
        before = c.get("/metrics").text
        assert metric(before, 'selftune_ingest_queue_batches{scope="shared"}') == 6
        assert metric(before, accepted) - metric(base, accepted, 0) == 6
        assert metric(before, duplicate) - metric(base, duplicate, 0) == 1
        assert metric(before, prompts_accepted) - metric(base, prompts_accepted, 0) == 30

        env = {**os.environ, "DATABASE_URL": cli_env.database_url, "REDIS_URL": cli_env.redis_url}
        subprocess.run([sys.executable, "-m", "ops", "worker", "-n", "2", "--burst"], env=env, check=True, timeout=60)
        after = c.get("/metrics").text
    # Worker-side numbers come from Redis (flushed per test): exact, whichever process wrote.
    assert metric(after, 'selftune_ingest_queue_batches{scope="shared"}') == 0
    assert metric(after, 'selftune_ingest_records_written_total{scope="shared",type="prompts"}') == 30
    assert metric(after, 'selftune_ingest_records_written_total{scope="shared",type="sessions"}') == 6
    assert metric(after, 'selftune_ingest_batches_total{outcome="processed",scope="shared"}') == 6
    assert metric(after, 'selftune_ingest_batch_write_seconds_count{scope="shared"}') == 6
    assert count(db, "prompts") == 30
    status = run_cli(capsys, "status")
    # 36 records written seconds ago, over the last minute (60 s plus the current 5 s bucket's elapsed part).
    assert status["queue_depth"] == 0 and status["written_records_per_s"] == pytest.approx(36 / 60, abs=0.06)


ENQUEUE_OUTCOMES = ("not_tried", "refused", "unconfirmed")


def metric(text: str, name: str, default: float | None = None) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    if default is not None:
        return default
    raise AssertionError(f"{name} not in /metrics")


def test_status_and_metrics_show_the_spool_while_redis_cannot_take_pushes(
    api_key: str, cli_env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    redis = Redis.from_url(cli_env.redis_url)
    spooled = "selftune_ingest_spooled_batches_total"
    with TestClient(create_app(cli_env)) as c:
        base = {e: metric(c.get("/metrics").text, f'{spooled}{{enqueue="{e}"}}') for e in ENQUEUE_OUTCOMES}
        maxmemory = redis.config_get("maxmemory")["maxmemory"]
        redis.config_set("maxmemory", 1)  # under noeviction every write is refused (OOM)
        first_push = time.monotonic()
        try:
            for i in range(3):
                assert push_json(c, api_key, {"sessions": [samples.session(i)]}, f"s{i}").status_code == 202
            text = c.get("/metrics").text
            status = run_cli(capsys, "status")
            oldest_bound = time.monotonic() - first_push + 0.1  # the first spooled push's age at most (0.1: rounding)
        finally:
            redis.config_set("maxmemory", maxmemory)
        deadline = time.monotonic() + 10
        while Shards(cli_env, redis).count < 3:
            assert time.monotonic() < deadline, "the spool was not drained"
            time.sleep(0.1)
        drained = c.get("/metrics").text
    added = {e: metric(text, f'{spooled}{{enqueue="{e}"}}') - base[e] for e in ENQUEUE_OUTCOMES}
    # The first push met Redis's OOM answer (refused: Redis holds none of it); the next ones are
    # not tried while REDIS_RETRY_S lasts (or meet the OOM again on a slow machine). None is unconfirmed.
    assert added["refused"] >= 1 and added["refused"] + added["not_tried"] == 3 and added["unconfirmed"] == 0
    assert metric(text, "selftune_ingest_spool_batches") == 3
    assert metric(text, "selftune_ingest_spool_bytes") > 0
    assert (
        status["spooled_batches"] == 3
        and status["spool_bytes"] > 0
        and 0 <= status["spool_oldest_seconds"] <= oldest_bound
    )
    assert metric(drained, "selftune_ingest_spool_batches") == 0
    assert metric(drained, 'selftune_ingest_spool_drained_batches_total{outcome="queued"}') >= 3
    assert run_cli(capsys, "status")["spooled_batches"] == 0


def test_readyz_says_why_when_postgres_is_not_migrated(redis_url: str, database_url: str) -> None:
    bad = replace(Settings.from_env(), redis_url=redis_url, database_url=database_url.rsplit("/", 1)[0] + "/postgres")
    with TestClient(create_app(bad)) as c:
        ready = c.get("/readyz")
        database = c.get("/readyz/database")
    # Pushes need only Redis (or the spool): the api stays in rotation, and says what is wrong.
    assert ready.status_code == 200 and ready.json()["pushes_go_to"] == "redis"
    assert ready.json()["database"] == ["postgres: not migrated: run 'selftune-ingest migrate'"]
    assert database.status_code == 503
    assert database.json()["errors"] == ["postgres: not migrated: run 'selftune-ingest migrate'"]
    assert database.json()["error"]["code"] == "database_not_ready"


# -- the command line itself: flags, names, errors, pipes -----------------------------------------

CLI = Path(sys.executable).parent / "selftune-ingest"


def run_cli_raw(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`selftune-ingest ARGS...` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def run_cli_process(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The installed `selftune-ingest ARGS...` as a process, with `env` over this one's."""
    return subprocess.run([str(CLI), *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=60)


def test_json_goes_before_or_after_the_command_on_every_command(
    two_workspaces: dict[str, str], cli_env: Settings, capsys: pytest.CaptureFixture[str], db: psycopg.Connection
) -> None:
    assert run_cli(capsys, "status").keys() == json.loads(run_cli_raw(capsys, "status", "--json")[1]).keys()
    assert json.loads(run_cli_raw(capsys, "migrate", "--json")[1]) == {"applied": []}
    [first, *_] = accounts.list_keys(db)
    code, out, _ = run_cli_raw(capsys, "key", "revoke", first.key_id, "--json")
    assert code == 0 and json.loads(out)["key_id"] == first.key_id and json.loads(out)["revoked"] is True
    code, out, _ = run_cli_raw(capsys, "key", "--json", "list", "--workspace", "alpha")
    assert code == 0 and [k["workspace_name"] for k in json.loads(out)] == ["alpha"]
    # Options mixed with the push ids, --json last.
    code, out, _ = run_cli_raw(capsys, "replay", "--dry-run", "--all", "--json")
    assert code == 0 and json.loads(out) == {"dry_run": True, "would_replay": []}


def test_errors_are_json_under_json_with_their_exit_codes(
    two_workspaces: dict[str, str], cli_env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        (["key", "revoke", "key_0000000000000000"], 1, "not_found", "key_0000000000000000"),
        (["workspace", "create", "alpha"], 1, "refused", "exists already"),
        (["status", "--bogus"], 2, "usage", "--bogus"),
        (["failed", "list", "--since", "yesterday"], 2, "usage", "not a time"),
        (["replay"], 2, "usage", "--all"),
        (["device", "approve", "nope", "--workspace", "alpha"], 2, "usage", "not a user code"),
    ]
    for args, exit_code, code, named in cases:
        for argv in (["--json", *args], [*args, "--json"]):
            status, out, err = run_cli_raw(capsys, *argv)
            assert status == exit_code, argv
            error = json.loads(out)["error"]
            assert error["code"] == code and named in error["message"], (argv, error)
        status, out, err = run_cli_raw(capsys, *args)  # without --json: one line on stderr
        assert status == exit_code and out == "" and named in err and "Traceback" not in err


def test_workspace_takes_a_name_everywhere_and_an_unknown_one_is_an_error(
    failed_pushes: dict[str, str], cli_env: Settings, capsys: pytest.CaptureFixture[str], db: psycopg.Connection
) -> None:
    beta = workspace_id(db, "beta")
    db.execute(
        "INSERT INTO quarantine (workspace_id, push_id, record_type, record_index, error, raw, received_at)"
        " VALUES (%s, 'b1', 'prompts', 0, 'a reason', '{}', now())",
        (beta,),
    )
    assert [b["push_id"] for b in run_cli(capsys, "failed", "list", "--workspace", "beta")] == ["b1"]
    dry = run_cli(capsys, "replay", "--workspace", "beta", "--dry-run")
    assert [b["push_id"] for b in dry["would_replay"]] == ["b1"]
    assert [r["workspace_id"] for r in run_cli(capsys, "quarantine", "list", "--workspace", "beta")] == [beta]
    assert run_cli(capsys, "quarantine", "replay", "--workspace", "beta", "--dry-run")["still_invalid"] == 1
    [shown] = run_cli(capsys, "push", "show", "b1", "--workspace", "beta")
    assert shown["workspace_id"] == beta and shown["status"] == "failed"

    for args in (
        ["failed", "list"],
        ["replay", "--dry-run"],
        ["quarantine", "list"],
        ["quarantine", "replay", "--dry-run"],
        ["push", "show", "b1"],
        ["key", "list"],
    ):
        code, out, err = run_cli_raw(capsys, *args, "--workspace", "gamma")
        assert code == 1 and "no workspace named or with id 'gamma'" in err, (args, out, err)
    assert len(run_cli(capsys, "failed", "list")) == 3  # nothing was replayed


def test_replay_of_a_push_id_not_in_the_failed_registry_fails_and_moves_nothing(
    failed_pushes: dict[str, str], cli_env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    for args in (["replay", "nosuchpush"], ["replay", "a1", "nosuchpush"], ["replay", "--dry-run", "nosuchpush"]):
        code, out, err = run_cli_raw(capsys, *args)
        assert code == 1 and "nosuchpush" in err and "a1" not in err, args
    code, out, _ = run_cli_raw(capsys, "--json", "replay", "b1", "--workspace", "alpha")  # b1 is beta's
    assert code == 1 and json.loads(out)["error"]["code"] == "not_found"
    assert len(run_cli(capsys, "failed", "list")) == 3


def test_push_show_reads_as_text(
    failed_pushes: dict[str, str], cli_env: Settings, capsys: pytest.CaptureFixture[str], db: psycopg.Connection
) -> None:
    code, out, _ = run_cli_raw(capsys, "push", "show", "a2", "--workspace", "alpha")
    assert code == 0
    assert out.startswith(f"push a2 in workspace {workspace_id(db, 'alpha')}\n")
    assert "in the failed registry" in out and "LockNotAvailable" in out
    assert "datetime" not in out and "{" not in out and "None" not in out
    run_cli(capsys, "replay", "a2")
    run_burst_worker(cli_env)
    code, out, _ = run_cli_raw(capsys, "push", "show", "a2")
    assert code == 0 and "processed" in out and "1 sessions" in out and "1 prompts" in out and " ms\n" in out
    code, out, err = run_cli_raw(capsys, "push", "show", "nosuchpush")
    assert code == 1 and out == "" and "nosuchpush" in err


@pytest.mark.parametrize(
    ("args", "server"),
    [
        (["status"], "Redis"),
        (["failed", "list"], "Redis"),
        (["replay", "--all"], "Redis"),
        (["migrate"], "Postgres"),
        (["workspace", "list"], "Postgres"),
        (["key", "list", "--workspace", "alpha"], "Postgres"),
        (["quarantine", "list"], "Postgres"),
        (["push", "show", "p1"], "Postgres"),
        (["device", "list"], "Postgres"),
    ],
)
def test_an_unreachable_server_is_one_line_and_exit_2(args: list[str], server: str, cli_env: Settings) -> None:
    closed = {
        "Redis": {"REDIS_URL": "redis://:hunter2@127.0.0.1:1/0"},
        "Postgres": {"DATABASE_URL": "postgresql://postgres:hunter2@127.0.0.1:1/selftune"},
    }[server]
    done = run_cli_process(*args, **closed)
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert f"cannot reach {server} at " in done.stderr and "127.0.0.1:1" in done.stderr
    assert "hunter2" not in done.stderr and ":***@" in done.stderr
    as_json = run_cli_process(*args, "--json", **closed)
    assert as_json.returncode == 2 and json.loads(as_json.stdout)["error"]["code"] == f"{server.lower()}_unreachable"


def test_failed_list_by_workspace_id_while_postgres_is_down(
    failed_pushes: dict[str, str], cli_env: Settings, db: psycopg.Connection
) -> None:
    # Failed batches pile up while Postgres is down: their registry is in Redis, an id needs no lookup.
    done = run_cli_process(
        "--json", "failed", "list", "--workspace", workspace_id(db, "beta"), DATABASE_URL="postgresql://x@127.0.0.1:1/x"
    )
    assert done.returncode == 0 and [b["push_id"] for b in json.loads(done.stdout)] == ["b1"]
    assert "without checking it" in done.stderr


def test_safe_in_a_pipe(cli_env: Settings) -> None:
    # `status --watch` writes forever: the reader leaving is EPIPE, which ends it quietly.
    env = {**os.environ, "DATABASE_URL": cli_env.database_url, "REDIS_URL": cli_env.redis_url}
    writer = subprocess.Popen(
        [str(CLI), "status", "--watch", "--interval", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert writer.stdout is not None and writer.stderr is not None
    head = subprocess.run(["head", "-1"], stdin=writer.stdout, capture_output=True, text=True, timeout=30)
    writer.stdout.close()  # head holds the only read end now; once it exits, the next write fails
    try:
        assert writer.wait(timeout=30) == 1
    finally:
        writer.kill()
    with writer.stderr:
        assert writer.stderr.read() == b""
    assert "selftune ingest" in head.stdout
    shell = subprocess.run(
        f"{CLI} status | head -1; exit ${{PIPESTATUS[0]}}",
        shell=True,
        executable="/bin/bash",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shell.returncode == 0 and shell.stdout.startswith("queued batches") and shell.stderr == ""


def test_watch_redraws_at_most_once_a_second_and_ctrl_c_ends_it(cli_env: Settings) -> None:
    env = {**os.environ, "DATABASE_URL": cli_env.database_url, "REDIS_URL": cli_env.redis_url}
    watch = subprocess.Popen(
        [str(CLI), "status", "--watch", "--interval", "0", "--json"], env=env, stdout=subprocess.PIPE, text=True
    )
    time.sleep(2.5)
    watch.send_signal(signal.SIGINT)
    out, _ = watch.communicate(timeout=30)
    assert watch.returncode == 0
    assert 1 <= len(out.splitlines()) <= 4, f"{len(out.splitlines())} redraws in 2.5 s"


def test_version_and_exit_codes_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli_raw(capsys, "--version")
    assert code == 0 and out == f"selftune-ingest {importlib.metadata.version('selftune-ingest')}\n"
    code, out, _ = run_cli_raw(capsys, "--help")
    assert code == 0 and "Exit codes:" in out and "2    a usage error" in out
    code, out, _ = run_cli_raw(capsys, "status", "--help")
    assert code == 0 and "--json" in out and "at least 1" in out
