"""The real CLI's account endpoints, under /api/v1 and /v2: link check and device-code enrollment.

`selftune status` calls `GET .../alpha/verify` with its key. `selftune init --alpha`
enrolls with the device authorization grant (RFC 8628), in the shape the CLI speaks:

1. `POST .../device-code` `{client_id, scope}` answers `{device_code, user_code,
   verification_url, expires_in, interval}`.
2. The person reads the user code (XXXX-XXXX) to an operator, who runs
   `selftune-ingest device approve XXXX-XXXX --workspace W` (or `device deny`).
3. The CLI polls `POST .../device-code/poll` `{device_code}` every `interval` seconds:
   `pending`, `slow_down` (polled too soon: the interval grows by 5 s), `denied`,
   `expired`, or, once approved, `approved` with `api_key`. The key is created at that
   poll, for the approved workspace, and handed out exactly once; a later poll with
   the same device code answers `expired`.

Poll answers are 200 whatever the status: the status is the answer (the CLI reads
`status` from the body, and treats a non-2xx without one as a failure).
The device code is the secret that fetches the key: only its SHA-256 is stored.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
import psycopg
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from api.auth import authenticate, mirror_issued_key
from api.body import read_json
from api.db import db_connection, json_response, utc
from api.errors import TOO_MANY_DEVICE_CODES, UNAUTHORIZED, UNAVAILABLE
from api.openapi import Text, describe, errors
from store.keys import INSERT_KEY, issue_key

DEVICE_CODE_TTL_S = 900  # RFC 8628's expires_in
POLL_INTERVAL_S = 5  # RFC 8628's interval, and its default
SLOW_DOWN_STEP_S = 5  # added to the interval at each slow_down (RFC 8628 3.5)
# A client that ignores slow_down is still answered once per this many seconds.
MAX_POLL_INTERVAL_S = 60
MAX_LIVE_CODES = 10_000  # the endpoint takes no key: bound what strangers can make us store
EXPIRED_RETENTION_S = 24 * 3600  # expired codes are deleted after this
# RFC 8628 6.1: consonants only (no vowels, so no words; no 0/O, 1/I/L-like digit confusions).
USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
USER_CODE_LENGTH = 8
USER_CODE_DRAWS = 10

ShortStr = Annotated[str, Meta(max_length=200)]
ClientId = Annotated[str, Meta(min_length=1, max_length=200)]

# -- wire types --------------------------------------------------------------------------------------------


class DeviceCodeRequest(msgspec.Struct):
    """POST .../device-code body (the CLI sends client_id "selftune-cli", scope "push read")."""

    client_id: ClientId
    scope: ShortStr = ""


class DeviceCodeGrant(msgspec.Struct):
    """POST .../device-code answer: show `user_code` and `verification_url`, poll every `interval` s."""

    device_code: str
    user_code: str
    verification_url: str
    expires_in: int
    interval: int


class PollRequest(msgspec.Struct):
    """POST .../device-code/poll body; the CLI also sends its client_id, which is not needed."""

    device_code: Annotated[str, Meta(min_length=1, max_length=200)]


class PollAnswer(msgspec.Struct, omit_defaults=True):
    """POST .../device-code/poll answer.

    `interval` comes with pending and slow_down (the interval to keep from now on).
    `api_key`, `cloud_user_id` (the new key's id) and `org_id` (its workspace) come
    with approved, once. `message` says why a code is expired or denied.
    """

    status: Literal["pending", "slow_down", "approved", "denied", "expired"]
    interval: int | None = None
    api_key: str | None = None
    cloud_user_id: str | None = None
    org_id: str | None = None
    message: str | None = None


class VerifyAnswer(msgspec.Struct):
    """GET .../alpha/verify: the calling key, and the pushes of that key the workers have handled."""

    enrolled: bool
    workspace_id: str
    key_prefix: str
    key_created_at: datetime
    total_pushes: int
    last_push_at: datetime | None  # when the api received the latest push
    last_push_status: Literal["processed", "failed"] | None


DEVICE_CODE_REQUEST_DECODER = msgspec.json.Decoder(DeviceCodeRequest)
POLL_REQUEST_DECODER = msgspec.json.Decoder(PollRequest)


def hash_device_code(device_code: str) -> str:
    return hashlib.sha256(device_code.encode()).hexdigest()


def new_user_code() -> str:
    chars = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(USER_CODE_LENGTH))
    return f"{chars[:4]}-{chars[4:]}"


# -- POST .../device-code ------------------------------------------------------------------------------------

_INSERT_CODE = (
    "INSERT INTO device_codes (device_code_hash, user_code, client_id, scope, interval_s, expires_at)"
    " VALUES (%s, %s, %s, %s, %s, now() + make_interval(secs => %s))"
    " ON CONFLICT (user_code) DO NOTHING RETURNING user_code"
)


async def request_device_code(request: Request) -> Response:
    """Start an enrollment: a device code for the CLI, a user code for a person to read out."""
    wanted: DeviceCodeRequest = await read_json(request, DEVICE_CODE_REQUEST_DECODER)
    device_code = secrets.token_urlsafe(32)
    async with db_connection(request) as conn, conn.transaction():
        await conn.execute(
            "DELETE FROM device_codes WHERE expires_at < now() - make_interval(secs => %s)", (EXPIRED_RETENTION_S,)
        )
        cur = await conn.execute("SELECT count(*) FROM device_codes WHERE status = 'pending' AND expires_at > now()")
        live = await cur.fetchone()
        if live is not None and live[0] >= MAX_LIVE_CODES:
            raise TOO_MANY_DEVICE_CODES("too many enrollments are waiting for approval; retry later")
        user_code = None
        for _ in range(USER_CODE_DRAWS):  # a clash with a stored user code is rare (20^8 codes): draw again
            cur = await conn.execute(
                _INSERT_CODE,
                (
                    hash_device_code(device_code),
                    new_user_code(),
                    wanted.client_id,
                    wanted.scope,
                    POLL_INTERVAL_S,
                    DEVICE_CODE_TTL_S,
                ),
            )
            row = await cur.fetchone()
            if row is not None:
                user_code = row[0]
                break
    if user_code is None:
        raise UNAVAILABLE("could not draw a free user code; retry")
    grant = DeviceCodeGrant(
        device_code=device_code,
        user_code=user_code,
        verification_url=_verification_url(request),
        expires_in=DEVICE_CODE_TTL_S,
        interval=POLL_INTERVAL_S,
    )
    return json_response(grant)


# -- POST .../device-code/poll -------------------------------------------------------------------------------

_LOCK_CODE = (
    "SELECT status, workspace_id, interval_s, expires_at <= now(),"
    " last_polled_at IS NOT NULL AND now() < last_polled_at + make_interval(secs => interval_s)"
    " FROM device_codes WHERE device_code_hash = %s FOR UPDATE"
)


async def _issue_key(conn: psycopg.AsyncConnection[Any], code_hash: str, workspace_id: str) -> PollAnswer:
    """Create the key of an approved code and mark the code spent, in the poll's transaction."""
    issued = issue_key(workspace_id, live=True)
    await conn.execute(INSERT_KEY, issued.params)
    await conn.execute(
        "UPDATE device_codes SET status = 'issued', issued_at = now(), last_polled_at = now(), key_id = %s"
        " WHERE device_code_hash = %s",
        (issued.key_id, code_hash),
    )
    return PollAnswer("approved", api_key=issued.key, cloud_user_id=issued.key_id, org_id=workspace_id)


async def poll_device_code(request: Request) -> Response:
    """Where an enrollment stands; the first poll after approval receives the key."""
    wanted: PollRequest = await read_json(request, POLL_REQUEST_DECODER)
    code_hash = hash_device_code(wanted.device_code)
    async with db_connection(request) as conn, conn.transaction():
        row = await (await conn.execute(_LOCK_CODE, (code_hash,))).fetchone()
        if row is None:
            answer = PollAnswer("expired", message="unknown or expired device code: request a new one")
            return json_response(answer)
        status, workspace_id, interval_s, expired, too_fast = row
        if status == "issued":
            answer = PollAnswer("expired", message="this device code was already exchanged for a key")
        elif expired:
            answer = PollAnswer("expired", message="the device code expired before it was approved: request a new one")
        elif status == "denied":
            answer = PollAnswer("denied", message="an operator denied this enrollment")
        elif too_fast:
            cur = await conn.execute(
                "UPDATE device_codes SET interval_s = least(interval_s + %s, %s) WHERE device_code_hash = %s"
                " RETURNING interval_s",
                (SLOW_DOWN_STEP_S, MAX_POLL_INTERVAL_S, code_hash),
            )
            grown = await cur.fetchone()
            answer = PollAnswer("slow_down", interval=grown[0] if grown else interval_s)
        elif status == "approved":
            answer = await _issue_key(conn, code_hash, workspace_id)
        else:
            await conn.execute(
                "UPDATE device_codes SET last_polled_at = now() WHERE device_code_hash = %s", (code_hash,)
            )
            answer = PollAnswer("pending", interval=interval_s)
    if answer.api_key:  # committed: let the key work while Postgres is down too
        await mirror_issued_key(request.app.state.redis, answer.api_key, answer.cloud_user_id, answer.org_id)
    return json_response(answer)


def _verification_url(request: Request) -> str:
    """PUBLIC_BASE_URL + /device when set (behind a TLS proxy the request's own URL is wrong)."""
    base = request.app.state.settings.public_base_url
    if base:
        return str(base).rstrip("/") + str(request.app.url_path_for("device_page"))
    return str(request.url_for("device_page"))


# -- GET /device: where verification_url leads -------------------------------------------------------------


async def device_page(request: Request) -> Response:
    """What a person sees at verification_url: there is no web sign-in; an operator approves."""
    return PlainTextResponse(
        "To link the selftune CLI to this server, give the code it shows you (XXXX-XXXX)\n"
        "to the person who runs the server. They approve it with:\n\n"
        "    selftune-ingest device approve XXXX-XXXX --workspace <workspace>\n\n"
        "The CLI then receives its API key by itself.\n"
    )


# -- GET .../alpha/verify -------------------------------------------------------------------------------------

# Per key, not per workspace: `selftune status` shows this machine's link. Both subqueries read
# the index pushes_key_received; pushes from before migration 0004 carry no key. The workspace
# filter keeps the query on one shard when pushes are distributed by workspace (README, Citus).
_VERIFY = (
    "SELECT k.key_prefix, k.created_at,"
    " (SELECT count(*) FROM pushes p WHERE p.workspace_id = k.workspace_id AND p.key_id = k.key_id),"
    " last.received_at, last.status FROM api_keys k LEFT JOIN LATERAL ("
    "   SELECT received_at, status FROM pushes p WHERE p.workspace_id = k.workspace_id AND p.key_id = k.key_id"
    "   ORDER BY received_at DESC LIMIT 1) last ON true"
    " WHERE k.key_id = %s AND k.revoked_at IS NULL"
)


async def verify(request: Request) -> Response:
    """The calling key's link: its prefix and age, and the pushes it sent."""
    key = await authenticate(request, request.app.state.keys)
    async with db_connection(request) as conn:
        row = await (await conn.execute(_VERIFY, (key.key_id,))).fetchone()
    if row is None:  # revoked since the key cache last looked
        raise UNAUTHORIZED("API key is unknown or revoked")
    prefix, created_at, total, last_at, last_status = utc(row)
    return json_response(VerifyAnswer(True, key.workspace_id, prefix, created_at, total, last_at, last_status))


routes: list[BaseRoute] = [Route("/device", device_page, methods=["GET"], name="device_page")]
describe(
    "/device",
    "get",
    summary="Where verification_url leads: how to get a code approved",
    responses={200: Text()},
    auth=False,
)
for _prefix in ("/api/v1", "/v2"):
    routes += [
        Route(f"{_prefix}/device-code", request_device_code, methods=["POST"]),
        Route(f"{_prefix}/device-code/poll", poll_device_code, methods=["POST"]),
        Route(f"{_prefix}/alpha/verify", verify, methods=["GET"]),
    ]
    describe(
        f"{_prefix}/device-code",
        "post",
        summary="Start a device-code enrollment (RFC 8628)",
        request=DeviceCodeRequest,
        responses={200: DeviceCodeGrant, **errors(400, 413, 415, 422, 429, 503)},
        auth=False,
    )
    describe(
        f"{_prefix}/device-code/poll",
        "post",
        summary="Poll an enrollment: pending, slow_down, denied, expired, or approved with the key (once)",
        request=PollRequest,
        responses={200: PollAnswer, **errors(400, 413, 415, 422, 503)},
        auth=False,
    )
    describe(
        f"{_prefix}/alpha/verify",
        "get",
        summary="The calling key's link: prefix, age, and the pushes it sent",
        responses={200: VerifyAnswer, **errors(401, 503)},
    )
