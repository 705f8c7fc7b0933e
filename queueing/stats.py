"""Counters kept in Redis, shared by every api and worker process (SPEC 6).

Prometheus scrapes one api process at a time, but workers run anywhere and
serve no HTTP: what they did is counted in Redis, and `/metrics` and the
`status` command read it back. Rates come from 5-second buckets that
expire on their own; the current, partial bucket is counted too, so a burst
shows at once (with 10-second buckets and the partial one left out, `status`
showed 0 records/s through a burst and its rate 13 s later).
"""

from __future__ import annotations

import json
import time
from typing import Any

PREFIX = "selftune:stats"
WRITTEN = f"{PREFIX}:written"  # hash: record type -> records written (monotonic)
QUARANTINED = f"{PREFIX}:quarantined"  # hash: record type -> records quarantined by workers
BATCHES = f"{PREFIX}:batches"  # hash: processed | duplicate | failed -> batches
WRITE_SECONDS = f"{PREFIX}:write_seconds"  # hash: histogram buckets ("le"), "sum", "count"
# hash: table -> JSON of the last `maintain`'s TableRetention (store/retention.py), for status and /metrics
RETENTION = f"{PREFIX}:retention"
RETENTION_DELETED = f"{PREFIX}:retention_deleted"  # hash: table -> rows deleted by maintain (monotonic)
RETENTION_DROPPED = f"{PREFIX}:retention_dropped"  # hash: table -> partitions dropped by maintain (monotonic)

# Histogram buckets for one batch's write, in seconds.
WRITE_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

RATE_BUCKET_S = 5
RATE_WINDOW_S = 60  # `status` and /metrics: records per second over the last minute
RECENT_WINDOW_S = 10  # the ops page's history samples: records per second over the last 10 s
RATE_TTL_S = 300


def rate_key(what: str, at: float | None = None) -> str:
    """The bucket counting `what` (accepted_records, written_records, written_batches) around time `at`."""
    bucket = int((time.time() if at is None else at) // RATE_BUCKET_S)
    return f"{PREFIX}:rate:{what}:{bucket}"


def window_keys(what: str, now: float | None = None) -> list[str]:
    """The buckets of the last RATE_WINDOW_S seconds, oldest first, the current (partial) one last."""
    now = time.time() if now is None else now
    current = int(now // RATE_BUCKET_S)
    count = RATE_WINDOW_S // RATE_BUCKET_S
    return [f"{PREFIX}:rate:{what}:{b}" for b in range(current - count, current + 1)]


def per_second(counts: list[int], now: float, window_s: int = RATE_WINDOW_S) -> float:
    """A rate from the newest buckets of `window_keys` (oldest first): their sum over the time they cover.

    The newest `window_s / RATE_BUCKET_S` full buckets and the current one cover
    `window_s` plus the part of the current bucket already elapsed.
    """
    full = window_s // RATE_BUCKET_S
    covered = full * RATE_BUCKET_S + now % RATE_BUCKET_S
    return sum(counts[-(full + 1) :]) / covered if covered > 0 else 0.0


def bucket_label(seconds: float) -> str:
    """The histogram bucket a duration falls in ("+Inf" past the last)."""
    for le in WRITE_BUCKETS_S:
        if seconds <= le:
            return repr(le)
    return "+Inf"


def parse_retention(raw: dict[bytes, bytes]) -> list[dict[str, Any]]:
    """The RETENTION hash as one dict a table (the last maintain's TableRetention), by table name."""
    return [json.loads(v) for _, v in sorted(raw.items())]
