"""Quiet hours: the pure window maths (over midnight, across DST days), holding handoffs in the
outbox, and one end-to-end run through the real daemon."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.inprocess import InProcessDaemon
from support.waiting import until

from watchd.config import Quiet
from watchd.dispatch import handoffs_from_fire
from watchd.engine import Fire
from watchd.model import iso, make_event
from watchd.quiet import QUIET_PREFIX, quiet_hold, quiet_release
from watchd.store import Store

BERLIN = "Europe/Berlin"


def ts(text: str) -> float:
    """An instant from an ISO string with its offset ("…Z" or "…+02:00")."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def local(t: float | None, tz: str = BERLIN) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, ZoneInfo(tz)).isoformat()


# ---- the window maths ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fired", "expected"),
    [
        ("2026-06-10T09:00:00Z", "2026-06-10T17:00:00+00:00"),  # from is inside
        ("2026-06-10T16:59:59Z", "2026-06-10T17:00:00+00:00"),
        ("2026-06-10T17:00:00Z", None),  # to is outside
        ("2026-06-10T08:59:59Z", None),
        ("2026-06-10T23:00:00Z", None),
    ],
)
def test_daytime_window(fired: str, expected: str | None) -> None:
    assert local(quiet_release(ts(fired), "09:00", "17:00", "UTC"), "UTC") == expected


@pytest.mark.parametrize(
    ("fired", "expected"),
    [
        ("2026-06-10T23:30:00+02:00", "2026-06-11T07:00:00+02:00"),  # evening: until tomorrow morning
        ("2026-06-11T03:00:00+02:00", "2026-06-11T07:00:00+02:00"),  # after midnight: this morning
        ("2026-06-10T22:00:00+02:00", "2026-06-11T07:00:00+02:00"),
        ("2026-06-10T21:59:00+02:00", None),
        ("2026-06-11T07:00:00+02:00", None),
        ("2026-06-11T12:00:00+02:00", None),
    ],
)
def test_window_over_midnight_in_a_zone(fired: str, expected: str | None) -> None:
    assert local(quiet_release(ts(fired), "22:00", "07:00", BERLIN)) == expected


# Europe/Berlin: 2026-03-29 02:00 CET -> 03:00 CEST (01:00Z); 2026-10-25 03:00 CEST -> 02:00 CET (01:00Z).
@pytest.mark.parametrize(
    ("window", "fired", "expected"),
    [
        # spring forward: the night is an hour shorter, the window still ends at 07:00 local
        (("22:00", "07:00"), "2026-03-28T23:00:00+01:00", "2026-03-29T07:00:00+02:00"),
        (("22:00", "07:00"), "2026-03-29T04:00:00+02:00", "2026-03-29T07:00:00+02:00"),
        # an end the clock skips ends the window at the jump (03:00 CEST)
        (("22:00", "02:30"), "2026-03-29T01:30:00+01:00", "2026-03-29T03:00:00+02:00"),
        (("22:00", "02:30"), "2026-03-29T03:10:00+02:00", None),
        # a start the clock skips opens it at the jump
        (("02:30", "07:00"), "2026-03-29T01:59:00+01:00", None),
        (("02:30", "07:00"), "2026-03-29T03:00:00+02:00", "2026-03-29T07:00:00+02:00"),
        # a window entirely inside the gap does not happen that day
        (("02:10", "02:50"), "2026-03-29T03:30:00+02:00", None),
        (("02:10", "02:50"), "2026-03-30T02:20:00+02:00", "2026-03-30T02:50:00+02:00"),
        # fall back: the night is an hour longer
        (("22:00", "07:00"), "2026-10-24T23:00:00+02:00", "2026-10-25T07:00:00+01:00"),
        (("22:00", "07:00"), "2026-10-25T02:30:00+01:00", "2026-10-25T07:00:00+01:00"),
        # an end the clock shows twice ends the window the first time
        (("22:00", "02:30"), "2026-10-25T02:10:00+02:00", "2026-10-25T02:30:00+02:00"),
        (("22:00", "02:30"), "2026-10-25T02:45:00+02:00", None),
        (("22:00", "02:30"), "2026-10-25T02:10:00+01:00", None),  # the repeated 02:10 is after the end
        # a start the clock shows twice opens it the first time, and it stays open through the repeat
        (("02:30", "07:00"), "2026-10-25T02:10:00+02:00", None),
        (("02:30", "07:00"), "2026-10-25T02:40:00+02:00", "2026-10-25T07:00:00+01:00"),
        (("02:30", "07:00"), "2026-10-25T02:10:00+01:00", "2026-10-25T07:00:00+01:00"),
    ],
)
def test_dst_days_in_berlin(window: tuple[str, str], fired: str, expected: str | None) -> None:
    assert local(quiet_release(ts(fired), *window, BERLIN)) == expected


