"""Reading back (SPEC 7) through the real app on real Postgres and Redis.

Records are written by the workers' own writer (`write_batch`), or by a push and
an in-process worker where the whole path matters. What a client sees is
asserted: answers, page boundaries, 404s and 422s, and the query plans that keep
the lists fast at millions of rows.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import psycopg
import pytest
from psycopg import sql
from redis import Redis
from starlette.testclient import TestClient

import workers.jobs
from api.app import create_app
from api.push import PushAnswer
from api.reads.params import DEFAULT_LIMIT, MAX_LIMIT
from api.reads.signals import SignalFilters, signals_query
from api.reads.skills import GRADING_FIELDS, SKILLS, TREND, grading_query
from bench import samples
from runtime.settings import Settings
from schema.batches import dedupe_key
from store.migrate import migrate
from tests.support import Account, batch_of, new_account
from workers import db as worker_db
from workers.jobs import write_batch
from workers.worker import make_worker


@pytest.fixture
def acme(account: Account) -> Account:
    return account


@pytest.fixture
def globex(db: psycopg.Connection) -> Account:
    return new_account(db, "globex")


def store(db: psycopg.Connection, who: Account, records: dict[str, list[dict[str, Any]]]) -> None:
    """Write records as a worker would."""
    write_batch(db, batch_of(records, push_id=uuid.uuid4().hex, workspace_id=who.workspace_id))


def signal(n: int, timestamp: str, **over: Any) -> dict[str, Any]:
    return samples.improvement_signal(n, timestamp=timestamp, **over)


def at(day: int, hour: int = 12, minute: int = 0, second: int = 0) -> str:
    return f"2026-11-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}Z"


def walk(client: TestClient, who: Account, path: str, field: str, **params: Any) -> list[list[dict[str, Any]]]:
    """Every page of a list, following next_cursor."""
    pages = []
    cursor = None
    while True:
        resp = client.get(path, params={**params, **({"cursor": cursor} if cursor else {})}, headers=who.auth)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        pages.append(body[field])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 1000


# -- the whole path ---------------------------------------------------------------------------------------------


@pytest.fixture
def in_process_worker(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Iterator[Any]:
    monkeypatch.setattr(workers.jobs, "_settings", settings)
    worker_db.close()

    def run() -> None:
        make_worker(settings, connection=Redis.from_url(settings.redis_url)).work(burst=True)

    yield run
    worker_db.close()


def test_a_synced_push_is_queued_then_processed_and_its_records_read_back(
    client: TestClient, acme: Account, in_process_worker: Any
) -> None:
    records = {
        "sessions": [samples.session(1)],
        "grading_results": [
            samples.grading_result(1, skill_name="parser"),
            samples.grading_result(2, skill_name="parser"),
        ],
        "improvement_signals": [samples.improvement_signal(1, mentioned_skill="parser"), samples.improvement_signal(2)],
        "orchestrate_runs": [samples.orchestrate_run(1, approval_mode="sometimes")],  # rejected: not auto|review
    }
    body = {"schema_version": "2.0", "client_version": "0.2.32", "push_id": "sync-1", "canonical": records}
    assert client.post("/api/v1/push", content=json.dumps(body), headers=acme.auth).status_code == 202

    queued = client.get("/v2/pushes/sync-1", headers=acme.auth).json()
    assert queued["status"] == "queued"
    assert queued["accepted"] == {"sessions": 1, "grading_results": 2, "improvement_signals": 2}
    assert queued["rejected"] == {"orchestrate_runs": 1} and "approval_mode" in queued["errors"][0]

    in_process_worker()
    processed = client.get("/v2/pushes/sync-1", headers=acme.auth).json()
    assert processed["status"] == "processed"
    assert processed["accepted"] == {"sessions": 1, "grading_results": 2, "improvement_signals": 2}
    assert processed["rejected"] == {"orchestrate_runs": 1}
    assert processed["reason"] is None and processed["attempts"] == 1
    assert processed["received_at"].endswith("Z")
    assert datetime.fromisoformat(processed["processed_at"]) >= datetime.fromisoformat(processed["received_at"])
    assert processed["write_ms"] > 0

    signals = client.get("/v2/signals", headers=acme.auth).json()["signals"]
    assert sorted(s["signal_id"] for s in signals) == ["sig-1", "sig-2"]
    assert signals[0]["query"] == samples.improvement_signal(1)["query"]
    window = {"since": "2026-11-01", "until": "2026-12-01"}
    grading = client.get("/v2/skills/parser/grading", params=window, headers=acme.auth).json()
    assert sorted(g["grading_id"] for g in grading["results"]) == ["grade-1", "grade-2"]
    assert grading["trend"] == [{"date": "2026-11-28", "pass_rate": 0.75, "checks": 2}]


def test_a_push_holding_an_unpaired_surrogate_lands_all_but_that_record(
    client: TestClient, acme: Account, in_process_worker: Any, db: psycopg.Connection
) -> None:
    records = {
        "prompts": [samples.prompt(1), samples.prompt(2, prompt_text="cut LONE")],
        "sessions": [samples.session(1)],
    }
    body = json.dumps({"push_id": "cut-1", "canonical": records}).replace("LONE", "\\ud83d").encode()
    assert client.post("/api/v1/push", content=body, headers=acme.auth).status_code == 202

    in_process_worker()
    done = client.get("/v2/pushes/cut-1", headers=acme.auth).json()
    assert (done["status"], done["accepted"], done["rejected"]) == (
        "processed",
        {"prompts": 1, "sessions": 1},
        {"prompts": 1},
    )
    assert db.execute("SELECT prompt_id FROM prompts").fetchall() == [("prompt-1",)]
    [(error, raw)] = db.execute("SELECT error, raw FROM quarantine").fetchall()
    assert error.startswith("canonical.prompts[1].prompt_text: string holds an unpaired UTF-16 surrogate")
    assert b"cut \\ud83d" in bytes(raw)


def test_a_failed_push_shows_its_reason_and_an_unknown_push_is_404(
    client: TestClient, acme: Account, db: psycopg.Connection
) -> None:
    db.execute(
        "INSERT INTO pushes (workspace_id, push_id, status, received_at, attempts, error)"
        " VALUES (%s, 'doomed', 'failed', now(), 6, 'LockNotAvailable: canceling statement due to lock timeout')",
        (acme.workspace_id,),
    )
    failed = client.get("/v2/pushes/doomed", headers=acme.auth).json()
    assert failed["status"] == "failed" and failed["attempts"] == 6
    assert failed["reason"].startswith("LockNotAvailable")

    missing = client.get("/v2/pushes/never-sent", headers=acme.auth)
    assert missing.status_code == 404
    assert missing.json()["error"] == {"code": "not_found", "message": "no push 'never-sent' in this workspace"}


def test_ids_and_names_holding_a_slash_or_a_newline_read_back(
    client: TestClient, acme: Account, db: psycopg.Connection
) -> None:
    # Any string is a valid push id, signal id or skill name; a client sends '/' as %2F.
    db.execute(
        "INSERT INTO pushes (workspace_id, push_id, status, received_at) VALUES (%s, 'batch/1', 'processed', now())",
        (acme.workspace_id,),
    )
    store(
        db,
        acme,
        {
            "grading_results": [samples.grading_result(1, skill_name="team/parser")],
            "improvement_signals": [signal(1, at(1), signal_id="sig/1")],
        },
    )
    assert client.get("/v2/pushes/batch%2F1", headers=acme.auth).json()["status"] == "processed"
    grading = client.get("/v2/skills/team%2Fparser/grading", headers=acme.auth).json()
    assert [g["grading_id"] for g in grading["results"]] == ["grade-1"]
    newline = client.get("/v2/skills/two%0Alines/grading", headers=acme.auth)  # found by schemathesis
    assert newline.status_code == 200 and newline.json()["results"] == []
    consumed = consume(client, acme, "sig%2F1", run_id="orch-1")
    assert consumed.status_code == 200 and consumed.json()["signal"]["signal_id"] == "sig/1"


def test_times_read_back_whatever_the_time_zone_of_the_database(empty_database_url: str, redis_url: str) -> None:
    # 9999-12-31T20:00Z (allowed by migration 0003) is year 10000 at +14: read in that zone, a 500.
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        migrate(conn)
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET timezone = 'Pacific/Kiritimati'").format(sql.Identifier(conn.info.dbname))
        )
        east = new_account(conn, "east")
        late = samples.grading_result(1, skill_name="parser", graded_at="9999-12-31T20:00:00Z")
        write_batch(conn, batch_of({"grading_results": [late]}, push_id="late", workspace_id=east.workspace_id))
    settings = replace(Settings.from_env(), database_url=empty_database_url, redis_url=redis_url)
    with TestClient(create_app(settings)) as c:
        resp = c.get("/v2/skills/parser/grading", params={"since": "9999-12-01"}, headers=east.auth)
    assert resp.status_code == 200, resp.text
    assert [g["graded_at"] for g in resp.json()["results"]] == ["9999-12-31T20:00:00Z"]


# -- signals --------------------------------------------------------------------------------------------------------


def test_signal_pages_are_newest_first_without_duplicates_or_gaps(
    client: TestClient, acme: Account, db: psycopg.Connection
) -> None:
    # 23 signals, many sharing a timestamp: the signal id breaks ties.
    store(db, acme, {"improvement_signals": [signal(n, at(1 + n % 4, 10)) for n in range(23)]})
    expected = [
        s["signal_id"]
        for s in sorted(
            (signal(n, at(1 + n % 4, 10)) for n in range(23)),
            key=lambda s: (s["timestamp"], s["signal_id"]),
            reverse=True,
        )
    ]

    pages = walk(client, acme, "/v2/signals", "signals", limit=5)
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    assert [s["signal_id"] for p in pages for s in p] == expected

    # A signal arriving between two page requests, newer than all, shifts nothing.
    first = client.get("/v2/signals", params={"limit": 10}, headers=acme.auth).json()
    store(db, acme, {"improvement_signals": [signal(99, at(30))]})
    rest = walk(client, acme, "/v2/signals", "signals", limit=10, cursor=first["next_cursor"])
    assert [s["signal_id"] for s in first["signals"]] + [s["signal_id"] for p in rest for s in p] == expected

    # The default page is 50, and the last page says so with a null cursor.
    default = client.get("/v2/signals", headers=acme.auth).json()
    assert len(default["signals"]) == 24 and default["next_cursor"] is None


def test_signal_filters(client: TestClient, acme: Account, db: psycopg.Connection) -> None:
    store(
        db,
        acme,
        {
            "improvement_signals": [
                signal(1, at(1), mentioned_skill="parser", signal_type="correction"),
                signal(2, at(2), mentioned_skill="parser", signal_type="explicit_request"),
                signal(3, at(3), mentioned_skill="linter", signal_type="correction"),
                signal(4, at(4), mentioned_skill=None, signal_type="unmatched"),
                signal(5, at(5), mentioned_skill="parser", consumed=True, consumed_at=at(6), consumed_by_run="orch-1"),
            ]
        },
    )

    def ids(**params: Any) -> list[str]:
        resp = client.get("/v2/signals", params=params, headers=acme.auth)
        assert resp.status_code == 200, resp.text
        return [s["signal_id"] for s in resp.json()["signals"]]

    assert ids() == ["sig-5", "sig-4", "sig-3", "sig-2", "sig-1"]
    assert ids(consumed="false") == ["sig-4", "sig-3", "sig-2", "sig-1"]
    assert ids(consumed="true") == ["sig-5"]
    assert ids(skill="parser") == ["sig-5", "sig-2", "sig-1"]
    assert ids(skill="parser", consumed="false") == ["sig-2", "sig-1"]
    assert ids(signal_type="correction") == ["sig-5", "sig-3", "sig-1"]
    assert ids(since=at(2), until=at(4)) == ["sig-3", "sig-2"]  # since inclusive, until exclusive
    assert ids(since="2026-11-03") == ["sig-5", "sig-4", "sig-3"]  # a date is midnight UTC
    assert ids(until="2026-11-02T13:00:00+01:00") == ["sig-1"]  # 12:00Z, when sig-2 came
    assert ids(until="2026-11-02T13:00:01+01:00") == ["sig-2", "sig-1"]
    # An offset's '+' sent unencoded arrives as a space: still understood.
    unencoded = client.get("/v2/signals?until=2026-11-02T13:00:01+01:00", headers=acme.auth).json()["signals"]
    assert [s["signal_id"] for s in unencoded] == ["sig-2", "sig-1"]
    assert ids(skill="", consumed="", signal_type="") == ids()  # empty means unset
    assert ids(skill="nobody") == []


@pytest.mark.parametrize(
    ("path", "params", "named"),
    [
        ("/v2/signals", {"consumed": "maybe"}, "consumed"),
        ("/v2/signals", {"since": "yesterday"}, "since"),
        ("/v2/signals", {"until": "2026-13-01"}, "until"),
        ("/v2/signals", {"since": "2026-11-02", "until": "2026-11-01"}, "until"),
        ("/v2/signals", {"limit": "0"}, "limit"),
        ("/v2/signals", {"limit": "501"}, "limit"),
        ("/v2/signals", {"limit": "ten"}, "limit"),
        ("/v2/signals", {"cursor": "not-a-cursor"}, "cursor"),
        ("/v2/signals", {"skil": "parser"}, "skil"),
        ("/v2/signals", [("skill", "a"), ("skill", "b")], "skill"),
        ("/v2/skills", {"limit": "-1"}, "limit"),
        ("/v2/skills", {"cursor": "e30"}, "cursor"),
        ("/v2/skills/parser/grading", {"since": "soon"}, "since"),
        ("/v2/skills/parser/grading", {"consumed": "true"}, "consumed"),
        ("/v2/pushes/p1", {"verbose": "1"}, "verbose"),
    ],
)
def test_a_bad_parameter_is_a_422_naming_it(
    client: TestClient, acme: Account, path: str, params: Any, named: str
) -> None:
    resp = client.get(path, params=params, headers=acme.auth)
    assert resp.status_code == 422
    body = resp.json()
    assert body["ok"] is False and body["error"]["code"] == "invalid_parameter"
    assert body["error"]["message"].startswith(f"{named}: ")


def test_a_cursor_of_one_list_is_refused_by_another(client: TestClient, acme: Account, db: psycopg.Connection) -> None:
    store(db, acme, {"grading_results": [samples.grading_result(n, skill_name="parser") for n in range(3)]})
    cursor = client.get("/v2/skills/parser/grading", params={"limit": 1}, headers=acme.auth).json()["next_cursor"]
    assert cursor is not None
    resp = client.get("/v2/signals", params={"cursor": cursor}, headers=acme.auth)
    assert resp.status_code == 422 and resp.json()["error"]["message"].startswith("cursor: ")


@pytest.mark.parametrize(
    ("method", "path", "params", "named"),
    [
        ("GET", "/v2/pushes/a%00b", {}, "push_id"),
        ("GET", "/v2/skills/pars%00er/grading", {}, "skill_name"),
        ("GET", "/v2/signals", {"skill": "pars\x00er"}, "skill"),
        ("GET", "/v2/skills/parser/grading", {"since": "2026-11-28\x00"}, "since"),
        ("POST", "/v2/signals/sig%00/consume", {}, "signal_id"),
    ],
)
def test_a_nul_character_in_a_parameter_is_a_422_naming_it(
    client: TestClient, acme: Account, method: str, path: str, params: Any, named: str
) -> None:
    # Postgres cannot compare a string holding NUL: without the check, a 500.
    resp = client.request(method, path, params=params, headers=acme.auth, content=json.dumps({"run_id": "r"}))
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["message"] == f"{named}: string holds a NUL character (\\u0000), which cannot be stored"


def test_a_cursor_holding_a_nul_character_is_not_a_cursor_given(client: TestClient, acme: Account) -> None:
    forged = base64.urlsafe_b64encode(msgspec.json.encode(["signals", at(1), "sig\x00"])).rstrip(b"=").decode()
    resp = client.get("/v2/signals", params={"cursor": forged}, headers=acme.auth)
    assert resp.status_code == 422 and resp.json()["error"]["message"].startswith("cursor: not a cursor")


def test_a_trend_window_ending_at_the_first_day_of_year_1_is_empty_not_a_500(client: TestClient, acme: Account) -> None:
    resp = client.get("/v2/skills/parser/grading", params={"until": "0001-01-01"}, headers=acme.auth)
    assert resp.status_code == 200, resp.text
    assert resp.json()["trend"] == [] and resp.json()["trend_since"].startswith("0001-01-01")


# -- consume ------------------------------------------------------------------------------------------------------------


def consume(client: TestClient, who: Account, signal_id: str, **body: Any) -> Any:
    return client.post(f"/v2/signals/{signal_id}/consume", content=json.dumps(body), headers=who.auth)


def test_consume_flips_a_signal_once_and_a_second_run_keeps_the_first(
    client: TestClient, acme: Account, db: psycopg.Connection
) -> None:
    store(db, acme, {"improvement_signals": [signal(1, at(1)), signal(2, at(2))]})

    first = consume(client, acme, "sig-1", run_id="orch-1")
    assert first.status_code == 200
    assert first.json()["changed"] is True
    flipped = first.json()["signal"]
    assert flipped["consumed"] is True and flipped["consumed_by_run"] == "orch-1"
    assert abs(datetime.fromisoformat(flipped["consumed_at"]) - datetime.now(UTC)) < timedelta(minutes=1)

    again = consume(client, acme, "sig-1", run_id="orch-1")
    later = consume(client, acme, "sig-1", run_id="orch-2")
    for resp in (again, later):
        assert resp.status_code == 200
        assert resp.json() == {"changed": False, "signal": flipped}

    # An explicit, earlier consumption is the earliest known: it wins (the workers' rule).
    earlier = consume(client, acme, "sig-1", run_id="orch-0", consumed_at="2026-11-01T00:00:00Z").json()
    assert earlier["changed"] is True
    assert (earlier["signal"]["consumed_at"], earlier["signal"]["consumed_by_run"]) == (
        "2026-11-01T00:00:00Z",
        "orch-0",
    )

    # A replayed push saying consumed: false never un-consumes it.
    store(db, acme, {"improvement_signals": [signal(1, at(1), consumed=False)]})
    listed = client.get("/v2/signals", params={"consumed": "true"}, headers=acme.auth).json()["signals"]
    assert [(s["signal_id"], s["consumed_by_run"]) for s in listed] == [("sig-1", "orch-0")]
    assert (
        client.get("/v2/signals", params={"consumed": "false"}, headers=acme.auth).json()["signals"][0]["signal_id"]
        == "sig-2"
    )


def test_consume_refuses_bad_bodies_and_unknown_signals(
    client: TestClient, acme: Account, db: psycopg.Connection
) -> None:
    store(db, acme, {"improvement_signals": [signal(1, at(1))]})
    missing_run = consume(client, acme, "sig-1")
    assert missing_run.status_code == 422 and "run_id" in missing_run.json()["error"]["message"]
    empty_run = consume(client, acme, "sig-1", run_id="")
    assert empty_run.status_code == 422 and "run_id" in empty_run.json()["error"]["message"]
    bad_time = consume(client, acme, "sig-1", run_id="r", consumed_at="later")
    assert bad_time.status_code == 422 and "consumed_at" in bad_time.json()["error"]["message"]
    for year_0_or_10000 in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"):
        out_of_range = consume(client, acme, "sig-1", run_id="r", consumed_at=year_0_or_10000)
        assert out_of_range.status_code == 422
        assert out_of_range.json()["error"]["message"] == "body.consumed_at: time is outside the years 1 to 9999 in UTC"
    nul_run = consume(client, acme, "sig-1", run_id="orch\x00-1")
    assert nul_run.status_code == 422
    assert nul_run.json()["error"]["message"].startswith("body.run_id: string holds a NUL character")
    not_json = client.post("/v2/signals/sig-1/consume", content=b"{run_id", headers=acme.auth)
    assert not_json.status_code == 400
    unknown = consume(client, acme, "sig-404", run_id="r")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    assert client.get("/v2/signals", params={"consumed": "true"}, headers=acme.auth).json()["signals"] == []


STORED_STATES: list[dict[str, Any]] = [
    {"consumed": False},
    {"consumed": True},  # consumed, but the CLI never said when
    {"consumed": True, "consumed_at": at(10)},  # ... or by which run
    {"consumed": True, "consumed_at": at(10), "consumed_by_run": "run-b"},
    {"consumed": True, "consumed_at": at(20), "consumed_by_run": "run-b"},
    {"consumed": True, "consumed_at": at(15), "consumed_by_run": "run-a"},
    {"consumed": True, "consumed_at": at(15), "consumed_by_run": "run-c"},
]


@pytest.mark.parametrize("stored", STORED_STATES)
def test_consume_applies_the_same_rule_as_the_workers(
    client: TestClient, acme: Account, db: psycopg.Connection, stored: dict[str, Any]
) -> None:
    """The endpoint and a pushed `consumed: true` end in the same state, from any stored state."""
    incoming = {"consumed_at": at(15), "consumed_by_run": "run-b"}
    store(db, acme, {"improvement_signals": [signal(1, at(1), **stored), signal(2, at(1), **stored)]})

    store(db, acme, {"improvement_signals": [signal(1, at(1), consumed=True, **incoming)]})
    resp = consume(client, acme, "sig-2", run_id=incoming["consumed_by_run"], consumed_at=incoming["consumed_at"])
    assert resp.status_code == 200

    rows = db.execute(
        "SELECT signal_id, consumed, consumed_at, consumed_by_run FROM improvement_signals ORDER BY signal_id"
    ).fetchall()
    assert rows[0][1:] == rows[1][1:]


# -- skills and grading -----------------------------------------------------------------------------------------------------


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_skills_list_what_was_seen_with_pass_rate_and_unconsumed_signals(
    client: TestClient, acme: Account, db: psycopg.Connection
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    g = samples.grading_result
    store(
        db,
        acme,
        {
            "grading_results": [
                g(1, skill_name="parser", graded_at=iso(now - timedelta(days=1)), passed_count=3, total_count=4),
                g(2, skill_name="parser", graded_at=iso(now - timedelta(days=2)), passed_count=5, total_count=6),
                # Older than 30 days: counts as last graded elsewhere, not in the pass rate.
                g(3, skill_name="parser", graded_at=iso(now - timedelta(days=40)), passed_count=0, total_count=9),
                g(4, skill_name="linter", graded_at=iso(now - timedelta(days=45)), pass_rate=0.5),
            ],
            "improvement_signals": [
                signal(1, at(1), mentioned_skill="parser"),
                signal(2, at(1), mentioned_skill="parser", consumed=True),
                signal(3, at(1), mentioned_skill="formatter"),
                signal(4, at(1), mentioned_skill="formatter"),
                signal(5, at(1), mentioned_skill=None),
            ],
        },
    )
    skills = client.get("/v2/skills", headers=acme.auth).json()
    assert skills == {
        "skills": [
            {
                "skill_name": "formatter",
                "last_graded_at": None,
                "pass_rate_30d": None,
                "checks_30d": 0,
                "unconsumed_signals": 2,
            },
            {
                "skill_name": "linter",
                "last_graded_at": iso(now - timedelta(days=45)),
                "pass_rate_30d": None,
                "checks_30d": 0,
                "unconsumed_signals": 0,
            },
            {
                "skill_name": "parser",
                "last_graded_at": iso(now - timedelta(days=1)),
                "pass_rate_30d": pytest.approx(8 / 10),
                "checks_30d": 2,
                "unconsumed_signals": 1,
            },
        ],
        "next_cursor": None,
    }
    pages = walk(client, acme, "/v2/skills", "skills", limit=2)
    assert [[s["skill_name"] for s in p] for p in pages] == [["formatter", "linter"], ["parser"]]


def test_grading_history_pages_and_its_trend_matches_a_hand_computation(
    client: TestClient, acme: Account, db: psycopg.Connection
) -> None:
    g = samples.grading_result
    no_counts = {"passed_count": None, "failed_count": None, "total_count": None}
    results = [
        g(0, skill_name="parser", graded_at="2026-10-31T23:59:59Z", passed_count=0, total_count=10),  # before since
        # Nov 1: counts exist, so (3 + 1) / (4 + 4); the result without counts does not weigh in.
        g(1, skill_name="parser", graded_at="2026-11-01T00:00:00Z", passed_count=3, total_count=4),
        g(2, skill_name="parser", graded_at="2026-11-01T23:59:59Z", passed_count=1, total_count=4),
        g(3, skill_name="parser", graded_at="2026-11-01T12:00:00Z", pass_rate=0.2, **no_counts),
        # Nov 2: no counts at all, so the mean of pass_rate: (0.6 + 0.8) / 2.
        g(4, skill_name="parser", graded_at="2026-11-02T00:00:00Z", pass_rate=0.6, **no_counts),
        g(5, skill_name="parser", graded_at="2026-11-02T08:00:00Z", pass_rate=0.8, **no_counts),
        # Nov 4: 0 of 5; Nov 5: nothing to rate.
        g(6, skill_name="parser", graded_at="2026-11-04T09:00:00Z", passed_count=0, total_count=5),
        g(7, skill_name="parser", graded_at="2026-11-05T09:00:00Z", pass_rate=None, **no_counts),
        g(8, skill_name="parser", graded_at="2026-11-06T00:00:00Z", passed_count=5, total_count=5),  # until: excluded
        g(9, skill_name="linter", graded_at="2026-11-01T10:00:00Z", passed_count=0, total_count=5),  # other skill
    ]
    store(db, acme, {"grading_results": results})
    window = {"since": "2026-11-01", "until": "2026-11-06"}

    first = client.get("/v2/skills/parser/grading", params={**window, "limit": 3}, headers=acme.auth).json()
    assert first["skill_name"] == "parser"
    assert (first["trend_since"], first["trend_until"]) == ("2026-11-01T00:00:00Z", "2026-11-06T00:00:00Z")
    assert first["trend"] == [
        {"date": "2026-11-01", "pass_rate": pytest.approx(4 / 8), "checks": 3},
        {"date": "2026-11-02", "pass_rate": pytest.approx(0.7), "checks": 2},
        {"date": "2026-11-04", "pass_rate": 0.0, "checks": 1},
        {"date": "2026-11-05", "pass_rate": None, "checks": 1},
    ]
    pages = walk(client, acme, "/v2/skills/parser/grading", "results", limit=3, **window)
    assert [[r["grading_id"] for r in p] for p in pages] == [
        ["grade-7", "grade-6", "grade-5"],
        ["grade-4", "grade-2", "grade-3"],
        ["grade-1"],
    ]
    assert pages[0][0] == dict.fromkeys(GRADING_FIELDS) | results[7]  # the record as pushed

    unknown = client.get("/v2/skills/nobody/grading", headers=acme.auth).json()
    assert (unknown["results"], unknown["trend"], unknown["next_cursor"]) == ([], [], None)


# -- isolation and authentication -----------------------------------------------------------------------------------------


def test_a_key_sees_nothing_of_another_workspace(
    client: TestClient, acme: Account, globex: Account, db: psycopg.Connection, settings: Settings
) -> None:
    store(
        db,
        globex,
        {
            "improvement_signals": [signal(1, at(1), mentioned_skill="parser")],
            "grading_results": [samples.grading_result(1, skill_name="parser")],
        },
    )
    answer = PushAnswer(ok=True, success=True, push_id="queued-push", accepted={"sessions": 1}, errors=[])
    Redis.from_url(settings.redis_url).set(dedupe_key(globex.workspace_id, "queued-push"), msgspec.json.encode(answer))
    db.execute(
        "INSERT INTO pushes (workspace_id, push_id, status, received_at) VALUES (%s, 'done-push', 'processed', now())",
        (globex.workspace_id,),
    )
    assert client.get("/v2/pushes/queued-push", headers=globex.auth).json()["status"] == "queued"
    assert client.get("/v2/pushes/done-push", headers=globex.auth).json()["status"] == "processed"

    for push_id in ("queued-push", "done-push"):
        resp = client.get(f"/v2/pushes/{push_id}", headers=acme.auth)
        assert resp.status_code == 404
        assert resp.json()["error"]["message"] == f"no push {push_id!r} in this workspace"
    assert client.get("/v2/signals", headers=acme.auth).json() == {"signals": [], "next_cursor": None}
    assert client.get("/v2/skills", headers=acme.auth).json() == {"skills": [], "next_cursor": None}
    grading = client.get("/v2/skills/parser/grading", params={"since": "2026-01-01"}, headers=acme.auth).json()
    assert (grading["results"], grading["trend"]) == ([], [])
    assert consume(client, acme, "sig-1", run_id="mine").status_code == 404
    theirs = client.get("/v2/signals", headers=globex.auth).json()["signals"]
    assert [(s["signal_id"], s["consumed"]) for s in theirs] == [("sig-1", False)]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/pushes/p1"),
        ("GET", "/v2/signals"),
        ("POST", "/v2/signals/sig-1/consume"),
        ("GET", "/v2/skills"),
        ("GET", "/v2/skills/parser/grading"),
    ],
)
def test_reads_need_a_key(client: TestClient, db: psycopg.Connection, method: str, path: str) -> None:
    resp = client.request(method, path)
    assert resp.status_code == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
    resp = client.request(method, path, headers={"Authorization": "Bearer st_live_" + "x" * 43})
    assert resp.status_code == 401 and "unknown or revoked" in resp.json()["error"]["message"]


def test_cursors_are_opaque_base64url(client: TestClient, acme: Account, db: psycopg.Connection) -> None:
    store(db, acme, {"improvement_signals": [signal(n, at(1)) for n in range(3)]})
    cursor = client.get("/v2/signals", params={"limit": 2}, headers=acme.auth).json()["next_cursor"]
    assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert json.loads(base64.urlsafe_b64decode(cursor + "==")) == ["signals", "2026-11-01T12:00:00Z", "sig-1"]


# -- plans at scale ----------------------------------------------------------------------------------------------------------

BIG = 200_000


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from plan_nodes(child)


def explain(db: psycopg.Connection, query: sql.Composable, args: Any) -> list[dict[str, Any]]:
    row = db.execute(sql.SQL("EXPLAIN (FORMAT JSON) {}").format(query), args).fetchone()
    assert row is not None
    return list(plan_nodes(row[0][0]["Plan"]))


def parents(db: psycopg.Connection) -> dict[str, str]:
    """Each partition's and each partition index's parent, by name (tables partitioned by time: store/partitions.py)."""
    rows = db.execute(
        "SELECT c.relname, p.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " JOIN pg_class p ON p.oid = i.inhparent"
    ).fetchall()
    return dict(rows)


def assert_reads_index(
    db: psycopg.Connection, nodes: list[dict[str, Any]], table: str, index: str, ordered: bool = True
) -> None:
    """The table (or its partitions) is read through `index` only. An ordered read must walk the index in
    order (an index scan, or partitions' index scans merged in order: no sort); an unordered one (an
    aggregate) may also take a bitmap scan of it, which the planner picks or not by its sampled statistics."""
    parent = parents(db)
    scans = [n for n in nodes if table in (n.get("Relation Name"), parent.get(n.get("Relation Name", "")))]
    assert scans, nodes
    kinds = ("Index Scan", "Index Only Scan") if ordered else ("Index Scan", "Index Only Scan", "Bitmap Heap Scan")
    assert all(n["Node Type"] in kinds for n in scans), [n["Node Type"] for n in scans]
    used = {
        parent.get(m["Index Name"], m["Index Name"])
        for n in scans
        for m in plan_nodes(n)
        if m["Node Type"] in ("Index Scan", "Index Only Scan", "Bitmap Index Scan")
    }
    assert used == {index}
    if ordered:  # pages come off the index in order: nothing to sort
        assert not [n for n in nodes if n["Node Type"] in ("Sort", "Incremental Sort")]


def test_lists_read_indexes_not_tables_at_200k_rows(db: psycopg.Connection) -> None:
    ws = "ws_big"
    db.execute(
        "INSERT INTO improvement_signals (workspace_id, signal_id, timestamp, session_id, query, signal_type,"
        " consumed, mentioned_skill, consumed_at, consumed_by_run)"
        " SELECT CASE WHEN i %% 10 = 0 THEN 'ws_small' ELSE %(ws)s END, 'sig-' || i,"
        "  timestamptz '2026-01-01' + i * interval '1 minute', 'sess-' || i / 10, 'why did it not trigger ' || i,"
        "  (ARRAY['correction', 'explicit_request', 'unmatched'])[i %% 3 + 1], i %% 50 <> 0, 'skill-' || i %% 40,"
        "  CASE WHEN i %% 50 <> 0 THEN timestamptz '2026-06-01' END, CASE WHEN i %% 50 <> 0 THEN 'orch-' || i / 1000 END"
        " FROM generate_series(1, %(n)s) AS i",
        {"ws": ws, "n": BIG},
    )
    db.execute(
        "INSERT INTO grading_results (workspace_id, grading_id, session_id, skill_name, graded_at,"
        " pass_rate, passed_count, total_count)"
        " SELECT %(ws)s, 'grade-' || i, 'sess-' || i / 10, 'skill-' || i %% 40,"
        "  timestamptz '2026-01-01' + i * interval '1 minute', 0.5, i %% 5, 4 + i %% 3"
        " FROM generate_series(1, %(n)s) AS i",
        {"ws": ws, "n": BIG},
    )
    db.execute("ANALYZE improvement_signals, grading_results")

    cursor_key = (datetime(2026, 3, 1, tzinfo=UTC), "sig-84000")
    since, until = datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)
    signal_cases = [
        (SignalFilters(), None, "improvement_signals_newest"),
        (SignalFilters(), cursor_key, "improvement_signals_newest"),
        (SignalFilters(since=since, until=until), cursor_key, "improvement_signals_newest"),
        (SignalFilters(signal_type="correction"), cursor_key, "improvement_signals_newest"),
        (SignalFilters(consumed=False), None, "improvement_signals_unconsumed"),
        (SignalFilters(consumed=False), cursor_key, "improvement_signals_unconsumed"),
        (SignalFilters(skill="skill-7"), cursor_key, "improvement_signals_skill"),
        (SignalFilters(skill="skill-7", since=since), None, "improvement_signals_skill"),
    ]
    for filters, after, index in signal_cases:
        query, args = signals_query(ws, filters, after, DEFAULT_LIMIT)
        assert_reads_index(db, explain(db, query, args), "improvement_signals", index)

    grade_key = (datetime(2026, 3, 1, tzinfo=UTC), "grade-84000")
    for s, u, after in ((None, None, None), (None, None, grade_key), (since, until, grade_key)):
        query, args = grading_query(ws, "skill-7", s, u, after, MAX_LIMIT)
        assert_reads_index(db, explain(db, query, args), "grading_results", "grading_results_skill_newest")
    trend = explain(db, TREND, (ws, "skill-7", since, until))
    assert_reads_index(db, trend, "grading_results", "grading_results_skill_newest", ordered=False)

    # GET /v2/skills: index probes only, whatever the number of rows.
    # (An empty partition, one of the periods these rows do not reach, costs nothing to scan.)
    skills = explain(db, SKILLS, {"ws": ws, "after": "", "limit": 51, "since": since})
    empty = {r[0] for r in db.execute("SELECT relname FROM pg_class WHERE relkind = 'r' AND reltuples = 0")}
    scanned = [n["Relation Name"] for n in skills if n["Node Type"] == "Seq Scan"]
    assert not [name for name in scanned if name not in empty], scanned
