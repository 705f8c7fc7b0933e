"""GET /openapi.json: an OpenAPI 3.1 document generated from the msgspec Structs.

Endpoints are described where they are known, by calling `describe(...)` at
import time; the document is built from those descriptions on its first
request and kept. No schema is written by hand: msgspec generates every one
from the Structs, and the push body composes the record Structs of
`schema/records.py` into the two envelopes of SPEC 2.1.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from api import errors as client_errors
from api.push import PushAnswer
from schema.envelope import MAX_PUSH_ID_LENGTH, PushEnvelope, RecordArrays, TypedRecordArrays

OPENAPI_VERSION = "3.1.0"
API_VERSION = "2.0"  # the push contract's version (/v2), not the package's
REF_TEMPLATE = "#/components/schemas/{name}"

# -- bodies that exist only on the wire -----------------------------------------------

_False = Annotated[bool, Meta(extra_json_schema={"const": False})]


class ErrorDetail(msgspec.Struct):
    code: str  # stable, for programs: "unauthorized", "invalid_envelope", ...
    message: str  # for people: names what was wrong and where


class ErrorBody(msgspec.Struct):
    """Every error answer (SPEC 2.3); `errors` repeats the message because the CLI reads it there."""

    ok: _False
    success: _False
    errors: list[str]
    error: ErrorDetail


class Health(msgspec.Struct, omit_defaults=True):
    """/healthz, /readyz and /readyz/database: `errors` names each dependency that is not ready.

    Not ready (503), the body is also an error body (SPEC 2.3): `success` false and
    `error` {code "not_ready" or "database_not_ready", message}. Ready, /readyz says
    where pushes go now (`pushes_go_to`: "redis", or "spool" while Redis cannot take
    them), what is `degraded`, and the `database`'s state ("ok" or its problems):
    pushes never need Postgres, so a load balancer probing /readyz keeps an api in
    rotation while Postgres is down.
    """

    ok: bool
    errors: list[str] = []
    success: bool | None = None
    error: ErrorDetail | None = None
    pushes_go_to: Literal["redis", "spool"] | None = None
    degraded: list[str] | None = None
    database: str | list[str] | None = None


_HEADER_SCHEMAS: dict[str, dict[str, Any]] = {
    "WWW-Authenticate": {"description": "Always `Bearer`.", "schema": {"type": "string"}},
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer", "minimum": 0}},
}

# -- the push body: the record Structs composed into both envelopes -----------------------


def _typed_envelope(name: str, field_names: tuple[str, ...], doc: str, arrays: type) -> Any:
    """A Struct with these fields of PushEnvelope, its RecordArrays replaced by `arrays`."""
    fields = {f.name: f.type for f in msgspec.structs.fields(PushEnvelope)}
    return msgspec.defstruct(
        name,
        [(n, arrays | None if fields[n] == RecordArrays | None else fields[n], None) for n in field_names],
        namespace={"__doc__": doc},
    )


DOCUMENTED_FIELDS = ("workspace_id", "cli_version", "pushed_at", "push_id", "data")
CLI_FIELDS = ("schema_version", "client_version", "push_id", "normalizer_version", "canonical")
DocumentedEnvelope = _typed_envelope(
    "PushEnvelope",
    DOCUMENTED_FIELDS,
    "The documented envelope: records under `data`. Unknown keys are ignored.",
    TypedRecordArrays,
)
CliEnvelope = _typed_envelope(
    "PushPayloadV2",
    CLI_FIELDS,
    "The envelope the selftune CLI sends: records under `canonical`. Unknown keys (`content_hashes`) are ignored.",
    TypedRecordArrays,
)

# -- the registry -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """A path, query or header parameter; its schema comes from `type`."""

    name: str
    where: Literal["path", "query", "header"]
    type: Any = str
    required: bool = False
    description: str = ""


@dataclass(frozen=True)
class Text:
    """A response body that is not JSON (e.g. Prometheus text), as a plain string."""

    media_type: str = "text/plain"


@dataclass(frozen=True)
class Operation:
    path: str
    method: str
    summary: str
    request: Any  # a type, or a tuple of types the body may be any of, or None
    responses: dict[int, Any]  # status -> the type of its JSON body, or Text
    params: tuple[Param, ...]
    auth: bool


_operations: dict[tuple[str, str], Operation] = {}


def describe(
    path: str,
    method: str,
    *,
    summary: str,
    responses: dict[int, Any],
    request: Any = None,
    params: tuple[Param, ...] = (),
    auth: bool = True,
) -> None:
    """Add an endpoint to the document; call it at import time, beside the route.

    `request` and the values of `responses` are types msgspec can describe
    (Structs, usually); `request` may be a tuple of types the body may be any of,
    and a response may be `Text(media_type)` when its body is not JSON. Error
    statuses take `ErrorBody`: see `errors(...)`.
    """
    key = (path, method.lower())
    if key in _operations:
        raise ValueError(f"{method.upper()} {path} is described twice")
    _operations[key] = Operation(path, method.lower(), summary, request, responses, params, auth)
    document.cache_clear()


def errors(*statuses: int) -> dict[int, Any]:
    """Error responses for `describe`: each status answered with the error body."""
    return dict.fromkeys(statuses, ErrorBody)


# -- the generator -------------------------------------------------------------------------------


def _request_types(op: Operation) -> tuple[Any, ...]:
    if op.request is None:
        return ()
    return op.request if isinstance(op.request, tuple) else (op.request,)


def _json_types(op: Operation) -> list[Any]:
    """The types of an operation that msgspec describes, in the order the generator reads them back."""
    responses = [t for t in op.responses.values() if not isinstance(t, Text)]
    return [*_request_types(op), *responses, *(p.type for p in op.params)]


def _response(status: int, body_type: Any, schemas: Iterator[dict[str, Any]]) -> dict[str, Any]:
    phrase = HTTPStatus(status).phrase
    meaning = client_errors.meanings(status) if body_type is ErrorBody else None
    if isinstance(body_type, Text):
        content = {body_type.media_type: {"schema": {"type": "string"}}}
    else:
        content = {"application/json": {"schema": next(schemas)}}
    out: dict[str, Any] = {"description": f"{phrase}. {meaning}" if meaning else phrase, "content": content}
    headers = client_errors.headers_of(status) if body_type is ErrorBody else ()
    if headers:
        out["headers"] = {name: {**_HEADER_SCHEMAS[name], "required": True} for name in headers}
    return out


def build() -> dict[str, Any]:
    """The OpenAPI document, from every described endpoint."""
    ops = sorted(_operations.values(), key=lambda op: (op.path, op.method))
    # Every type of every operation, in one list, so msgspec shares components among them.
    types = [t for op in ops for t in _json_types(op)]
    schemas, components = msgspec.json.schema_components(types, ref_template=REF_TEMPLATE)
    next_schema = iter(schemas)  # read back in the same order: request, responses, parameters

    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        operation: dict[str, Any] = {
            "operationId": re.sub(r"[^A-Za-z0-9]+", "_", f"{op.method}{op.path}").strip("_"),
            "summary": op.summary,
        }
        request_schemas = [next(next_schema) for _ in _request_types(op)]
        if request_schemas:
            schema = request_schemas[0] if len(request_schemas) == 1 else {"anyOf": request_schemas}
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
        operation["responses"] = {
            str(status): _response(status, body_type, next_schema) for status, body_type in op.responses.items()
        }
        parameters = [
            {
                "name": p.name,
                "in": p.where,
                "required": p.required or p.where == "path",
                **({"description": p.description} if p.description else {}),
                "schema": next(next_schema),
            }
            for p in op.params
        ]
        if parameters:
            operation["parameters"] = parameters
        if not op.auth:
            operation["security"] = []
        paths.setdefault(op.path, {})[op.method] = operation

    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "selftune ingest",
            "version": API_VERSION,
            "description": "Receives the selftune CLI's telemetry pushes and queues them for storage.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key: `st_live_` or `st_test_` followed by 32+ URL-safe characters.",
                }
            },
        },
        "security": [{"bearer": []}],
    }


@functools.cache
def document() -> bytes:
    """The document as JSON, built once (and again only if an endpoint is described later)."""
    return msgspec.json.encode(build())


async def openapi_json(_request: Request) -> Response:
    return Response(document(), media_type="application/json")


routes: list[BaseRoute] = [Route("/openapi.json", openapi_json, methods=["GET"])]

# -- the endpoints of api/push.py and api/app.py ---------------------------------------------

PUSH_PARAMS = (
    Param(
        "Idempotency-Key",
        "header",
        Annotated[str, Meta(min_length=1, max_length=MAX_PUSH_ID_LENGTH)],
        description="The push id when the body has none.",
    ),
    Param("Content-Encoding", "header", Literal["gzip", "identity"], description="gzip is inflated within the limits."),
)
PUSH_RESPONSES = {
    202: PushAnswer,
    200: PushAnswer,
    **errors(400, 401, 403, 408, 413, 415, 422, 429, 503),
}
for _path in ("/v2/push", "/api/v1/push"):
    describe(
        _path,
        "post",
        summary="Push a batch of records: 202 once it is queued, 200 (duplicate) if its push id was accepted before",
        request=(DocumentedEnvelope, CliEnvelope),
        responses=PUSH_RESPONSES,
        params=PUSH_PARAMS,
    )
describe("/healthz", "get", summary="The process is up", responses={200: Health}, auth=False)
describe(
    "/readyz",
    "get",
    summary="Pushes can be made durable (Redis, or else the api's spool); Postgres is reported, not required",
    responses={200: Health, 503: Health},
    auth=False,
)
describe(
    "/readyz/database",
    "get",
    summary="Postgres is reachable and migrated (read endpoints, enrollment)",
    responses={200: Health, 503: Health},
    auth=False,
)
describe("/metrics", "get", summary="Prometheus metrics (SPEC 6)", responses={200: Text("text/plain")}, auth=False)
describe("/openapi.json", "get", summary="This document", responses={200: dict[str, Any]}, auth=False)
