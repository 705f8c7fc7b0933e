"""Structured logs: one JSON object per line, for the api and the workers.

Fields passed with `extra=` (push_id, workspace_id, outcome, ...) become keys.
Nothing secret is ever passed: keys are logged by nothing but their id.

uvicorn's own lines go through the same formatter: `api/uvicorn-logging.json`
(uvicorn's `--log-config`, in the Procfile, the image and the tests' stacks)
sends them to the root handler from the first line on, including the lines of
uvicorn's supervisor when it runs several processes, which never loads the
app; `configure()`, run by the app factory, does the same for a uvicorn started
without it.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import msgspec

from runtime.settings import log_format, log_level

# color_message: uvicorn's copy of the message with terminal colours.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName", "color_message"}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# uvicorn's loggers write through handlers of their own unless told otherwise; sent to the root's instead.
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


class JsonFormatter(logging.Formatter):
    """`{"ts": ..., "level": ..., "logger": ..., "msg": ..., **extra}` per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return msgspec.json.encode(entry, enc_hook=str).decode()


def formatter() -> logging.Formatter:
    """The formatter LOG_FORMAT names (a SettingsError for anything but json or text).

    Also the `()` factory of api/uvicorn-logging.json, so uvicorn's lines follow LOG_FORMAT.
    """
    return JsonFormatter() if log_format() == "json" else logging.Formatter(TEXT_FORMAT)


def configure(level: str | None = None) -> None:
    """Send every log line, uvicorn's included, to stderr as LOG_FORMAT says (json, or text for local work)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or log_level())
    for name in UVICORN_LOGGERS:
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
