"""The schedule runner with a virtual clock, a real SQLite state file and real processes: suspend,
outage, overlap, restarts, two processes racing for one tick, `then` handoffs and `run` failures."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from support.clocks import ManualClock
from support.fakes import FakeWebhook
from support.scheduling import ECHO, Harness, ts

from watchd import config
from watchd.cron.ticks import jitter_offset, tick_key
from watchd.cron.walltimer import WallTimer
from watchd.dispatch import Dispatcher
from watchd.explain.schedule import explain_from_db
from watchd.model import iso
from watchd.notify.http_client import HttpClient
from watchd.store.schedules import TickClaim, claim
from watchd.targets import build_targets


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Any]:
    made: list[Harness] = []

    async def factory(schedules: str, at: str, name: str = "h", **kw: Any) -> Harness:
        h = Harness(tmp_path / name, schedules, ManualClock(at), **kw)
        made.append(h)
        await h.sched.start()
        return h

    yield factory
    for h in made:
        await h.sched.stop_runs("test over")
        h.close()


async def test_an_on_time_tick_runs_once_and_the_next_is_the_next_tick(make: Any) -> None:
    h = await make(f'[schedule.q]\ncron = "*/15 * * * *"\n{ECHO}\n', "2026-03-02T09:59:00")
    assert h.sched.next_wake() == ts("2026-03-02T10:00:00")
    await h.step("2026-03-02T10:00:00.020")
    assert h.subjects() == ["watchd.schedule.q.started", "watchd.schedule.q.done", "watchd.job.q.done"]
    started, done, job = (d for _, d in h.events)
    assert started["tick"] == "2026-03-02T10:00:00Z" and started["lateness_s"] == pytest.approx(0.02)
    assert done["summary"] == "exit 0" and done["output_tail"] == "ran" and job["exit_code"] == 0
    (row,) = h.rows("q")
    assert row["state"] == "done" and row["key"] == started["key"] and row["tick_at"] == ts("2026-03-02T10:00:00")
    assert h.sched.next_wake() == ts("2026-03-02T10:15:00")
    await h.step("2026-03-02T10:00:30")  # a spurious wake-up runs nothing
    assert len(h.rows("q")) == 1 and len(h.events) == 3


@pytest.mark.parametrize(
    ("missed", "runs", "skipped"),
    [
        ("skip", [], {"missed": 31}),
        ("coalesce", ["2026-03-02T17:45:00Z"], {"coalesced": 30}),
        ("replay", [f"2026-03-02T{h:02d}:{m:02d}:00Z" for h in range(10, 18) for m in (0, 15, 30, 45)][1:], {}),
    ],
)
async def test_an_8_hour_suspend_is_one_decision_by_the_missed_policy(
    make: Any, missed: str, runs: list[str], skipped: dict[str, int]
) -> None:
    h = await make(f'[schedule.q]\ncron = "*/15 * * * *"\nmissed = "{missed}"\n{ECHO}\n', "2026-03-02T09:59:00")
    await h.step("2026-03-02T10:00:00")
    h.events.clear()
    # The lid closes at 10:05 and opens at 17:52: ticks 10:15 … 17:45 (31) were missed.
    await h.step("2026-03-02T17:52:00")
    assert [d["tick"] for d in h.of(".started")] == runs
    got = {d["reason"]: d["count"] for d in h.of(".skipped")}
    assert got == skipped
    assert len(h.of(".skipped")) == len(skipped)  # one event per reason, never one per tick
    if missed == "coalesce":
        assert h.of(".started")[0]["backfill_from"] == "2026-03-02T10:15:00Z"
    # every tick up to now is accounted for exactly once; the next one is on time
    assert len(h.rows("q")) == 32
    assert h.sched.next_wake() == ts("2026-03-02T18:00:00")


async def test_replay_with_max_lateness_after_a_suspend_runs_only_the_recent_ticks_in_order(make: Any) -> None:
    body = f'[schedule.q]\ncron = "*/15 * * * *"\nmissed = "replay"\nmax_lateness = "1h"\n{ECHO}\n'
    h = await make(body, "2026-03-02T09:59:00")
    await h.step("2026-03-02T10:00:00")
    h.events.clear()
    await h.step("2026-03-02T17:52:00")  # the README's example
    assert [d["tick"][11:16] for d in h.of(".started")] == ["17:00", "17:15", "17:30", "17:45"]
    assert [(d["reason"], d["count"]) for d in h.of(".skipped")] == [("max_lateness", 27)]


async def test_every_counts_from_the_last_completion_and_coalesces_a_suspend(make: Any) -> None:
    h = await make(f'[schedule.hb]\nevery = "5m"\nmissed = "coalesce"\n{ECHO}\n', "2026-03-02T10:00:00")
    assert h.sched.next_wake() == ts("2026-03-02T10:05:00")  # 5m after it was first set up
    await h.step("2026-03-02T10:05:00")
    assert h.sched.next_wake() == ts("2026-03-02T10:10:00")
    await h.step("2026-03-02T18:00:00.5")  # 8 hours asleep: one run now, not 95
    assert len(h.of(".started")) == 2
    assert h.of(".skipped")[0]["count"] == 94 and h.of(".skipped")[0]["reason"] == "coalesced"
    assert h.sched.next_wake() == pytest.approx(ts("2026-03-02T18:05:00.5"))  # from that run's end


@pytest.mark.parametrize(
    ("missed", "runs", "reasons"),
    [
        ("skip", [], {"missed": 4, "max_lateness": 8}),
        ("coalesce", ["2026-03-05T06:00:00Z"], {"coalesced": 3, "max_lateness": 8}),
        (
            "replay",
            ["2026-03-04T12:00:00Z", "2026-03-04T18:00:00Z", "2026-03-05T00:00:00Z", "2026-03-05T06:00:00Z"],
            {"max_lateness": 8},
        ),
    ],
)
async def test_a_3_day_outage_with_max_lateness(
    make: Any, missed: str, runs: list[str], reasons: dict[str, int]
) -> None:
    body = f'[schedule.q]\ncron = "0 */6 * * *"\nmissed = "{missed}"\nmax_lateness = "1d"\n{ECHO}\n'
    h = await make(body, "2026-03-02T05:59:00")
    await h.step("2026-03-02T06:00:00")
    h.restart()  # the daemon is down from 06:30 on 2 March …
    await h.sched.start()
    h.events.clear()
    await h.step("2026-03-05T11:00:00")  # … to 11:00 on 5 March: 12 ticks missed, 8 of them over a day late
    assert [d["tick"] for d in h.of(".started")] == runs
    assert {d["reason"]: d["count"] for d in h.of(".skipped")} == reasons
    rows = h.rows("q")
    assert len(rows) == 13 and len({r["key"] for r in rows}) == 13
    assert [r["state"] for r in rows].count("done") == 1 + len(runs)


SLOW = f'run = ["{sys.executable}", "-c", "import time; time.sleep(30)"]'


@pytest.mark.parametrize("overlap", ["forbid", "allow", "replace"])
async def test_a_run_longer_than_its_period(make: Any, overlap: str) -> None:
    h = await make(f'[schedule.slow]\ncron = "* * * * *"\noverlap = "{overlap}"\n{SLOW}\n', "2026-03-02T09:59:30")
    await h.sched.step()  # the 09:59 tick, 30s before it was set up, runs (within the grace)
    h.clock.set("2026-03-02T10:00:00")
    await h.sched.step()
    await asyncio.sleep(0.3)  # let a replaced run record itself
    states = [(r["state"], r["reason"]) for r in h.rows("slow")]
    slot = h.sched.slots["slow"]
    if overlap == "forbid":
        assert states == [("started", None), ("skipped", "overlap")]
        (skip,) = h.of(".skipped")
        assert skip["reason"] == "overlap" and "09:59:00Z is still going" in skip["detail"]
        assert len(slot.active) == 1
        verdict = explain_from_db(h.loaded, "slow", ts("2026-03-02T10:00:01")).verdict
        assert verdict.startswith("skipped the 10:00 UTC tick (overlap): ") and "still going" in verdict
    elif overlap == "allow":
        assert states == [("started", None), ("started", None)] and len(slot.active) == 2
    else:
        assert states == [("failed", "replaced"), ("started", None)] and len(slot.active) == 1
        (failed,) = h.of("schedule.slow.failed")
        assert failed["reason"].startswith("replaced by the run for 2026-03-02T10:00:00Z")
        assert h.rows("slow")[0]["summary"] == failed["reason"]


async def test_a_restart_in_the_middle_of_a_run_fails_it_and_never_runs_that_tick_again(make: Any) -> None:
    h = await make(f'[schedule.slow]\ncron = "0 * * * *"\nmissed = "coalesce"\n{ECHO}\n', "2026-03-02T09:59:59")
    # A watchd claimed the 10:00 tick and died during its run (the real thing: tests/test_scheduler_e2e.py).
    key = tick_key("slow", 1, ts("2026-03-02T10:00:00"))
    claim(
        h.store.conn,
        [TickClaim(key, "slow", 1, ts("2026-03-02T10:00:00"), "started", None, ts("2026-03-02T10:00:00"), None, None)],
    )
    h.restart()
    h.clock.set("2026-03-02T12:30:00")
    await h.sched.start()
    (failed,) = h.of("schedule.slow.failed")
    assert failed["reason"] == "interrupted by restart" and failed["tick"] == "2026-03-02T10:00:00Z"
    await h.step()
    # 11:00 and 12:00 were missed: coalesced into one run for 12:00; 10:00 never runs again.
    assert [d["tick"] for d in h.of(".started")] == ["2026-03-02T12:00:00Z"]
    rows = h.rows("slow")
    assert [(r["state"], r["reason"]) for r in rows] == [
        ("failed", "interrupted"),
        ("skipped", "coalesced"),
        ("done", None),
    ]
    assert rows[0]["summary"] == "interrupted by restart"


async def test_two_schedulers_on_one_state_file_run_a_tick_once(make: Any, tmp_path: Path) -> None:
    out = tmp_path / "ran.txt"
    body = f'[schedule.once]\ncron = "*/5 * * * *"\nrun = ["sh", "-c", "echo $WATCHD_TICK_KEY >> {out}"]\n'
    a = await make(body, "2026-03-02T09:59:00", name="shared")
    b = a.twin()
    await b.sched.install(a.loaded)
    try:
        for at in ("2026-03-02T10:00:00", "2026-03-02T10:05:00", "2026-03-02T10:10:00"):
            a.clock.set(at)
            await asyncio.gather(a.sched.step(), b.sched.step())
            await asyncio.gather(a.sched.idle(), b.sched.idle())
        lines = out.read_text().split()
        assert len(lines) == 3 and len(set(lines)) == 3  # each tick once, whoever won it
        assert len(a.of(".started")) + len(b.of(".started")) == 3
        assert len(a.rows("once")) == 3
    finally:
        b.store.close()


async def test_then_hands_off_through_the_outbox_to_a_notifier_once(make: Any, http: HttpClient) -> None:
    async with FakeWebhook() as hook:
        extra = f'[notify.hook]\ntype = "webhook"\nurl = "{hook.hook_url}"\n'
        h = await make(
            '[schedule.digest]\ncron = "0 7 * * *"\ntimezone = "Europe/Berlin"\nthen = ["notify.hook"]\n',
            "2026-03-02T05:59:00",
            extra=extra,
        )
        dispatcher = Dispatcher(h.store, build_targets(h.loaded, http=http), clock=time.time)
        h.sched.wake_dispatcher = dispatcher.wake
        stop = asyncio.Event()
        task = asyncio.create_task(dispatcher.run(stop))
        try:
            await h.step("2026-03-02T06:00:00.010")  # 07:00 in Berlin
            for _ in range(200):
                if hook.deliveries:
                    break
                await asyncio.sleep(0.01)
            (got,) = hook.deliveries
            assert got["trigger"] == "schedule" and got["watch"] == "schedule:digest" and got["kind"] == "schedule"
            assert got["target"] == "notify.hook" and "tick 2026-03-02T06:00:00Z" in got["reason"]
            assert got["evidence"][0]["data"]["tick"] == "2026-03-02T06:00:00Z"
            (done,) = h.of("schedule.digest.done")
            assert done["summary"] == "handed off to notify.hook"
            # The same tick again (a second wake, a restart) hands off nothing new.
            h.restart()
            h.sched.wake_dispatcher = dispatcher.wake
            await h.sched.start()
            h.store.conn.execute("DELETE FROM schedule_ticks")  # even if its claim were lost …
            await h.sched.install(h.loaded)
            await h.step("2026-03-02T06:00:00.500")
            assert len(h.of("schedule.digest.started")) == 2  # … and the tick ran again,
            await asyncio.sleep(0.2)
            assert hook.handoff_ids == [got["id"]]  # its handoff is the same one, delivered once
        finally:
            stop.set()
            await task


async def test_a_failing_run_reports_its_exit_code_and_output_tail(make: Any) -> None:
    body = '[schedule.sync]\ncron = "0 * * * *"\nrun = ["sh", "-c", "echo copying; echo disk full >&2; exit 3"]\n'
    h = await make(body, "2026-03-02T09:59:59")
    await h.step("2026-03-02T10:00:00")
    (failed,) = h.of("schedule.sync.failed")
    assert failed["reason"] == "exit 3: disk full" and failed["output_tail"] == "copying\ndisk full"
    (job,) = h.of("job.sync.failed")
    assert job["exit_code"] == 3 and job["output_tail"] == "copying\ndisk full" and job["schedule"] == "sync"
    (row,) = h.rows("sync")
    assert row["state"] == "failed" and row["summary"] == "exit 3: disk full"
    assert json.loads(row["data"])["exit_code"] == 3


async def test_a_run_that_times_out_is_killed_and_fails(make: Any) -> None:
    h = await make(f'[schedule.slow]\ncron = "0 * * * *"\ntimeout = "300ms"\n{SLOW}\n', "2026-03-02T09:59:59")
    started = time.monotonic()
    await h.step("2026-03-02T10:00:00")
    assert time.monotonic() - started < 8
    (failed,) = h.of("schedule.slow.failed")
    assert failed["reason"].startswith("timed out after 300ms")


async def test_a_missing_builtin_job_or_program_fails_the_run_not_the_scheduler(make: Any) -> None:
    body = '[schedule.x]\ncron = "0 * * * *"\nrun = ["/nonexistent/prog"]\n'
    h = await make(body, "2026-03-02T09:59:59")
    await h.step("2026-03-02T10:00:00")
    assert h.of("x.failed")[0]["reason"] == "command not found: /nonexistent/prog"


async def test_jitter_delays_by_a_fixed_offset_and_keeps_the_tick_identity(make: Any) -> None:
    offset = jitter_offset("j", 600)
    assert 0 <= offset < 600 and offset == jitter_offset("j", 600) != jitter_offset("k", 600)
    h = await make(f'[schedule.j]\ncron = "0 * * * *"\njitter = "10m"\n{ECHO}\n', "2026-03-02T09:59:00")
    assert h.sched.next_wake() == pytest.approx(ts("2026-03-02T10:00:00") + offset)
    await h.step(iso(ts("2026-03-02T10:00:00") + offset - 1))
    assert h.events == []
    await h.step(iso(ts("2026-03-02T10:00:00") + offset))
    (started,) = h.of(".started")
    assert started["tick"] == "2026-03-02T10:00:00Z" and started["lateness_s"] == pytest.approx(0, abs=0.01)


async def test_a_tick_in_a_dst_gap_is_skipped_with_dst_gap_skip(make: Any) -> None:
    body = f'[schedule.early]\ncron = "30 2 * * *"\ntimezone = "Europe/Berlin"\ndst_gap = "skip"\n{ECHO}\n'
    h = await make(body, "2026-03-28T12:00:00")
    await h.step("2026-03-29T01:00:00")  # 03:00 CEST: 02:30 did not exist
    (skip,) = h.of(".skipped")
    assert skip["reason"] == "dst_gap" and "02:30 does not exist" in skip["detail"]
    assert h.of(".started") == []
    verdict = explain_from_db(h.loaded, "early", ts("2026-03-29T01:00:00")).verdict
    assert verdict.startswith("skipped the ") and "(dst_gap)" in verdict and "02:30 does not exist" in verdict
    assert h.sched.next_wake() == ts("2026-03-30T00:30:00")


async def test_a_changed_schedule_gets_a_new_version_and_new_tick_keys(make: Any, tmp_path: Path) -> None:
    h = await make(f'[schedule.v]\ncron = "0 * * * *"\n{ECHO}\n', "2026-03-02T09:59:59")
    await h.step("2026-03-02T10:00:00")
    assert h.sched.slots["v"].version == 1
    path = h.loaded.config_path
    assert path is not None
    path.write_text(path.read_text().replace('"0 * * * *"', '"30 * * * *"'))
    await h.sched.install(config.load(path))
    assert h.sched.slots["v"].version == 2 and h.sched.next_wake() == ts("2026-03-02T10:30:00")
    await h.step("2026-03-02T10:30:00")
    assert [r["version"] for r in h.rows("v")] == [1, 2]


async def test_a_reload_during_a_run_keeps_counting_from_its_end(make: Any) -> None:
    run = f'run = ["{sys.executable}", "-c", "import time; time.sleep(0.3)"]'
    h = await make(f'[schedule.e]\nevery = "10m"\n{run}\n', "2026-03-02T10:00:00")
    h.clock.set("2026-03-02T10:10:00")
    await h.sched.step()
    assert h.sched.next_wake() is None  # `every` waits for the end of the run under way
    path = h.loaded.config_path
    assert path is not None
    path.write_text(path.read_text().replace('every = "10m"', 'every = "10m"\ntimeout = "5m"'))
    await h.sched.install(config.load(path))
    assert h.sched.slots["e"].version == 2
    h.clock.set("2026-03-02T10:10:02")
    await h.sched.idle()
    assert h.sched.next_wake() == ts("2026-03-02T10:20:02")


async def test_default_schedules_ship_and_can_be_replaced_or_turned_off(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('state_dir = "s"\ntimezone = "Europe/Berlin"\n')
    assert sorted(config.effective_schedules(config.load(path).config)) == ["backup", "canary", "heartbeat"]
    path.write_text(
        'state_dir = "s"\n[schedule.backup]\nenabled = false\n[schedule.canary]\ncron = "0 5 * * *"\njob = "canary"\n'
    )
    got = config.effective_schedules(config.load(path).config)
    assert sorted(got) == ["canary", "heartbeat"] and got["canary"].cron == "0 5 * * *"


async def test_wall_timer_wakes_at_a_wall_clock_instant_or_on_an_event() -> None:
    timer = WallTimer()
    try:
        assert timer.exact  # Linux: a timerfd, no polling
        started = time.time()
        await timer.sleep_until(started + 0.05, asyncio.Event())
        assert 0.045 <= time.time() - started < 0.5
        wake = asyncio.Event()
        asyncio.get_running_loop().call_later(0.02, wake.set)
        started = time.time()
        await timer.sleep_until(started + 30, wake)
        assert time.time() - started < 1
        started = time.time()
        await timer.sleep_until(started - 5, asyncio.Event())  # already due: at once
        assert time.time() - started < 0.1
    finally:
        timer.close()


async def test_the_loop_sleeps_until_the_tick_and_runs_it_on_time(tmp_path: Path) -> None:
    at = datetime.fromtimestamp(time.time() + 0.4, UTC).isoformat()
    h = Harness(tmp_path / "loop", f'[schedule.soon]\nat = "{at}"\n{ECHO}\n', ManualClock("2026-01-01T00:00:00"))
    h.sched.clock = h.clock = time.time  # type: ignore[assignment]
    stop = asyncio.Event()
    task = asyncio.create_task(h.sched.run(stop))
    try:
        for _ in range(300):
            if h.of(".done"):
                break
            await asyncio.sleep(0.01)
        (started,) = h.of(".started")
        assert 0 <= started["lateness_s"] < 0.1
        assert h.sched.wakeups <= 4  # start, the tick, the run's end: no polling
    finally:
        stop.set()
        await task
        h.close()
