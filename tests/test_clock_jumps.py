"""The wall clock set forward and back (NTP correcting a Raspberry Pi without a real-time clock,
or a clock set by hand): watchd believes a jump forward, follows a jump back — live or across a
restart — announces each as `watchd.clock.jumped`, and its watches time correctly afterwards.

Engine tests take the engine's clock back as the daemon does (`Engine.rewind`); daemon tests
set the virtual wall clock (`VirtualClock.set_by`) while the count of elapsed time stands still.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

from support.clocks import VirtualClock
from support.engine_sim import T0, Sim
from support.inprocess import InProcessDaemon
from support.waiting import until

from watchd.clockjump import JumpDetector
from watchd.model import make_event

YEAR = 365 * 86400.0

ABSENT = """
[[watch]]
id = "laptop-alive"
kind = "absent"
expect = { subject = "heartbeat.*", key = "data.host" }
for = "15m"
then = ["notify.console"]
"""

COUNT = """
[[watch]]
id = "login-storm"
kind = "match"
on = { subject = "auth.failed", key = "data.user" }
count = 3
window = "10m"
then = ["notify.console"]
"""

COOLDOWN = """
[[watch]]
id = "door"
kind = "match"
on = { subject = "door.opened" }
cooldown = "1h"
then = ["notify.console"]
"""

DEADLINE_EVENT = """
[[watch]]
id = "pr-review"
kind = "deadline"
opens = { subject = "pr.opened", key = "data.number" }
expect = { subject = "pr.reviewed", key = "data.number" }
within = "24h"
then = ["notify.console"]
"""

DEADLINE_CRON = """
[[watch]]
id = "nightly-backup"
kind = "deadline"
opens = { cron = "0 1 * * *", timezone = "Europe/Berlin" }
expect = { subject = "backup.done" }
within = "2h"
then = ["notify.console"]
"""


# ---- the pure engine ---------------------------------------------------------------------------


def a_year_ahead_and_back(sim: Sim) -> None:
    """The clock runs a year ahead for a while (the engine steps on it), then is set back to a
    minute after T0."""
    sim.tick(YEAR)
    sim.set_back(YEAR - 60)
    assert sim.engine.clock == T0 + 60


def test_an_absent_watch_times_its_silence_again_after_the_clock_comes_back() -> None:
    sim = Sim(ABSENT, T0)
    sim.emit("heartbeat.x1", {"host": "x1"})
    a_year_ahead_and_back(sim)
    assert len(sim.fired("laptop-alive")) == 1  # the jump forward was believed: 15m of silence passed
    sim.emit("heartbeat.x1", {"host": "x1"})
    assert sim.tick(14 * 60) == []
    (fire,) = sim.tick(61)
    assert fire.window == (T0 + 60, T0 + 60 + 900) and fire.late_s <= 1


def test_an_absent_watch_heard_on_the_clock_ahead_counts_its_silence_from_the_return() -> None:
    sim = Sim(ABSENT, T0)
    sim.tick(YEAR)
    sim.emit("heartbeat.x1", {"host": "x1"})  # heard at T0 + 1 year, on the clock ahead
    sim.set_back(YEAR - 60)
    assert sim.tick(14 * 60) == []
    (fire,) = sim.tick(61)
    assert fire.key == "x1" and fire.window == (T0 + 60, T0 + 60 + 900)


def test_a_count_window_slides_again_after_the_clock_comes_back() -> None:
    sim = Sim(COUNT, T0)
    sim.tick(YEAR)
    sim.emit("auth.failed", {"user": "bob"})  # counted on the clock ahead: kept, as of the return
    sim.set_back(YEAR - 60)
    for _ in range(2):
        sim.tick(6 * 60)
        assert sim.emit("auth.failed", {"user": "bob"}) == []  # one falls out as each comes in
    assert sim.emit("auth.failed", {"user": "bob"}) != []  # three within ten minutes
    for _ in range(3):
        sim.tick(6 * 60)
        assert sim.emit("auth.failed", {"user": "bob"}) == []


def test_events_counted_on_the_clock_ahead_stay_counted_as_of_the_return() -> None:
    sim = Sim(COUNT, T0)
    sim.tick(YEAR)
    sim.emit("auth.failed", {"user": "bob"})
    sim.emit("auth.failed", {"user": "bob"})
    sim.set_back(YEAR)
    assert sim.emit("auth.failed", {"user": "bob"}) != []


def test_a_cooldown_started_on_the_clock_ahead_runs_from_the_return() -> None:
    sim = Sim(COOLDOWN, T0)
    sim.tick(YEAR)
    assert sim.emit("door.opened") != []
    sim.set_back(YEAR)
    assert sim.emit("door.opened") == []  # still cooling down, for an hour from now
    sim.tick(3601)
    assert sim.emit("door.opened") != []


def test_a_deadline_window_opened_on_the_clock_ahead_opens_at_the_return() -> None:
    sim = Sim(DEADLINE_EVENT, T0)
    sim.tick(YEAR)
    sim.emit("pr.opened", {"number": 7})
    sim.set_back(YEAR - 60)
    assert sim.tick(24 * 3600 - 1) == []
    (fire,) = sim.tick(2)
    assert fire.key == "7" and fire.window == (T0 + 60, T0 + 60 + 24 * 3600)


def test_a_scheduled_deadline_opens_at_its_next_time_after_the_return() -> None:
    sim = Sim(DEADLINE_CRON, T0)
    a_year_ahead_and_back(sim)
    berlin = ZoneInfo("Europe/Berlin")
    next_1am = datetime(2026, 11, 23, 1, 0, tzinfo=berlin).timestamp()
    assert sim.engine.watch_next_due("nightly-backup") == next_1am
    before = len(sim.fired("nightly-backup"))
    sim.tick(next_1am - sim.now + 2 * 3600 + 1)
    (fire,) = sim.fired("nightly-backup")[before:]
    assert fire.window == (next_1am, next_1am + 2 * 3600)


def test_a_clock_behind_the_engines_by_less_than_a_rewind_changes_nothing() -> None:
    sim = Sim(ABSENT, T0)
    sim.emit("heartbeat.x1", {"host": "x1"})
    sim.engine.rewind(T0 + 5)  # ahead of the engine's clock: not a rewind
    assert sim.engine.clock == T0


def test_the_detector_tells_the_clock_set_from_time_passing() -> None:
    clock = VirtualClock()
    detector = JumpDetector(clock, clock.elapsed)
    clock.advance(8 * 3600)  # a suspend: time passed
    assert detector.check() is None
    clock.set_by(-3600)
    jump = detector.check()
    assert jump is not None and round(jump.by_s) == -3600 and round(jump.expected - jump.to) == 3600
    assert detector.check() is None  # the next look starts from the clock as set
    clock.set_by(1.0)  # within NTP's slew and the tolerance: not a jump
    assert detector.check() is None


# ---- the daemon --------------------------------------------------------------------------------

WATCHED = """
[[watch]]
id = "hb"
kind = "absent"
expect = { subject = "hb" }
for = "1h"
then = ["notify.console"]

