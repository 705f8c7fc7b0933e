"""A bug in a handler: the client gets the usual error body with 500, the error is counted by route and logged once, as JSON with its traceback."""

from __future__ import annotations

import io
import json
import logging
from dataclasses import replace

import fakeredis
import pytest
from prometheus_client import REGISTRY
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from api.app import create_app
from runtime.logs import JsonFormatter
from runtime.settings import Settings


async def broken(_request: Request) -> Response:
    raise KeyError("a bug")


def errors_counted(route: str) -> float:
    return REGISTRY.get_sample_value("selftune_ingest_unhandled_errors_total", {"route": route}) or 0.0


def test_an_unhandled_exception_is_a_counted_logged_500(caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(replace(Settings.from_env(), redis_memory_high_pct=0), redis=fakeredis.FakeAsyncRedis(), keys=None)
    app.router.routes.append(Route("/things/{thing_id}", broken, methods=["GET"]))
    before = errors_counted("/things/{thing_id}")
    with caplog.at_level(logging.ERROR, logger="api.unhandled"), TestClient(app) as client:
        # raise_server_exceptions stays on: the middleware answers, so nothing reaches the server.
        resp = client.get("/things/42")
    assert resp.status_code == 500
    body = resp.json()
    assert body["ok"] is False and body["success"] is False
    assert body["error"]["code"] == "internal_error"
    assert body["errors"] == [body["error"]["message"]]
    assert errors_counted("/things/{thing_id}") == before + 1  # by route template, not path
    [record] = [r for r in caplog.records if r.name == "api.unhandled"]
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "error" and line["route"] == "/things/{thing_id}" and line["method"] == "GET"
    assert line["error_id"] in body["error"]["message"]
    assert "Traceback" in line["exc"] and "KeyError: 'a bug'" in line["exc"]


def test_handled_errors_are_not_counted() -> None:
    app = create_app(replace(Settings.from_env(), redis_memory_high_pct=0), redis=fakeredis.FakeAsyncRedis(), keys=None)
    before = errors_counted("unmatched")
    with TestClient(app) as client:
        assert client.get("/nowhere").status_code == 404
        assert client.post("/v2/push", content=b"{}").status_code == 401
    assert errors_counted("unmatched") == before


def test_uvicorn_lines_and_tracebacks_are_json_under_the_log_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """api/uvicorn-logging.json, as uvicorn's --log-config loads it, formats uvicorn's loggers as JSON."""
    import logging.config
    from pathlib import Path

    monkeypatch.setenv("LOG_FORMAT", "json")
    config = json.loads((Path(__file__).parents[2] / "api" / "uvicorn-logging.json").read_text())
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    try:
        logging.config.dictConfig(config)
        root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
        logging.getLogger("uvicorn.error").info("Started server process [%d]", 7, extra={"color_message": "x"})
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(x["logger"], x["msg"]) for x in lines] == [
        ("uvicorn.error", "Started server process [7]"),
        ("uvicorn.error", "Exception in ASGI application"),
    ]
    assert "color_message" not in lines[0]
    assert "RuntimeError: boom" in lines[1]["exc"]
