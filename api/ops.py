"""The operator page: GET /ops (HTML that refreshes itself) and GET /ops/state.json (the figures it shows).

Off unless OPS_TOKEN is set (404). The token is taken as `Authorization: Bearer
<token>`, or once as `?token=<token>`, which sets an HttpOnly cookie (an HMAC of
the token, never the token itself) and redirects to the same page without it,
so a browser can open the page and the token leaves the address bar. Tokens are
compared in constant time.

The figures are the ones `selftune-ingest status` prints (queueing/queue_state.py),
with the spool of this api's host, the last pushes from Postgres and the last
hour's samples (api/ops_history.py). The page is one HTML document with its
script inline: no build step, nothing fetched from elsewhere.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from api import openapi
from api.auth import DATABASE_ERRORS
from api.errors import NOT_FOUND, UNAUTHORIZED
from api.ops_history import Sample, read_history
from api.ops_page import PAGE
from runtime.version import VERSION

COOKIE = "selftune_ops"
COOKIE_MAX_AGE_S = 12 * 3600
RECENT_PUSHES = 20
REFRESH_S = 5

_RECENT_PUSHES_SQL = """
SELECT p.push_id, p.workspace_id, w.name, p.status, p.received_at, p.accepted, p.rejected, p.attempts,
       p.write_ms, p.error
FROM pushes p LEFT JOIN workspaces w USING (workspace_id)
ORDER BY p.received_at DESC
LIMIT %s
"""
_QUARANTINED_SQL = "SELECT count(*) FROM quarantine WHERE replayed_at IS NULL"


# -- the wire types (also described in /openapi.json) -------------------------------------------


class OpsSpool(msgspec.Struct):
    batches: int
    bytes: int
    oldest_seconds: float


class OpsPush(msgspec.Struct):
    push_id: str
    workspace_id: str
    workspace: str | None
    status: str
    received_at: str
    written: int  # records written, all types
    rejected: int  # records quarantined
    attempts: int
    write_ms: float | None
    error: str | None


class OpsState(msgspec.Struct):
    """What the ops page shows; `queue` is null while Redis is unreachable, `quarantined` and `pushes` while Postgres is."""

    generated_at: str
    version: str
    refresh_s: int
    queue: dict[str, Any] | None
    quarantined: int | None
    spool: OpsSpool | None
    pushes: list[OpsPush] | None
    history: list[Sample]
    problems: list[str]


# -- authentication ------------------------------------------------------------------------------


def _same(given: str, expected: str) -> bool:
    """Constant-time equality, whatever the lengths (digests of both are compared)."""
    return hmac.compare_digest(hashlib.sha256(given.encode()).digest(), hashlib.sha256(expected.encode()).digest())


def _cookie_value(token: str) -> str:
    return hmac.new(token.encode(), b"selftune ops cookie", hashlib.sha256).hexdigest()


def _token(request: Request) -> str:
    token: str = request.app.state.settings.ops_token
    if not token:
        raise NOT_FOUND("no such endpoint")
    return token


def _check(request: Request, token: str) -> None:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and _same(given.strip(), token):
        return
    if _same(request.cookies.get(COOKIE, ""), _cookie_value(token)):
        return
    raise UNAUTHORIZED(
        "the ops page needs the operator token (OPS_TOKEN): send 'Authorization: Bearer <token>',"
        " or open /ops?token=<token> once in a browser"
    )


def _login(request: Request, token: str) -> Response | None:
    """A `?token=` request: the redirect that sets the cookie (or a 401 for a wrong token)."""
    given = request.query_params.get("token")
    if given is None:
        return None
    if not _same(given, token):
        raise UNAUTHORIZED("wrong operator token in ?token= (OPS_TOKEN)")
    response = RedirectResponse(request.url.path, status_code=303, headers={"Referrer-Policy": "no-referrer"})
    response.set_cookie(
        COOKIE,
        _cookie_value(token),
        max_age=COOKIE_MAX_AGE_S,
        path="/ops",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


# -- the figures ----------------------------------------------------------------------------------


def _iso(at: datetime | None) -> str:
    return at.astimezone(UTC).isoformat(timespec="seconds") if at else ""


async def _from_postgres(pool: Any, problems: list[str]) -> tuple[int | None, list[OpsPush] | None]:
    if pool is None:
        problems.append("postgres: not configured")
        return None, None
    try:
        async with pool.connection(timeout=2) as conn:
            cur = await conn.execute(_QUARANTINED_SQL)
            row = await cur.fetchone()
            cur = await conn.execute(_RECENT_PUSHES_SQL, (RECENT_PUSHES,))
            rows = await cur.fetchall()
    except DATABASE_ERRORS as exc:
        problems.append(f"postgres: {type(exc).__name__}: {exc}")
        return None, None
    pushes = [
        OpsPush(
            push_id=push_id,
            workspace_id=workspace_id,
            workspace=name,
            status=status,
            received_at=_iso(received_at),
            written=sum(int(n) for n in (accepted or {}).values()),
            rejected=sum(int(n) for n in (rejected or {}).values()),
            attempts=attempts,
            write_ms=round(write_ms, 1) if write_ms is not None else None,
            error=(error or "").splitlines()[0] if error else None,
        )
        for push_id, workspace_id, name, status, received_at, accepted, rejected, attempts, write_ms, error in rows
    ]
    return (int(row[0]) if row else 0), pushes


async def gather(state: Any) -> OpsState:
    """Every figure of the page, read now; what could not be read is null and named in `problems`."""
    problems: list[str] = []
    queue: dict[str, Any] | None = None
    history: list[Sample] = []
    try:
        queue = (await state.queue_watch.refresh()).as_dict()
        history = await read_history(state.redis)
    except (RedisError, OSError) as exc:
        problems.append(f"redis: {type(exc).__name__}: {exc}")
    spool = None
    if state.spool is not None:
        s = await state.spool.stats()
        spool = OpsSpool(s.batches, s.bytes, round(s.oldest_age_s(), 1))
    quarantined, pushes = await _from_postgres(state.pool, problems)
    return OpsState(
        generated_at=datetime.fromtimestamp(time.time(), UTC).isoformat(timespec="seconds"),
        version=VERSION,
        refresh_s=REFRESH_S,
        queue=queue,
        quarantined=quarantined,
        spool=spool,
        pushes=pushes,
        history=history,
        problems=problems,
    )


# -- the endpoints --------------------------------------------------------------------------------

_NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def _refusal(request: Request) -> Response | None:
    """The login redirect for a `?token=` visit, or None once the operator token checks out (else a 401)."""
    token = _token(request)
    login = _login(request, token)
    if login is None:
        _check(request, token)
    return login


async def ops_state(request: Request) -> Response:
    """The page's figures as JSON (same token)."""
    login = _refusal(request)
    if login is not None:
        return login
    body = msgspec.json.encode(await gather(request.app.state))
    return Response(body, media_type="application/json", headers=_NO_STORE)


