"""GET /openapi.json: a valid OpenAPI 3.1 document, generated from the Structs, that says what the code does."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import msgspec
import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator
from starlette.routing import Route
from starlette.testclient import TestClient

from api import openapi
from bench.samples import FACTORIES
from schema.envelope import PushEnvelope, RecordArrays
from schema.records import RECORD_DECODERS, RECORD_TYPES
from tests.unit.inprocess import KEY

PUSH_PATHS = ("/v2/push", "/api/v1/push")
ERROR_STATUSES = {400, 401, 403, 408, 413, 415, 422, 429, 503}


@pytest.fixture
def doc(client: TestClient) -> dict[str, Any]:
    resp = client.get("/openapi.json")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    return resp.json()  # type: ignore[no-any-return]


def validator(doc: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    """A JSON Schema validator for one component, resolving refs inside the document."""
    schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def test_document_is_valid_openapi_3_1(doc: dict[str, Any]) -> None:
    assert doc["openapi"].startswith("3.1")
    OpenAPIV31SpecValidator(doc).validate()


def test_document_is_built_once(client: TestClient) -> None:
    assert openapi.document() is openapi.document()
    assert client.get("/openapi.json").content == openapi.document()


def test_push_body_references_every_record_struct_from_both_envelopes(doc: dict[str, Any]) -> None:
    body = doc["paths"]["/v2/push"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {
        "anyOf": [{"$ref": "#/components/schemas/PushEnvelope"}, {"$ref": "#/components/schemas/PushPayloadV2"}]
    }
    schemas = doc["components"]["schemas"]
    for envelope, section in (("PushEnvelope", "data"), ("PushPayloadV2", "canonical")):
        arrays = schemas[envelope]["properties"][section]["anyOf"]
        assert {"$ref": "#/components/schemas/RecordArrays"} in arrays
    arrays = schemas["RecordArrays"]["properties"]
    assert set(arrays) == set(RECORD_TYPES)
    for name, struct in RECORD_TYPES.items():
        [array, null] = arrays[name]["anyOf"]
        assert array == {"type": "array", "items": {"$ref": f"#/components/schemas/{struct.__name__}"}}
        assert null == {"type": "null"}
        # Generated from the Struct itself: no hand-written copy.
        generated = msgspec.json.schema_components([struct], ref_template=openapi.REF_TEMPLATE)[1]
        assert schemas[struct.__name__] == generated[struct.__name__]


def test_the_two_envelopes_cover_every_field_the_decoder_reads() -> None:
    assert set(openapi.DOCUMENTED_FIELDS) | set(openapi.CLI_FIELDS) == set(PushEnvelope.__struct_fields__)
    assert set(RecordArrays.__struct_fields__) == set(RECORD_TYPES)


@pytest.mark.parametrize("path", PUSH_PATHS)
def test_push_answers_and_errors_are_documented(doc: dict[str, Any], path: str) -> None:
    op = doc["paths"][path]["post"]
    responses = op["responses"]
    assert set(responses) == {"200", "202"} | {str(s) for s in ERROR_STATUSES}
    for status, response in responses.items():
        expected = "PushAnswer" if status in ("200", "202") else "ErrorBody"
        assert response["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{expected}"}
    assert "Retry-After" in responses["503"]["headers"] and "Retry-After" in responses["429"]["headers"]
    assert "WWW-Authenticate" in responses["401"]["headers"]
    assert {p["name"] for p in op["parameters"]} == {"Idempotency-Key", "Content-Encoding"}
    assert "security" not in op  # the document's default: bearer


def test_bearer_is_required_except_on_the_public_endpoints(doc: dict[str, Any]) -> None:
    bearer = doc["components"]["securitySchemes"]["bearer"]
    assert (bearer["type"], bearer["scheme"]) == ("http", "bearer")
    assert "st_live_" in bearer["description"]  # tells a reader what a key looks like
    assert doc["security"] == [{"bearer": []}]
    for path in ("/healthz", "/readyz", "/openapi.json"):
        assert doc["paths"][path]["get"]["security"] == []


def test_every_route_of_the_app_is_described(client: TestClient, doc: dict[str, Any]) -> None:
    routes = {
        # `{push_id:text}`: an id may hold a '/' (sent as %2F); the document names the parameter alone.
        (re.sub(r"\{(\w+):text\}", r"{\1}", route.path), method.lower())
        for route in client.app.routes  # type: ignore[attr-defined]
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"
    }
    described = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert routes - described == set(), "describe() these routes (see api/openapi.py)"
    assert described - routes == set(), "these are described but not routed"


def test_describe_adds_an_endpoint_and_refuses_a_second_description(monkeypatch: pytest.MonkeyPatch) -> None:
    class Thing(msgspec.Struct):
        name: str

    monkeypatch.setattr(openapi, "_operations", dict(openapi._operations))
    try:
        openapi.describe(
            "/v2/things/{thing_id}",
            "get",
            summary="A thing",
            responses={200: Thing, **openapi.errors(401, 404)},
            params=(openapi.Param("thing_id", "path"), openapi.Param("limit", "query", int)),
        )
        doc = json.loads(openapi.document())
        op = doc["paths"]["/v2/things/{thing_id}"]["get"]
        assert op["responses"]["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Thing"}
        assert op["responses"]["404"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorBody"
        }
        assert op["parameters"] == [
            {"name": "thing_id", "in": "path", "required": True, "schema": {"type": "string"}},
            {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer"}},
        ]
        OpenAPIV31SpecValidator(doc).validate()
        with pytest.raises(ValueError, match="described twice"):
            openapi.describe("/v2/push", "POST", summary="again", responses={})
    finally:
        openapi.document.cache_clear()


# -- the record schemas judge records as msgspec does ------------------------------------------

CASES: list[tuple[str, dict[str, Any], bool]] = [
    *((name, make(1), True) for name, make in FACTORIES.items()),
    ("prompts", FACTORIES["prompts"](1, prompt_kind="shouting"), False),
    ("prompts", FACTORIES["prompts"](1, prompt_text=""), False),
    ("prompts", FACTORIES["prompts"](1, is_actionable=1), False),
    ("prompts", FACTORIES["prompts"](1, prompt_index=-1), False),
    ("prompts", FACTORIES["prompts"](1, parent_prompt_id=None, shiny_new_field={"x": 1}), True),
    ("sessions", {k: v for k, v in FACTORIES["sessions"](1).items() if k != "session_id"}, False),
    ("sessions", FACTORIES["sessions"](1, completion_status=None, raw_source_ref={"line": 2**63}), False),
    ("sessions", FACTORIES["sessions"](1, raw_source_ref={"line": 2**63 - 1, "metadata": {"a": [1]}}), True),
    ("skill_invocations", FACTORIES["skill_invocations"](1, confidence=1.5), False),
    ("skill_invocations", FACTORIES["skill_invocations"](1, confidence=1), True),
    ("execution_facts", FACTORIES["execution_facts"](1, tool_calls_json={"Read": "3"}), False),
    ("execution_facts", FACTORIES["execution_facts"](1, total_tool_calls=2.5), False),
    ("execution_facts", FACTORIES["execution_facts"](1, bash_commands_redacted=["ls", 3]), False),
    ("orchestrate_runs", FACTORIES["orchestrate_runs"](1, approval_mode="yolo"), False),
    (
        "orchestrate_runs",
        FACTORIES["orchestrate_runs"](1, skill_actions=[{"skill": "s", "action": "new", "reason": ""}]),
        True,
    ),
    ("orchestrate_runs", FACTORIES["orchestrate_runs"](1, skill_actions=[{"skill": "s", "action": "new"}]), False),
    ("evolution_evidence", FACTORIES["evolution_evidence"](1, details=[{"any": ["json", None]}]), True),
    ("grading_results", FACTORIES["grading_results"](1, pass_rate=None, expectations_json=[]), False),
    ("improvement_signals", FACTORIES["improvement_signals"](1, signal_type="brand_new_kind"), True),
    ("improvement_signals", FACTORIES["improvement_signals"](1, query=""), False),
    ("improvement_signals", [FACTORIES["improvement_signals"](1)], False),
]


@pytest.mark.parametrize(("record_type", "record", "valid"), CASES)
def test_record_schema_accepts_and_rejects_what_msgspec_does(
    doc: dict[str, Any], record_type: str, record: Any, valid: bool
) -> None:
    struct = RECORD_TYPES[record_type]
    try:
        RECORD_DECODERS[record_type].decode(msgspec.json.encode(record))
        msgspec_valid = True
    except msgspec.ValidationError:
        msgspec_valid = False
    schema_valid = validator(doc, struct.__name__).is_valid(record)
    assert (msgspec_valid, schema_valid) == (valid, valid)


def test_real_answers_match_their_documented_schemas(client: TestClient, doc: dict[str, Any]) -> None:
    records = {"prompts": [FACTORIES["prompts"](1), FACTORIES["prompts"](2, prompt_kind="shouting")]}
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    accepted = client.post("/v2/push", json={"push_id": "p1", "data": records}, headers=headers)
    duplicate = client.post("/v2/push", json={"push_id": "p1", "data": records}, headers=headers)
    refused = client.post("/v2/push", json={"data": {}})
    malformed = client.post("/v2/push", json={"data": []}, headers=headers)
    assert [r.status_code for r in (accepted, duplicate, refused, malformed)] == [202, 200, 401, 422]
    validator(doc, "PushAnswer").validate(accepted.json())
    validator(doc, "PushAnswer").validate(duplicate.json())
    validator(doc, "ErrorBody").validate(refused.json())
    validator(doc, "ErrorBody").validate(malformed.json())
    validator(doc, "Health").validate(client.get("/healthz").json())
    validator(doc, "Health").validate(client.get("/readyz").json())
    assert not validator(doc, "ErrorBody").is_valid(accepted.json())
