"""A laptop suspended for 8 hours, and the same 8 hours as a wall clock set forward then back,
with deadlines, silences and schedules due inside: on waking each fires once, late and saying so;
scheduled windows and runs that passed follow their policy (a burst never); the clock set back
fires nothing twice and runs nothing twice. The in-process daemon on a virtual clock."""

from __future__ import annotations

import math
from collections.abc import Callable

from support.inprocess import InProcessDaemon
from support.waiting import until

from watchd.model import make_event

HOUR = 3600.0

WATCHES = """
[[watch]]
id = "hourly-report"
kind = "deadline"
opens = { cron = "0 * * * *" }
expect = { subject = "report.done" }
within = "10m"
then = ["notify.console"]

[[watch]]
id = "job-finishes"
kind = "deadline"
opens = { subject = "job.started" }
expect = { subject = "job.done" }
within = "30m"
then = ["notify.console"]

[[watch]]
id = "hb"
kind = "absent"
expect = { subject = "hb" }
for = "1h"
then = ["notify.console"]
"""

SCHEDULES = """
[schedule.tidy]
cron = "0 */2 * * *"
run = ["true"]
missed = "coalesce"

[schedule.poll]
cron = "*/30 * * * *"
run = ["true"]
missed = "skip"
"""


def marks(start: float, end: float, every: float = HOUR) -> list[float]:
    """The whole hours (or other divisions of the clock) in (start, end]."""
    first = math.floor(start / every) * every + every
    return [first + i * every for i in range(int((end - first) // every) + 1) if first + i * every <= end]


def runs(d: InProcessDaemon, schedule: str) -> list[tuple[float, str]]:
    sql = "SELECT tick_at, state FROM schedule_ticks WHERE schedule = ? ORDER BY tick_at"
    return [(t, s) for t, s in d.query(sql, (schedule,))]


async def started(daemon_factory: Callable[..., InProcessDaemon]) -> InProcessDaemon:
    d = await daemon_factory({"w.toml": WATCHES}, extra_config=SCHEDULES).start()
    await d.publish(make_event("job.started", {}), make_event("hb", {}))
    await until(lambda: d.decisions("job-finishes", "window_opened"), what="the job's window")
    await until(lambda: d.decisions("hb", "matched"), what="the heartbeat")
    return d


async def settle(d: InProcessDaemon) -> None:
    """A few engine rounds, a second of virtual time."""
    for _ in range(10):
        await d.advance(0.1)


def assert_woke_once(d: InProcessDaemon, asleep_from: float, woke_at: float) -> None:
    """What an 8-hour gap leaves, whether the machine slept or the clock was set forward."""
    (job,) = d.decisions("job-finishes", "fired")
    assert "late" in job["reason"], job["reason"]
    (hb,) = d.decisions("hb", "fired")
    assert "late" in hb["reason"], hb["reason"]
    expired = [m for m in marks(asleep_from, woke_at) if m + 600 <= woke_at]
    assert len(d.decisions("hourly-report", "fired")) == 1  # only the last window that passed fires
    assert len(d.decisions("hourly-report", "missed_while_down")) == len(expired) - 1
    assert len(d.handoffs("job-finishes")) == len(d.handoffs("hb")) == len(d.handoffs("hourly-report")) == 1


async def test_an_eight_hour_suspend_wakes_to_one_late_fire_each(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = await started(daemon_factory)
    asleep_from = d.clock()
    tidy_before, poll_before = len(runs(d, "tidy")), len(runs(d, "poll"))
    await d.advance(8 * HOUR)  # suspended: time passes, nothing runs until the wake
    woke_at = d.clock()
    await until(lambda: d.decisions("hourly-report", "fired"), what="the scheduled deadline")
    await until(lambda: d.decisions("job-finishes", "fired") and d.decisions("hb", "fired"), what="the late fires")
    await until(lambda: len(runs(d, "tidy")) > tidy_before, what="the coalesced run")
    await settle(d)
    assert_woke_once(d, asleep_from, woke_at)
    assert "jumped" not in d.logged()  # a suspend is time passing, not the clock set

    # `coalesce`: the ticks missed asleep become one run; `skip`: none runs, each is recorded skipped.
    tidy = runs(d, "tidy")[tidy_before:]
    assert [s for _, s in tidy if s != "skipped"] in (["done"], ["ok"], ["succeeded"]), tidy
    poll = runs(d, "poll")[poll_before:]
    ran_asleep = [t for t, s in poll if s != "skipped" and asleep_from < t < woke_at - 60]
    assert ran_asleep == [], poll
    missed = [m for m in marks(asleep_from, woke_at, HOUR / 2) if m < woke_at - 60]
    assert sorted(t for t, s in poll if s == "skipped" and t < woke_at - 60) == missed, poll
    assert d.health()["ok"]


async def test_eight_hours_set_forward_then_back_fire_once_and_run_nothing_twice(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = await started(daemon_factory)
    asleep_from = d.clock()
    d.clock.set_by(8 * HOUR)
    await d.advance(0)
    woke_at = d.clock()
    await until(lambda: d.decisions("hourly-report", "fired"), what="the scheduled deadline")
    await until(lambda: d.decisions("job-finishes", "fired") and d.decisions("hb", "fired"), what="the late fires")
    await settle(d)
    assert_woke_once(d, asleep_from, woke_at)
    assert "the wall clock jumped forward by 8h" in d.logged()
    ticks = runs(d, "tidy") + runs(d, "poll")

    d.clock.set_by(-8 * HOUR)  # the clock comes back: nothing that fired or ran does so again
    await d.advance(0)
    await until(lambda: "the wall clock jumped back by 8h" in d.logged(), what="the jump back")
    await settle(d)
    assert_woke_once(d, asleep_from, woke_at)
    again = [r for r in runs(d, "tidy") + runs(d, "poll") if r not in ticks and r[0] < woke_at - 60]
    assert [r for r in again if r[1] != "skipped" and r[0] <= max(t for t, _ in ticks)] == [], again
    assert d.health()["ok"]
