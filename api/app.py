"""The Starlette application: routes, exception handlers, lifespan, app."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from psycopg_pool import AsyncConnectionPool
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api import device, openapi, ops
from api.auth import DATABASE_ERRORS, KeyMirror, KeyStore
from api.backpressure import QueueWatch
from api.enqueue import Enqueuer
from api.errors import DATABASE_NOT_READY, EXCEPTION_HANDLERS, NOT_READY, respond
from api.inflight import InflightLimit
from api.intake import Intake, SpoolDrainer
from api.metrics import metrics
from api.ops_history import OpsHistory
from api.push import push
from api.reads import pushes, signals, skills
from api.unhandled import UnhandledErrors
from queueing import redis_check
from runtime import logs
from runtime.heap import freeze_startup_heap
from runtime.redis_client import async_redis_client
from runtime.settings import Settings
from runtime.version import VERSION
from spool.store import AsyncSpool, Spool
from store.migrate import current_version_async, latest_version
from store.session import set_up_session_async

log = logging.getLogger(__name__)

RECONNECT_TIMEOUT_S = 2.0


async def healthz(_request: Request) -> Response:
    """The process is up (no I/O)."""
    return JSONResponse({"ok": True})


async def _postgres_problems(pool: AsyncConnectionPool | None) -> list[str]:
    if pool is None:
        return ["postgres: not configured (test app without a pool)"]
    try:
        async with pool.connection(timeout=2) as conn:
            version = await current_version_async(conn)
    except DATABASE_ERRORS as exc:
        return [f"postgres: {type(exc).__name__}: {exc}"]
    if version is None:
        return ["postgres: not migrated: run 'selftune-ingest migrate'"]
    if version != latest_version():
        return [f"postgres: schema at {version}, expected {latest_version()}: run 'selftune-ingest migrate'"]
    return []


async def _push_problems(state: Any) -> tuple[str | None, list[str]]:
    """Where a push would be made durable now ("redis" or "spool"), and what is wrong with the rest."""
    problems: list[str] = []
    try:
        await state.redis.ping()
    except (RedisError, OSError) as exc:
        problems.append(f"redis: {type(exc).__name__}: {exc}")
    else:
        headroom = state.queue_watch.over_headroom()
        if headroom is None:
            return "redis", problems
        problems.append(f"redis: {headroom}")
    if state.spool is None:
        problems.append("spool: none (SPOOL_MAX_BYTES=0)")
        return None, problems
    spool_problem = await state.spool.writable()
    if spool_problem is None:
        return "spool", problems
    problems.append(spool_problem)
    return None, problems


async def readyz(request: Request) -> Response:
    """Pushes can be made durable (Redis, or else the spool): 200, else 503 with the reasons.

    This is what a load balancer should probe: pushes need Redis or the spool, never
    Postgres. The database's readiness is in the body and on /readyz/database.
    """
    state = request.app.state
    where, problems = await _push_problems(state)
    database = await _postgres_problems(state.pool)
    if where is None:
        return respond(NOT_READY("; ".join(problems)), errors=problems)
    return JSONResponse({"ok": True, "pushes_go_to": where, "degraded": problems, "database": database or "ok"})


async def readyz_database(request: Request) -> Response:
    """Postgres reachable and migrated (read endpoints, enrollment, key changes); 503 with the reason otherwise."""
    problems = await _postgres_problems(request.app.state.pool)
    if problems:
        return respond(DATABASE_NOT_READY("; ".join(problems)), errors=problems)
    return JSONResponse({"ok": True})


routes = [
    Route("/v2/push", push, methods=["POST"]),
    Route("/api/v1/push", push, methods=["POST"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/readyz/database", readyz_database, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    *pushes.routes,
    *signals.routes,
    *skills.routes,
    *device.routes,
    *openapi.routes,
    *ops.routes,
]


async def _open_pool(url: str) -> AsyncConnectionPool:
    """A pool of autocommit, UTC connections, opened without waiting for Postgres."""
    pool = AsyncConnectionPool(
        url,
        min_size=1,
        max_size=4,
        open=False,
        # connect_timeout: a Postgres host that does not answer at all fails fast.
        kwargs={"autocommit": True, "connect_timeout": 3},
        configure=set_up_session_async,
        # psycopg_pool retries a lost connection with exponential backoff (1, 2, 4 ... s) until
        # reconnect_timeout; after a 70 s outage the next try could be 40 s away. Giving up
        # quickly lets the next request that needs a connection try at once instead.
        reconnect_timeout=RECONNECT_TIMEOUT_S,
    )
    await pool.open(wait=False)
    return pool


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Open Redis, Postgres and the spool (never at import), start the background tasks, close all on shutdown."""
    settings: Settings = app.state.settings
    injected = app.state.injected
    redis = injected.get("redis") or async_redis_client(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
    pool = read_pool = None
    mirror = None
    if "keys" in injected:
        keys = injected["keys"]
    else:
        pool = await _open_pool(settings.database_url)
        # Writes and key checks stay on the primary; the read endpoints use the replica if there is one.
        read_pool = await _open_pool(settings.database_read_url) if settings.database_read_url else None
        keys = KeyStore(pool, settings.key_cache_ttl_s, redis)
        mirror = KeyMirror(pool, redis, settings.key_mirror_refresh_s)
    spool = AsyncSpool(Spool(settings.spool_path, settings.spool_max_bytes)) if settings.spool_max_bytes else None
    app.state.redis = redis
    app.state.pool = pool
    app.state.read_pool = read_pool
    app.state.keys = keys
    app.state.spool = spool
    app.state.enqueuer = enqueuer = Enqueuer(settings, redis)
    app.state.queue_watch = watch = QueueWatch(settings, redis)
    app.state.intake = Intake(enqueuer, watch, spool)
    app.state.drainer = drainer = SpoolDrainer(spool, enqueuer, watch) if spool is not None else None
    history = OpsHistory(redis, watch) if settings.ops_token else None  # the ops page's plots
    log.info("api %s starting with %s", VERSION, settings.redacted(), extra={"version": VERSION})
    redis_check.check(await redis_check.read_config_async(redis), settings.redis_require_durable)
    tasks: list[Any] = [t for t in (watch, drainer, mirror, history) if t is not None]
    for task in tasks:
        task.start()
    if app.state.freeze_heap:
        freeze_startup_heap()
    try:
        yield
    finally:
        for task in reversed(tasks):
            await task.stop()
        if spool is not None:
            await spool.close()
        for opened in (read_pool, pool):
            if opened is not None:
                await opened.close()
        if "redis" not in injected:
            await redis.aclose()


def create_app(settings: Settings | None = None, **injected: Any) -> Starlette:
    """The app, configured from the environment unless settings are given.

    Tests may inject `redis` (an async client, e.g. fakeredis) and `keys` (an
    object with `async lookup(key) -> ApiKey | None`) to run without servers.
    """
    real_process = settings is None
    settings = settings or Settings.from_env()  # first: a bad LOG_FORMAT is a SettingsError, not text logs
    if real_process:  # not a test: JSON logs, uvicorn's own included
        logs.configure(settings.log_level)
    app = Starlette(
        routes=routes,
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
        # UnhandledErrors first (outermost): a bug anywhere inside is one counted, logged 500.
        middleware=[Middleware(UnhandledErrors), Middleware(InflightLimit, limit=settings.max_inflight_requests)],
    )
    # A real process freezes its startup heap (runtime.heap); a test process, which makes many
    # apps, would only keep their garbage forever.
    app.state.freeze_heap = real_process
    app.state.settings = settings
    app.state.injected = injected
    return app
