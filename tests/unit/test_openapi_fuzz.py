"""Schemathesis against /openapi.json, in-process: every documented operation, positive and negative inputs.

Invariants: never a 5xx (no checks run against a 503: fakeredis is up and the
queue empty), and every answer has a documented status, content type, headers
and body shape.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from api import openapi
from tests.unit.fuzzing import KEY, REQUEST_TIMEOUT_S, SCHEMATHESIS_CHECKS, FuzzTarget, assert_documented, fuzz_settings


@pytest.fixture(scope="module")
def schema_target() -> Iterator[FuzzTarget]:
    # Not entered with a TestClient: schemathesis runs this app's lifespan itself.
    yield FuzzTarget(fuzz_settings())


# The endpoints that answer without Postgres; the others (reads, device enrollment, /readyz)
# are fuzzed on the real servers by tests/integration/test_reads_fuzz.py.
SERVERLESS_PATHS = ["/v2/push", "/api/v1/push", "/healthz", "/metrics", "/openapi.json"]

# The document GET /openapi.json serves (tests/unit/test_openapi.py checks they are the same bytes),
# loaded without an app so that collecting this module starts nothing.
schema = schemathesis.openapi.from_dict(json.loads(openapi.document())).include(path=SERVERLESS_PATHS)


def call_and_check(case: Any, target: FuzzTarget) -> None:
    target.flush()
    response = case.call_and_validate(
        app=target.app,
        headers={"Authorization": f"Bearer {KEY}"},
        checks=SCHEMATHESIS_CHECKS,
        timeout=REQUEST_TIMEOUT_S,
    )
    if case.path.endswith("/push"):
        [content_type] = response.headers["content-type"]
        assert_documented(response.status_code, content_type, response.content)


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(case: Any, schema_target: FuzzTarget) -> None:
    call_and_check(case, schema_target)


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented_long(case: Any, schema_target: FuzzTarget) -> None:
    call_and_check(case, schema_target)
