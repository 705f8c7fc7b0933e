"""Counters kept in Redis, shared by every api and worker process (SPEC 6).

Prometheus scrapes one api process at a time, but workers run anywhere and
serve no HTTP: what they did is counted in Redis, and `/metrics` and the
`status` command read it back. Rates over the last minute come from
10-second buckets that expire on their own.
"""

from __future__ import annotations

import time

PREFIX = "selftune:stats"
WRITTEN = f"{PREFIX}:written"  # hash: record type -> records written (monotonic)
QUARANTINED = f"{PREFIX}:quarantined"  # hash: record type -> records quarantined by workers
BATCHES = f"{PREFIX}:batches"  # hash: processed | duplicate | failed -> batches
WRITE_SECONDS = f"{PREFIX}:write_seconds"  # hash: histogram buckets ("le"), "sum", "count"

# Histogram buckets for one batch's write, in seconds.
WRITE_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

RATE_BUCKET_S = 10
RATE_WINDOW_S = 60
RATE_TTL_S = 300


def rate_key(what: str, at: float | None = None) -> str:
    """The bucket counting `what` (accepted_records, written_records, written_batches) around time `at`."""
    bucket = int((time.time() if at is None else at) // RATE_BUCKET_S)
    return f"{PREFIX}:rate:{what}:{bucket}"


def window_keys(what: str, now: float | None = None) -> list[str]:
    """The complete buckets of the last RATE_WINDOW_S seconds (the current, partial one left out)."""
    now = time.time() if now is None else now
    last_full = int(now // RATE_BUCKET_S) - 1
    count = RATE_WINDOW_S // RATE_BUCKET_S
    return [f"{PREFIX}:rate:{what}:{b}" for b in range(last_full - count + 1, last_full + 1)]


def bucket_label(seconds: float) -> str:
    """The histogram bucket a duration falls in ("+Inf" past the last)."""
    for le in WRITE_BUCKETS_S:
        if seconds <= le:
            return repr(le)
    return "+Inf"
