"""Retention's settings and period arithmetic: what an operator sets is what maintain keeps, and the
periods it makes tile time with no gap or overlap, whatever partitions already exist."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from runtime.settings import RETAINED_TABLES, Retention, SettingsError
from store.partitions import _gaps, period_start, wanted_ranges


def at(day: str, hour: int = 0) -> datetime:
    return datetime.fromisoformat(day).replace(hour=hour, tzinfo=UTC)


def test_per_table_days_override_the_default_and_zero_keeps_forever(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETENTION_DAYS", "30")
    monkeypatch.setenv("RETENTION_DAYS_PROMPTS", "7")
    monkeypatch.setenv("RETENTION_DAYS_QUARANTINE", "0")
    retention = Retention.from_env()
    assert retention.days_for("prompts") == 7
    assert retention.days_for("quarantine") == 0
    assert retention.days_for("sessions") == 30
    assert Retention().days_for("sessions") == 90  # unset: 90 days


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("RETENTION_DAYS_PROMPT", "7", "RETENTION_DAYS_PROMPT: no such table"),
        ("RETENTION_DAYS", "-1", "RETENTION_DAYS must be >= 0"),
        ("RETENTION_DAYS_SESSIONS", "ninety", "RETENTION_DAYS_SESSIONS must be an integer"),
        ("PARTITION_DAYS", "0", "PARTITION_DAYS must be >= 1"),
        ("PARTITIONS_AHEAD", "0", "PARTITIONS_AHEAD must be >= 1"),
    ],
)
def test_a_wrong_retention_setting_is_an_error_that_names_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=message):
        Retention.from_env()


def test_every_retained_table_can_be_set_on_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    for i, table in enumerate(RETAINED_TABLES, start=1):
        monkeypatch.setenv(f"RETENTION_DAYS_{table.upper()}", str(i))
    retention = Retention.from_env()
    assert [retention.days_for(t) for t in RETAINED_TABLES] == list(range(1, len(RETAINED_TABLES) + 1))


@pytest.mark.parametrize("days", [1, 7, 30])
def test_a_period_holds_its_instant_and_periods_are_aligned_across_processes(days: int) -> None:
    for moment in (at("2026-12-02", 12), at("2026-11-30"), at("2027-01-01", 23), at("2024-02-29", 5)):
        start = period_start(moment, days)
        assert start <= moment < start + timedelta(days=days)
        assert period_start(start, days) == start  # a bound is its own period's start
        assert period_start(start - timedelta(microseconds=1), days) == start - timedelta(days=days)


def test_weekly_periods_start_on_monday_midnight_utc() -> None:
    start = period_start(datetime(2026, 12, 6, 23, 30, tzinfo=UTC), 7)  # a Sunday night
    assert start == at("2026-11-30") and start.weekday() == 0
    # An instant given in another zone is placed by its UTC time.
    from zoneinfo import ZoneInfo

    tokyo_monday_morning = datetime(2026, 12, 7, 8, 0, tzinfo=ZoneInfo("Asia/Tokyo"))  # Sunday 23:00 UTC
    assert period_start(tokyo_monday_morning, 7) == at("2026-11-30")


def test_wanted_ranges_tile_from_the_horizon_to_ahead_periods_past_now() -> None:
    ranges = wanted_ranges(at("2026-11-01"), at("2026-12-02", 12), 7, ahead=2)
    assert ranges[0][0] <= at("2026-11-01") < ranges[0][1]
    assert all(hi == lo + timedelta(days=7) for lo, hi in ranges)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))  # no gap, no overlap
    assert ranges[-1] == (at("2026-12-14"), at("2026-12-21"))  # the current week and two more


def test_gaps_leave_out_what_existing_partitions_cover() -> None:
    lo, hi = at("2026-11-30"), at("2026-12-07")
    assert _gaps(lo, hi, []) == [(lo, hi)]
    # The legacy partition (from MINVALUE) up to a cutover inside the period: only the rest is made.
    assert _gaps(lo, hi, [(None, at("2026-12-02"))]) == [(at("2026-12-02"), hi)]
    # Partitions of an earlier, narrower PARTITION_DAYS in the middle: the two sides are made.
    assert _gaps(lo, hi, [(at("2026-12-01"), at("2026-12-03"))]) == [(lo, at("2026-12-01")), (at("2026-12-03"), hi)]
    # Covered whole, or touching only at a bound: nothing, or everything.
    assert _gaps(lo, hi, [(at("2026-11-23"), at("2026-12-14"))]) == []
    assert _gaps(lo, hi, [(at("2026-11-23"), lo), (hi, at("2026-12-14"))]) == [(lo, hi)]