[[watch]]
id = "burst"
kind = "match"
on = { subject = "burst" }
count = 2
window = "1s"
then = ["notify.console"]

[[watch]]
id = "jumped"
kind = "match"
on = { subject = "watchd.clock.jumped" }
then = ["notify.console"]
"""


async def set_clock_by(d: InProcessDaemon, seconds: float) -> None:
    d.clock.set_by(seconds)
    await d.advance(0)


def jumps(d: InProcessDaemon) -> list[dict[str, object]]:
    """The data of each watchd.clock.jumped, in the order they were handed off (their own times
    are on the clock as it was set)."""
    sql = "SELECT evidence FROM handoffs WHERE watch = 'jumped' ORDER BY rowid"
    return [json.loads(e)[0]["data"] for (e,) in d.query(sql)]


async def test_a_live_jump_forward_is_believed_and_one_back_followed(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = await daemon_factory({"w.toml": WATCHED}).start()
    await d.publish(make_event("hb", {}))
    await until(lambda: d.decisions("hb", "matched"), what="the heartbeat")

    await set_clock_by(d, YEAR)
    await until(lambda: d.decisions("hb", "fired"), what="the silence, on the clock set forward")
    await until(lambda: len(jumps(d)) == 1, what="watchd.clock.jumped forward")
    assert jumps(d)[0]["direction"] == "forward" and round(float(str(jumps(d)[0]["by_s"]))) == YEAR
    assert "the wall clock jumped forward by 365d" in d.logged()

    await set_clock_by(d, -YEAR)
    await until(lambda: len(jumps(d)) == 2, what="watchd.clock.jumped back")
    assert jumps(d)[1]["direction"] == "back"
    assert "the wall clock jumped back by 365d" in d.logged()
    assert d.running.engine.clock <= d.clock()
    assert float(d.meta("clock") or 0) <= d.clock()

    # A count window slides again: two events more than its second apart do not fire. (The stream
    # stamps events on the real clock, which the virtual one is back on now.)
    await d.publish(make_event("burst", {}))
    await until(lambda: d.decisions("burst", "counted"), what="the first of the burst")
    await asyncio.sleep(1.1)
    await d.publish(make_event("burst", {}))
    await until(lambda: len(d.decisions("burst", "counted")) == 2, what="the second, counted alone")
    await d.publish(make_event("burst", {}))
    await until(lambda: d.decisions("burst", "fired"), what="two within a second")

    # The silence is timed on the clock as it is now: an hour after the next heartbeat.
    await d.publish(make_event("hb", {}))
    await until(lambda: len(d.decisions("hb", "matched")) == 2, what="the next heartbeat")
    await d.advance(3600 - 60)
    await d.settle()  # the engine has looked at the clock a minute short of the silence
    assert len(d.decisions("hb", "fired")) == 1
    await d.advance(61)
    await until(lambda: len(d.decisions("hb", "fired")) == 2, what="the silence after the clock came back")


async def test_a_clock_set_back_while_watchd_was_down_is_followed_at_start(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = await daemon_factory({"w.toml": WATCHED}).start()
    await d.publish(make_event("hb", {}))
    await until(lambda: d.decisions("hb", "matched"), what="the heartbeat")
    await set_clock_by(d, 30 * 86400)
    await until(lambda: d.decisions("hb", "fired"), what="the silence, on the clock set forward")
    await d.stop()
    saved = float(d.meta("clock") or 0)
    assert saved > d.clock() - 60  # saved on the clock set forward

    d.clock.set_by(-30 * 86400)
    await d.start()
    assert d.running.engine.clock <= d.clock()
    await until(lambda: any(j.get("at_start") for j in jumps(d)), what="watchd.clock.jumped at start")
    assert "the engine's saved clock" in d.logged() and "ahead of the wall clock" in d.logged()
    back = next(j for j in jumps(d) if j.get("at_start"))
    assert back["direction"] == "back" and round(float(str(back["by_s"])) / 86400) == -30
    assert json.dumps(back)  # plain JSON for whoever watches it

    await d.publish(make_event("hb", {}))
    await until(lambda: len(d.decisions("hb", "matched")) == 2, what="the next heartbeat")
    await d.advance(3601)
    await until(lambda: len(d.decisions("hb", "fired")) == 2, what="the silence after the clock came back")


REPEAT = """
[[watch]]
id = "disk-full"
kind = "match"
on = { subject = "disk.full" }
repeat = "30m"
then = ["notify.console"]
"""


def test_repeats_of_an_incident_opened_on_the_clock_ahead_run_from_the_return() -> None:
    sim = Sim(REPEAT, T0)
    sim.tick(YEAR)
    assert sim.emit("disk.full") != []
    sim.set_back(YEAR)
    assert sim.advance(29 * 60) == []
    assert [f.reason.split(",")[0] for f in sim.advance(60)] == ["repeat 1"]


def test_a_snooze_set_on_the_clock_ahead_lasts_as_long_from_the_return() -> None:
    sim = Sim(REPEAT, T0)
    sim.tick(YEAR)
    sim.emit("disk.full")
    sim.answer("snooze", "disk-full", duration="1h")
    sim.set_back(YEAR)
    assert sim.advance(59 * 60) == []
    assert [f.reason.split(" (")[0] for f in sim.advance(60)] == ["still open after the snooze"]
