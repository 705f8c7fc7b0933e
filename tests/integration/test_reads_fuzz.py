"""Schemathesis against the endpoints that need Postgres, on the real servers.

The reads, the consume endpoint, device enrollment, alpha/verify and /readyz:
every documented operation with positive and negative inputs, as a client holding a
valid key of a workspace with data in it. Invariants: never a 5xx, and every answer
as /openapi.json documents it (status, content type, headers, body shape).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from starlette.applications import Starlette

from api import openapi
from api.app import create_app
from bench import samples
from runtime.settings import Settings
from tests.support import batch_of, new_account
from tests.unit.fuzzing import REQUEST_TIMEOUT_S, SCHEMATHESIS_CHECKS
from tests.unit.test_openapi_fuzz import SERVERLESS_PATHS
from workers.jobs import write_batch

schema = schemathesis.openapi.from_dict(json.loads(openapi.document())).exclude(path=SERVERLESS_PATHS)


@pytest.fixture
def seeded(db: psycopg.Connection, settings: Settings) -> Iterator[tuple[Starlette, str]]:
    """The app, and a key of a workspace holding signals, grading results and a push."""
    fuzzed = new_account(db, "fuzzed")
    records = {
        "improvement_signals": [samples.improvement_signal(n, mentioned_skill="parser") for n in range(5)],
        "grading_results": [samples.grading_result(n, skill_name="parser") for n in range(5)],
    }
    write_batch(db, batch_of(records, push_id=uuid.uuid4().hex, workspace_id=fuzzed.workspace_id))
    # Not entered with a TestClient: schemathesis runs the app's lifespan itself.
    yield create_app(settings), fuzzed.key


def call_and_check(case: Any, app: Starlette, key: str) -> None:
    case.call_and_validate(
        app=app, headers={"Authorization": f"Bearer {key}"}, checks=SCHEMATHESIS_CHECKS, timeout=REQUEST_TIMEOUT_S
    )


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_on_postgres_answers_as_documented(case: Any, seeded: tuple[Starlette, str]) -> None:
    call_and_check(case, *seeded)


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_on_postgres_answers_as_documented_long(case: Any, seeded: tuple[Starlette, str]) -> None:
    call_and_check(case, *seeded)
