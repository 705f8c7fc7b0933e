"""Settling and counting a fault scenario driven by the CLI-policy client (tests/e2e/faults/cli_client.py).

After the fault is over, every push its CLI saw acknowledged must land in Postgres
(processed, each record once); a record is lost when its CLI gave up on its push
(the real CLI never sends it again) or when it was acknowledged and never landed.
Each scenario adds a row to CLI_TABLE (printed at the end of the pytest run, and
written as JSON lines to $FAULT_TABLE_OUT when set), then asserts 0 lost.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass

import psycopg
from redis import Redis

from runtime.settings import Settings
from tests.e2e.faults.cli_client import CliLedger
from tests.e2e.faults.harness import push_rows, queue_quiet, record_ids
from tests.e2e.rows import ID_COLUMNS
from tests.e2e.stack import Stack

SETTLE_TIMEOUT_S = 180.0
CLI_TABLE: list[CliFigures] = []
HEADER = "| scenario | code | pushes | acknowledged | given up by the client | records lost |"


@dataclass
class CliFigures:
    scenario: str
    code: str  # which checkout ran (SELFTUNE_CODE_DIR, else this one)
    pushes: int
    acknowledged: int
    given_up: int
    records_lost: int
    records_sent: int
    landed_s: float  # from the end of the load until every acknowledged push landed (or the timeout)
    answers: dict[str, int]
    notes: str

    def row(self) -> str:
        return (
            f"| {self.scenario} | {self.code} | {self.pushes} | {self.acknowledged} | {self.given_up}"
            f" | {self.records_lost} of {self.records_sent} |"
        )


def record_row(figures: CliFigures) -> None:
    """Add a scenario's row to the table printed at the end of the run (and to $FAULT_TABLE_OUT)."""
    CLI_TABLE.append(figures)
    out = os.environ.get("FAULT_TABLE_OUT")
    if out:
        with open(out, "a") as f:
            f.write(json.dumps(asdict(figures)) + "\n")
    print(f"\n{HEADER}\n{figures.row()}\nanswers seen: {figures.answers}; {figures.notes}")


def code_label() -> str:
    other = os.environ.get("SELFTUNE_CODE_DIR")
    return f"before ({os.path.basename(other.rstrip('/'))})" if other else "this build"


def settle(
    name: str,
    stack: Stack,
    settings: Settings,
    workspace_id: str,
    ledger: CliLedger,
    redis: Redis,
    notes: str = "",
    timeout_s: float = SETTLE_TIMEOUT_S,
) -> CliFigures:
    """Wait until every acknowledged push landed (or the timeout), count what was lost, record the row, assert."""
    started = time.monotonic()
    acked = ledger.acknowledged

    def landed() -> bool:
        with psycopg.connect(settings.database_url, autocommit=True, connect_timeout=3) as conn:
            rows = push_rows(conn, workspace_id)
        return all(rows.get(p, ("",))[0] == "processed" for p in acked)

    deadline = started + timeout_s
    while time.monotonic() < deadline:
        try:
            if landed() and queue_quiet(redis, settings):
                break
        except (psycopg.Error, OSError):
            pass
        time.sleep(0.5)
    landed_s = time.monotonic() - started

    with psycopg.connect(settings.database_url, autocommit=True, connect_timeout=3) as conn:
        rows = push_rows(conn, workspace_id)
        found = record_ids(conn, workspace_id)
    processed = {p for p, r in rows.items() if r[0] == "processed"}
    sent_ids = ledger.expected_ids(set(ledger.pushes))
    missing = sum(len(set(sent_ids[t]) - set(found[t])) for t in ID_COLUMNS)
    figures = CliFigures(
        scenario=name,
        code=code_label(),
        pushes=len(ledger.pushes),
        acknowledged=len(acked),
        given_up=len(ledger.given_up),
        records_lost=missing,
        records_sent=sum(len(ids) for ids in sent_ids.values()),
        landed_s=round(landed_s, 1),
        answers=dict(ledger.attempts),
        notes=notes,
    )
    record_row(figures)

    assert figures.given_up == 0, f"the CLI gave up on {figures.given_up} pushes (their records are lost): {figures}"
    assert not (acked - processed), f"acknowledged pushes not processed: {sorted(acked - processed)[:20]}"
    assert missing == 0, f"{missing} records lost: {figures}"
    for table in ID_COLUMNS:
        assert found[table] == sorted(set(found[table])), f"{table}: a record landed twice"
        assert found[table] == sent_ids[table], f"{table}: rows other than the records sent"
    return figures
