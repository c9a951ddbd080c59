"""The pure planner (`watchd/ticks.py`): `at`, `every` and overlap decisions, with instants passed in."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from watchd.config import Schedule
from watchd.cron.ticks import GRACE_S, State, define, next_run_at, overlap_action, plan, upcoming


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_an_at_that_had_passed_when_the_schedule_was_set_up_is_skipped_once() -> None:
    d = define("once", Schedule(at="2026-03-02T09:00", run=["x"], missed="replay"), "UTC")
    due = plan(d, State(since=ts("2026-03-02T10:00:00")), ts("2026-03-02T10:00:01"))
    assert due.runs == [] and [(k.reason, k.detail) for k in due.skips] == [
        ("missed", "missed: 2026-03-02T09:00 had already passed when the schedule was set up")
    ]
    handled = State(since=ts("2026-03-02T10:00:00"), last_tick=ts("2026-03-02T09:00:00"))
    assert plan(d, handled, ts("2026-03-02T11:00:00")).skips == [] and next_run_at(d, handled, 0) is None


def test_an_at_moments_before_the_first_start_still_runs_and_a_later_one_waits() -> None:
    d = define("once", Schedule(at="2026-03-02T10:00:00+01:00", run=["x"]), "UTC")
    state = State(since=ts("2026-03-02T09:00:02"))  # watchd took two seconds to start
    assert next_run_at(d, state, -float("inf")) == ts("2026-03-02T09:00:00")
    (run,) = plan(d, state, ts("2026-03-02T09:00:02")).runs
    assert run.tick_at == ts("2026-03-02T09:00:00") and run.late_s == 2


def test_every_after_the_clock_was_set_back_counts_from_now() -> None:
    d = define("e", Schedule(every="10m", run=["x"]), "UTC")
    future = State(since=ts("2026-03-02T08:00:00"), completed_at=ts("2026-03-02T12:00:00"))
    assert next_run_at(d, future, ts("2026-03-02T10:00:00")) == ts("2026-03-02T10:10:00")


@pytest.mark.parametrize(("missed", "runs", "skips"), [("skip", 0, [("missed", 6)]), ("replay", 1, [("coalesced", 5)])])
def test_every_after_an_hour_asleep(missed: str, runs: int, skips: list[tuple[str, int]]) -> None:
    d = define("e", Schedule(every="10m", run=["x"], missed=missed), "UTC")  # type: ignore[arg-type]
    state = State(
        since=ts("2026-03-02T08:00:00"), last_tick=ts("2026-03-02T09:00:00"), completed_at=ts("2026-03-02T09:00:00")
    )
    due = plan(d, state, ts("2026-03-02T10:05:00"))
    assert len(due.runs) == runs and [(k.reason, k.count) for k in due.skips] == skips


def test_overlap_actions() -> None:
    assert [overlap_action(p, 0) for p in ("forbid", "allow", "replace")] == ["run", "run", "run"]
    assert [overlap_action(p, 1) for p in ("forbid", "allow", "replace")] == ["skip", "run", "replace"]


def test_upcoming_every_without_state_counts_from_the_given_instant() -> None:
    d = define("hb", Schedule(every="5m", job="heartbeat"), "UTC")
    got = upcoming(d, None, ts("2026-03-02T10:00:00"), 3)
    assert [t for t, _ in got] == [ts("2026-03-02T10:05:00"), ts("2026-03-02T10:10:00"), ts("2026-03-02T10:15:00")]
    assert GRACE_S == 60
