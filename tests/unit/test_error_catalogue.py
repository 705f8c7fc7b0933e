"""The client errors live in one table (api/errors.py): codes, statuses, meanings, Retry-After."""

from __future__ import annotations

import pathlib
import re

from starlette.testclient import TestClient

from api import errors
from api.openapi import build
from tests.unit.inprocess import KEY

API = pathlib.Path(errors.__file__).parent


def test_every_code_is_defined_once() -> None:
    codes = [k.code for k in errors.CATALOGUE]
    assert len(codes) == len(set(codes)), sorted(c for c in codes if codes.count(c) > 1)
    assert {k.status for k in errors.CATALOGUE} >= {400, 401, 403, 404, 405, 408, 413, 415, 422, 429, 500, 503}


def test_no_endpoint_spells_a_status_or_a_code_by_hand() -> None:
    """An error is raised from the catalogue, never as ApiError(status, "code", ...) or a literal Retry-After."""
    offenders = []
    for path in sorted(API.rglob("*.py")):
        if path.name == "errors.py":
            continue
        text = path.read_text()
        for pattern in (r"ApiError\(\s*\d{3}", r"error_response\(\s*\d{3}", r"\"Retry-After\":\s*\""):
            offenders += [f"{path.name}: {m.group(0)}" for m in re.finditer(pattern, text)]
    assert offenders == []


def test_retry_after_comes_from_the_kind_unless_the_error_says_otherwise() -> None:
    assert errors.UNAVAILABLE("down").headers == {"Retry-After": "5"}
    assert errors.RATE_LIMITED("slow down", retry_after_s=3).headers == {"Retry-After": "3"}
    assert errors.UNAUTHORIZED("who").headers == {"WWW-Authenticate": "Bearer"}
    assert errors.INVALID_JSON("no").headers == {}


def test_a_bug_is_not_mistaken_for_a_client_error() -> None:
    assert errors.as_api_error(RuntimeError("bug")) is None
    assert errors.as_api_error(KeyError("bug")) is None


def test_openapi_describes_each_status_with_every_code_of_it() -> None:
    doc = build()
    push = doc["paths"]["/v2/push"]["post"]["responses"]
    for status in ("413", "503"):
        described = push[status]["description"]
        for kind in errors.CATALOGUE:
            if str(kind.status) == status:
                assert f"`{kind.code}`" in described


def test_the_domain_errors_reach_the_client_through_the_handlers(client: TestClient) -> None:
    """A malformed envelope is mapped by exception_handlers to the catalogue's 422 with its path."""
    resp = client.post("/v2/push", json={"data": []}, headers={"Authorization": f"Bearer {KEY}"})
    assert resp.status_code == 422
    assert resp.json()["error"]["code"] == errors.INVALID_ENVELOPE.code
    assert resp.json()["errors"][0].startswith("data")