async def ops_page(request: Request) -> Response:
    """The page: the figures of the moment in the document, refreshed from /ops/state.json every REFRESH_S."""
    login = _refusal(request)
    if login is not None:
        return login
    initial = msgspec.json.encode(await gather(request.app.state)).decode().replace("</", "<\\/")
    nonce = secrets.token_urlsafe(16)
    html = PAGE.replace("{{nonce}}", nonce).replace("{{version}}", VERSION).replace("{{initial}}", initial)
    policy = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self';"
        " img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    headers = {**_NO_STORE, "Content-Security-Policy": policy, "X-Frame-Options": "DENY"}
    return Response(html, media_type="text/html; charset=utf-8", headers=headers)


routes = [
    Route("/ops", ops_page, methods=["GET"]),
    Route("/ops/state.json", ops_state, methods=["GET"]),
]

_OPS_PARAMS = (
    openapi.Param(
        "token", "query", description="The operator token (OPS_TOKEN), once: sets an HttpOnly cookie and redirects."
    ),
)
openapi.describe(
    "/ops",
    "get",
    summary="The operator page (HTML, refreshes itself): queue, workers, failures, spool, recent pushes, last hour."
    " Needs OPS_TOKEN (Bearer, cookie or ?token=); 404 while it is unset",
    responses={200: openapi.Text("text/html"), 303: openapi.Text("text/plain"), **openapi.errors(401, 404)},
    params=_OPS_PARAMS,
)
openapi.describe(
    "/ops/state.json",
    "get",
    summary="The operator page's figures as JSON (same token as /ops)",
    responses={200: OpsState, 303: openapi.Text("text/plain"), **openapi.errors(401, 404)},
    params=_OPS_PARAMS,
)
