"""A job for the scheduler tests, run by real workers (they import it by its dotted path)."""

from __future__ import annotations

from rq import get_current_job


def fail_first_attempt(counter_key: str) -> str:
    """Count attempts in Redis; the first one fails, so the job only finishes through a delayed retry."""
    job = get_current_job()
    assert job is not None
    if job.connection.incr(counter_key) == 1:
        raise RuntimeError("the first attempt fails, on purpose")
    return "done"