def test_dst_days_in_new_york() -> None:
    ny = "America/New_York"  # 2026-03-08 02:00 EST -> 03:00 EDT; 2026-11-01 02:00 EDT -> 01:00 EST
    assert local(quiet_release(ts("2026-03-07T23:00:00-05:00"), "22:00", "07:00", ny), ny) == (
        "2026-03-08T07:00:00-04:00"
    )
    assert local(quiet_release(ts("2026-10-31T23:00:00-04:00"), "22:00", "07:00", ny), ny) == (
        "2026-11-01T07:00:00-05:00"
    )
    # a window ending at 01:30 ends at the first 01:30 (EDT), not the repeated one
    assert local(quiet_release(ts("2026-11-01T01:00:00-04:00"), "23:00", "01:30", ny), ny) == (
        "2026-11-01T01:30:00-04:00"
    )


def test_equal_from_and_to_is_no_window() -> None:
    assert quiet_release(ts("2026-06-10T12:00:00Z"), "12:00", "12:00", "UTC") is None


def _brute_force_utc(t: float, start: int, end: int) -> float | None:
    """Minute by minute in UTC (no DST): quiet while the minute of day is in [start, end), circular."""

    def quiet(x: float) -> bool:
        m = int(x // 60) % 1440
        return start <= m < end if start < end else (m >= start or m < end)

    if not quiet(t):
        return None
    x = (t // 60 + 1) * 60
    while quiet(x):
        x += 60
    return x


@given(
    t=st.integers(min_value=1_700_000_000 // 60, max_value=1_900_000_000 // 60).map(lambda m: m * 60.0),
    start=st.integers(0, 1439),
    end=st.integers(0, 1439),
)
def test_matches_a_brute_force_oracle_in_utc(t: float, start: int, end: int) -> None:
    hhmm = [f"{m // 60:02d}:{m % 60:02d}" for m in (start, end)]
    expected = None if start == end else _brute_force_utc(t, start, end)
    assert quiet_release(t, hhmm[0], hhmm[1], "UTC") == expected


@given(
    t=st.floats(min_value=1_700_000_000, max_value=1_900_000_000, allow_nan=False),
    start=st.integers(0, 1439),
    end=st.integers(0, 1439),
    tz=st.sampled_from([BERLIN, "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]),
)
def test_release_is_later_and_within_a_day_in_any_zone(t: float, start: int, end: int, tz: str) -> None:
    hhmm = [f"{m // 60:02d}:{m % 60:02d}" for m in (start, end)]
    release = quiet_release(t, hhmm[0], hhmm[1], tz)
    if release is not None:
        assert t < release <= t + 86400 + 3600
        assert quiet_release(release, hhmm[0], hhmm[1], tz) is None  # the window is over then


def test_agents_are_held_unless_urgent_notifiers_always() -> None:
    t = ts("2026-06-10T23:30:00+02:00")
    release = quiet_release(t, "22:00", "07:00", BERLIN)
    assert quiet_hold("notify.phone", t, "22:00", "07:00", BERLIN) == release
    assert quiet_hold("notify.phone", t, "22:00", "07:00", BERLIN, urgent=True) == release
    assert quiet_hold("agent.triage", t, "22:00", "07:00", BERLIN) == release
    assert quiet_hold("agent.triage", t, "22:00", "07:00", BERLIN, urgent=True) is None


# ---- handoffs and the outbox ---------------------------------------------------------------------


def fire(at: float, targets: list[str]) -> Fire:
    return Fire(
        watch="w", version=1, kind="match", key=None, logical="e1", fired_at=at, reason="it happened", targets=targets
    )


def test_handoffs_inside_the_window_are_held_and_marked_late() -> None:
    at = ts("2026-06-10T23:30:00+02:00")
    holds: dict[str, float] = {}
    quiet = Quiet(from_="22:00", to="07:00")
    made = handoffs_from_fire(
        fire(at, ["notify.phone", "agent.a"]), "disk {reason}", quiet=quiet, zone=BERLIN, holds=holds
    )
    release = ts("2026-06-11T07:00:00+02:00")
    assert holds == {made[0].id: release, made[1].id: release}
    assert made[0].message == QUIET_PREFIX + "disk it happened"
    # urgent wakes the agent at once; the notifier still waits, and without a template the default is marked
    holds.clear()
    made = handoffs_from_fire(
        fire(at, ["notify.phone", "agent.a"]), None, quiet=quiet, urgent=True, zone=BERLIN, holds=holds
    )
    assert holds == {made[0].id: release}
    assert made[0].message is not None and made[0].message.startswith(QUIET_PREFIX + "🔔 w fired")
    assert made[1].message is None
    # the watch's own zone wins over the default; outside the window nothing is held
    holds.clear()
    made = handoffs_from_fire(
        fire(at, ["notify.phone"]),
        None,
        quiet=Quiet(from_="22:00", to="07:00", timezone="UTC"),
        zone=BERLIN,
        holds=holds,
    )
    assert holds == {} and made[0].message is None


def test_the_store_schedules_a_held_handoff_for_the_release(tmp_path: Path) -> None:
    store = Store(tmp_path / "w.db")
    at = ts("2026-06-10T23:30:00+02:00")
    holds: dict[str, float] = {}
    (h,) = handoffs_from_fire(
        fire(at, ["notify.phone"]), None, quiet=Quiet(from_="22:00", to="07:00"), zone=BERLIN, holds=holds
    )
    store.commit_step(
        last_seq=1, clock=at, changes=([], [], set()), decisions=[], handoffs=[h], subjects={}, now=at, holds=holds
    )
    release = holds[h.id]
    assert store.next_attempt_at() == release
    assert store.claim_due(release - 1) == []
    (claimed,) = store.claim_due(release)
    assert claimed.id == h.id
    detail = store.conn.execute("SELECT detail FROM transitions WHERE handoff_id = ? ORDER BY id", (h.id,)).fetchone()
    assert detail == ("held for quiet hours until 2026-06-11T05:00:00Z",)
    store.close()


# ---- end to end ----------------------------------------------------------------------------------


async def test_a_quiet_window_covering_now_holds_the_notifier_and_wakes_an_urgent_agent(
    daemon_factory: Callable[..., InProcessDaemon], tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    start, end = (now - timedelta(hours=1)), (now + timedelta(hours=2))
    marker = tmp_path / "agent-ran"
    watch = f"""
[[watch]]
id = "late-night"
kind = "match"
on = {{ subject = "alarm.raised" }}
then = ["notify.console", "agent.fixer"]
urgent = true
quiet = {{ from = "{start:%H:%M}", to = "{end:%H:%M}", timezone = "UTC" }}
"""
    agent = f'[agent.fixer]\ntype = "command"\ncommand = ["sh", "-c", "touch {marker}"]\n'
    d = await daemon_factory({"w.toml": watch}, extra_config=agent).start()
    await d.publish(make_event("alarm.raised", {"level": "high"}))
    await until(lambda: marker.exists(), 15, "the urgent agent to run")
    await until(lambda: {h["target"]: h["state"] for h in d.handoffs()}.get("agent.fixer") == "done", 10, "done")
    rows = {h["target"]: h for h in json.loads((await d.cli("handoffs", "--json")).stdout)}
    held = rows["notify.console"]
    assert held["state"] == "pending"
    expected = end.replace(second=0, microsecond=0)
    assert held["next_attempt_at"] == iso(expected.timestamp())
    assert held["message"].startswith(QUIET_PREFIX)
    assert rows["agent.fixer"]["state"] == "done" and rows["agent.fixer"]["next_attempt_at"] is None
    assert "[watchd: late-night fired]" not in d.printed()  # nothing printed during quiet hours
