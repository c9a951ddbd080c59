"""An every-day-at-one-time cron expression ("30 3 * * *", the built-in schedules') is walked
without croniter: the same ticks as croniter gives for the same days written otherwise
("30 3 1-31 * *", which croniter walks), across DST gaps and folds, from any instant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from watchd.cron.schedule import CronSpec, next_tick, ticks_between

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]


def specs(minute: int, hour: int, zone: str, gap: str, fold: str) -> tuple[CronSpec, CronSpec]:
    daily = CronSpec(f"{minute} {hour} * * *", zone, dst_gap=gap, dst_fold=fold)  # type: ignore[arg-type]
    walked = CronSpec(f"{minute} {hour} 1-31 * *", zone, dst_gap=gap, dst_fold=fold)  # type: ignore[arg-type]
    return daily, walked


@settings(max_examples=150, deadline=None)
@given(
    minute=st.integers(0, 59),
    hour=st.integers(0, 23),
    zone=st.sampled_from(ZONES),
    gap=st.sampled_from(["skip", "shift"]),
    fold=st.sampled_from(["once", "both"]),
    start=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1)),
    on_a_tick=st.booleans(),
)
def test_daily_ticks_as_croniter_walks_them(
    minute: int, hour: int, zone: str, gap: str, fold: str, start: datetime, on_a_tick: bool
) -> None:
    daily, walked = specs(minute, hour, zone, gap, fold)
    after = start.replace(tzinfo=UTC)
    if on_a_tick:  # from a tick itself: the next one is the day's after
        tick = next_tick(walked, after)
        assert tick is not None
        after = tick
    assert next_tick(daily, after) == next_tick(walked, after)
    end = after + timedelta(days=40)
    assert list(ticks_between(daily, after, end)) == list(ticks_between(walked, after, end))


@settings(max_examples=60, deadline=None)
@given(
    minute=st.sampled_from([0, 30]),
    hour=st.sampled_from([0, 1, 2, 3]),
    zone=st.sampled_from(["Europe/Berlin", "America/New_York", "Australia/Lord_Howe"]),
    gap=st.sampled_from(["skip", "shift"]),
    fold=st.sampled_from(["once", "both"]),
    year=st.integers(2024, 2030),
)
def test_daily_ticks_across_the_dst_changes_of_a_year(
    minute: int, hour: int, zone: str, gap: str, fold: str, year: int
) -> None:
    daily, walked = specs(minute, hour, zone, gap, fold)
    start, end = datetime(year, 1, 1, tzinfo=UTC), datetime(year + 1, 1, 1, tzinfo=UTC)
    assert list(ticks_between(daily, start, end)) == list(ticks_between(walked, start, end))
