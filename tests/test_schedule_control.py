"""Scheduling control in the runner, on a real state file with a virtual clock and real processes:
retries with backoff and jitter, dead letters and their replay, run now, runs after another
schedule (the report → email pipeline), and the period every run's payload carries."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from support.clocks import ManualClock
from support.scheduling import ECHO, Harness, ts

from watchd import config
from watchd.cron.ticks import jitter_offset, retry_delay, tick_key
from watchd.errors import ConfigError, WatchdError
from watchd.explain.schedule import explain_from_db
from watchd.model import iso
from watchd.store import db_path


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


def flaky(flag: Path, tail: str = "") -> str:
    """A command that fails (exit 3, "no flag") until the test creates `flag`."""
    script = f'test -f {flag} || {{ echo "no flag"; exit 3; }}; echo ok {tail}'
    return json.dumps(["sh", "-c", script])


async def step_to(h: Harness, at: float) -> None:
    h.clock.t = at
    await h.sched.step()
    await h.sched.idle()


def row(h: Harness, name: str, key: str) -> dict[str, Any]:
    (r,) = [r for r in h.rows(name) if r["key"] == key]
    return r


async def test_a_failed_run_retries_with_doubling_jittered_backoff_then_becomes_a_dead_letter(
    make: Any, tmp_path: Path
) -> None:
    flag = tmp_path / "ok"
    body = f'[schedule.sync]\ncron = "0 * * * *"\nrun = {flaky(flag)}\nretries = 2\nretry_backoff = "1m"\n'
    h = await make(body, "2026-03-02T09:59:00")
    await h.step("2026-03-02T10:00:00")
    key = tick_key("sync", 1, ts("2026-03-02T10:00:00"))
    first = row(h, "sync", key)
    assert first["state"] == "retrying" and first["attempt"] == 1 and first["summary"] == "exit 3: no flag"
    wait_1 = first["next_attempt_at"] - first["ended_at"]
    assert 48 <= wait_1 <= 72  # 1m ± 20%
    (failed,) = h.of("schedule.sync.failed")
    assert failed["attempt"] == 1 and failed["retries"] == 2 and failed["retry_at"] == iso(first["next_attempt_at"])
    assert not h.of("job.sync.failed")  # not the job's outcome yet: it is tried again
    assert h.sched.next_wake() == first["next_attempt_at"]

    await step_to(h, first["next_attempt_at"])
    second = row(h, "sync", key)
    assert second["state"] == "retrying" and second["attempt"] == 2
    assert 96 <= second["next_attempt_at"] - second["ended_at"] <= 144  # doubled: 2m ± 20%

    await step_to(h, second["next_attempt_at"])
    dead = row(h, "sync", key)
    assert dead["state"] == "dead" and dead["attempt"] == 3 and dead["next_attempt_at"] is None
    assert [e["key"] for e in h.of("schedule.sync.failed")] == [key, key, key]
    (died,) = h.of("schedule.sync.dead")
    assert died["output_tail"] == "no flag" and died["attempt"] == 3 and died["retry_at"] is None
    (job,) = h.of("job.sync.failed")  # the outcome, once
    assert job["exit_code"] == 3
    report = explain_from_db(h.loaded, "sync", h.clock())
    assert "DEAD LETTER after 3 attempts" in report.verdict and key in report.verdict

    # Replayed (the job fixed), it runs again with the same key, from attempt 1.
    flag.write_text("")
    replayed = await h.sched.replay(key[:10])
    assert replayed.key == key
    await step_to(h, h.clock() + 0.001)
    done = row(h, "sync", key)
    assert done["state"] == "done" and done["attempt"] == 1 and len(h.rows("sync")) == 1
    assert h.of("schedule.sync.done")[-1]["key"] == key
    with pytest.raises(WatchdError, match="no dead scheduled run"):
        await h.sched.replay(key)


async def test_a_retry_that_succeeds_ends_the_run_done_and_a_restart_keeps_the_pending_retry(
    make: Any, tmp_path: Path
) -> None:
    flag = tmp_path / "ok"
    body = f'[schedule.sync]\ncron = "0 * * * *"\nrun = {flaky(flag)}\nretries = 3\nretry_backoff = "10m"\n'
    h = await make(body, "2026-03-02T09:59:00")
    await h.step("2026-03-02T10:00:00")
    key = tick_key("sync", 1, ts("2026-03-02T10:00:00"))
    due = row(h, "sync", key)["next_attempt_at"]
    h.restart()  # watchd restarts while the run waits for its next attempt
    await h.sched.start()
    assert h.sched.next_wake() == due
    flag.write_text("")
    await step_to(h, due)
    done = row(h, "sync", key)
    assert done["state"] == "done" and done["attempt"] == 2
    assert len(h.of("job.sync.done")) == 1 and not h.of("job.sync.failed") and not h.of(".dead")


async def test_without_retries_a_failure_is_final_and_no_dead_letter(make: Any) -> None:
    h = await make('[schedule.x]\ncron = "0 * * * *"\nrun = ["sh", "-c", "exit 1"]\n', "2026-03-02T09:59:00")
    await h.step("2026-03-02T10:00:00")
    (r,) = h.rows("x")
    assert r["state"] == "failed" and r["next_attempt_at"] is None and h.of("job.x.failed")


def test_retry_delay_bounds() -> None:
    assert retry_delay(60, 1, 0.0) == pytest.approx(48) and retry_delay(60, 1, 0.999) == pytest.approx(71.976)
    assert retry_delay(60, 3, 0.5) == pytest.approx(240)
    assert retry_delay(60, 50, 0.5) == pytest.approx(60 * 64)  # capped


async def test_run_now_runs_the_job_with_its_own_key_and_leaves_the_ticks_alone(make: Any) -> None:
    body = '[schedule.q]\ncron = "0 6 * * *"\nrun = ["sh", "-c", "echo $WATCHD_TRIGGER $WATCHD_PERIOD_START"]\n'
    h = await make(body, "2026-03-02T09:00:00")
    before = h.sched.next_wake()
    key, at = await h.sched.run_now("q", "cli:alice")
    await h.sched.idle()
    assert key != tick_key("q", 1, at) and at == ts("2026-03-02T09:00:00")
    (started,) = h.of("schedule.q.started")
    assert started["trigger"] == "manual" and started["by"] == "cli:alice" and started["key"] == key
    # A manual run covers the time since the last tick at or before it.
    assert started["period_start"] == "2026-03-02T06:00:00Z" and started["period_end"] == "2026-03-02T09:00:00Z"
    (done,) = h.of("schedule.q.done")
    assert done["output_tail"] == "manual 2026-03-02T06:00:00Z"
    (r,) = h.rows("q")
    assert r["trigger"] == "manual" and r["state"] == "done"
    assert h.sched.next_wake() == before  # the 06:00 ticks go on as planned
    await h.step("2026-03-03T06:00:00")
    assert [r["trigger"] for r in h.rows("q")] == ["manual", "schedule"]
    report = explain_from_db(h.loaded, "q", h.clock())
    assert "ran the" in report.verdict and "06:00" in report.verdict
    assert [t["trigger"] for t in report.timeline()] == ["manual", "schedule"]
    assert report.timeline()[0]["by"] == "cli:alice"
    with pytest.raises(WatchdError, match="no schedule named 'nope'"):
        await h.sched.run_now("nope", "cli:alice")


async def test_run_now_before_a_jittered_tick_does_not_swallow_it(make: Any) -> None:
    offset = jitter_offset("j", 600)
    assert offset > 5
    h = await make(f'[schedule.j]\ncron = "0 * * * *"\njitter = "10m"\n{ECHO}\n', "2026-03-02T09:59:00")
    h.clock.set("2026-03-02T10:00:01")  # the 10:00 tick runs `offset` later
    await h.sched.run_now("j", "cli:alice")
    await h.sched.idle()
    await step_to(h, ts("2026-03-02T10:00:00") + offset)
    assert [(r["trigger"], r["state"]) for r in h.rows("j")] == [("schedule", "done"), ("manual", "done")]


async def test_run_now_respects_overlap_forbid(make: Any) -> None:
    body = '[schedule.slow]\ncron = "0 * * * *"\nrun = ["sleep", "5"]\n'
    h = await make(body, "2026-03-02T09:59:59")
    h.clock.set("2026-03-02T10:00:00")
    await h.sched.step()
    with pytest.raises(WatchdError, match=r"still going \(overlap=forbid\)"):
        await h.sched.run_now("slow", "cli:alice")
    await h.sched.stop_runs("test over")


PIPELINE = """
[schedule.report]
cron = "0 6 * * *"
run = {report}
retries = {retries}
retry_backoff = "1m"

[schedule.email]
after = ["report"]
run = {email}
retries = 1
retry_backoff = "1m"
"""


async def test_report_then_email_waits_for_the_reports_retries_and_carries_its_key_and_period(
    make: Any, tmp_path: Path
) -> None:
    report_ok, email_ok = tmp_path / "report-ok", tmp_path / "email-ok"
    email = flaky(email_ok, "$WATCHD_UPSTREAM_KEY $WATCHD_PERIOD_START $WATCHD_PERIOD_END")
    h = await make(PIPELINE.format(report=flaky(report_ok), retries=2, email=email), "2026-03-02T05:59:00")
    await h.step("2026-03-02T06:00:00")
    report_key = tick_key("report", 1, ts("2026-03-02T06:00:00"))
    (waiting,) = h.rows("email")
    assert waiting["state"] == "waiting" and waiting["trigger"] == "after"
    assert waiting["summary"].startswith("waiting for report's retries: attempt 1 of 3 failed (exit 3: no flag)")
    (said,) = h.of("schedule.email.waiting")
    assert "attempt 1 of 3" in said["detail"]
    assert "waiting for report's retries" in explain_from_db(h.loaded, "email", h.clock()).verdict

    report_ok.write_text("")  # the report's second attempt succeeds: now the email runs
    await step_to(h, row(h, "report", report_key)["next_attempt_at"])
    assert row(h, "report", report_key)["state"] == "done"
    (email_row,) = h.rows("email")
    assert email_row["state"] == "retrying"  # the email fails its first attempt
    (started,) = h.of("schedule.email.started")
    assert started["trigger"] == "after" and started["upstream_key"] == report_key
    assert started["upstream"] == [{"schedule": "report", "key": report_key, "outcome": "done", "summary": "exit 0"}]
    assert started["period_start"] == "2026-03-01T06:00:00Z" and started["period_end"] == "2026-03-02T06:00:00Z"

    email_ok.write_text("")  # only the email retries; the report never runs again
    await step_to(h, email_row["next_attempt_at"])
    (email_row,) = h.rows("email")
    assert email_row["state"] == "done" and email_row["attempt"] == 2
    tail = h.of("schedule.email.done")[0]["output_tail"]
    assert tail == f"ok {report_key} 2026-03-01T06:00:00Z 2026-03-02T06:00:00Z"
    assert len(h.of("schedule.report.started")) == 2  # its two attempts, nothing after the email's failure


async def test_a_report_that_never_succeeds_gives_up_on_the_email_and_says_so(make: Any, tmp_path: Path) -> None:
    echo = json.dumps(["sh", "-c", "echo sent"])
    body = PIPELINE.format(report=flaky(tmp_path / "never"), retries=1, email=echo)
    body += f'\n[schedule.alarm]\nafter = ["report"]\non = "failure"\nrun = {echo}\n'
    h = await make(body, "2026-03-02T05:59:00")
    await h.step("2026-03-02T06:00:00")
    report_key = tick_key("report", 1, ts("2026-03-02T06:00:00"))
    await step_to(h, row(h, "report", report_key)["next_attempt_at"])
    assert row(h, "report", report_key)["state"] == "dead"
    (email,) = h.rows("email")
    assert email["state"] == "skipped" and email["reason"] == "upstream"
    assert email["summary"] == (
        f"not run (on = success): report failed after 2 attempts (exit 3: no flag); dead letter {report_key}"
    )
    (skipped,) = h.of("schedule.email.skipped")
    assert skipped["reason"] == "upstream" and skipped["upstream"][0]["outcome"] == "dead"
    (alarm,) = h.rows("alarm")
    assert alarm["state"] == "done"  # on = "failure" runs when the report gave up
    assert not h.of("schedule.email.started")

    # The report, replayed once fixed, succeeds: the email it gave up on runs now, once.
    (tmp_path / "never").write_text("")
    await h.sched.replay(report_key)
    await step_to(h, h.clock() + 0.001)
    (email,) = h.rows("email")
    assert email["state"] == "done"
    (alarm,) = h.rows("alarm")
    assert alarm["state"] == "done" and len(h.of("schedule.alarm.started")) == 1


async def test_periods_of_every_and_coalesced_cron_runs(make: Any) -> None:
    echo = json.dumps(["sh", "-c", "true"])
    body = (
        f'[schedule.e]\nevery = "5m"\nrun = {echo}\n'
        f'[schedule.c]\ncron = "0 * * * *"\nmissed = "coalesce"\nrun = {echo}\n'
    )
    h = await make(body, "2026-03-02T09:59:00")
    await h.step("2026-03-02T10:00:00")
    (c,) = h.of("schedule.c.started")
    assert (c["period_start"], c["period_end"]) == ("2026-03-02T09:00:00Z", "2026-03-02T10:00:00Z")
    await h.step("2026-03-02T13:30:00")  # asleep for 3 hours: one coalesced run covers them all
    c = h.of("schedule.c.started")[-1]
    assert c["backfill_from"] == "2026-03-02T11:00:00Z"
    assert (c["period_start"], c["period_end"]) == ("2026-03-02T10:00:00Z", "2026-03-02T13:00:00Z")
    e = h.of("schedule.e.started")[0]
    assert e["period_end"] == e["tick"]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (
            '[schedule.a]\nafter = ["b"]\nrun = ["x"]\n[schedule.b]\nafter = ["a"]\nrun = ["x"]\n',
            "in a cycle: a → b → a",
        ),
        ('[schedule.a]\nafter = ["a"]\nrun = ["x"]\n', "cannot run after itself"),
        ('[schedule.a]\nafter = ["nope"]\nrun = ["x"]\n', "unknown schedule 'nope' in after"),
        ('[schedule.a]\nafter = ["backup"]\ncron = "0 * * * *"\nrun = ["x"]\n', "`after` replaces cron"),
        ('[schedule.a]\nafter = ["heartbeat"]\nrun = ["x"]\n', "schedule 'heartbeat' is disabled"),
        ('[schedule.a]\nevery = "5m"\nrun = ["x"]\nretry_backoff = "soon"\n', "invalid duration 'soon'"),
        ('[schedule.a]\nevery = "5m"\nrun = ["x"]\nretries = -1\n', "retries"),
    ],
)
def test_schedule_control_validation(tmp_path: Path, body: str, problem: str) -> None:
    path = tmp_path / "config.toml"
    off = "[schedule.heartbeat]\nenabled = false\n"
    path.write_text(f'state_dir = "state"\ntimezone = "UTC"\n{off}{body}')
    with pytest.raises(ConfigError) as exc:
        config.load(path)
    assert any(problem in p for p in exc.value.problems), exc.value.problems


def test_schedules_and_explain_show_the_chain(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from watchd.cli import cli

    path = tmp_path / "config.toml"
    path.write_text(
        'state_dir = "state"\ntimezone = "UTC"\n[schedule.heartbeat]\nenabled = false\n'
        "[schedule.backup]\nenabled = false\n[schedule.canary]\nenabled = false\n"
        '[schedule.report]\ncron = "0 6 * * *"\nrun = ["true"]\nretries = 2\n'
        '[schedule.email]\nafter = ["report"]\nrun = ["true"]\n'
        '[schedule.archive]\nafter = ["email"]\non = "always"\nrun = ["true"]\n'
    )

    def invoke(*args: str) -> str:
        result = CliRunner().invoke(cli, [*args, "--config", str(path)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    ticks = json.loads(invoke("schedules", "--from", "2026-03-02T00:00Z", "--next", "1", "--json"))
    assert ticks == [
        {"schedule": s, "at_utc": "2026-03-02T06:00:00Z", "at_local": "2026-03-02T06:00:00Z", "note": n}
        for s, n in [
            ("archive", "after email (on always) after report (on success)"),
            ("email", "after report (on success)"),
            ("report", None),
        ]
    ]
    report = invoke("explain", "--schedule", "report")
    assert "followed by: email (on success)" in report and "retries: 2, backoff 1m" in report
    email = json.loads(invoke("explain", "--schedule", "email", "--json"))
    assert email["timing"] == "after report (on success)" and email["after"] == ["report"]
    assert email["followed_by"] == ["archive (on always)"] and email["next_due"] is None


async def test_a_run_cut_off_by_a_restart_with_retries_left_runs_again_with_its_key(make: Any, tmp_path: Path) -> None:
    from watchd.store.schedules import TickClaim, claim

    body = f'[schedule.sync]\ncron = "0 * * * *"\n{ECHO}\nretries = 1\n'
    h = await make(body, "2026-03-02T10:00:30")
    tick = ts("2026-03-02T10:00:00")
    key = tick_key("sync", 1, tick)
    h.store.conn.execute("DELETE FROM schedule_ticks")
    claim(h.store.conn, [TickClaim(key, "sync", 1, tick, "started", None, tick, None, None)])  # watchd died here
    h.restart()
    await h.sched.start()
    (failed,) = h.of("schedule.sync.failed")
    assert failed["reason"] == "interrupted by restart" and failed["retry_at"] == "2026-03-02T10:00:30Z"
    await h.step("2026-03-02T10:00:31")
    (r,) = h.rows("sync")
    assert r["key"] == key and r["state"] == "done" and r["attempt"] == 2


def test_a_state_file_from_before_runs_had_triggers_is_still_explained(tmp_path: Path) -> None:
    import sqlite3

    from watchd.explain.schedule import upcoming_ticks

    path = tmp_path / "config.toml"
    path.write_text('state_dir = "state"\ntimezone = "UTC"\n[schedule.q]\ncron = "0 6 * * *"\nrun = ["true"]\n')
    loaded = config.load(path)
    loaded.state_dir.mkdir()
    conn = sqlite3.connect(db_path(loaded.state_dir))
    conn.executescript(  # the tables as they were
        "CREATE TABLE schedules (name TEXT PRIMARY KEY, digest TEXT NOT NULL, version INTEGER NOT NULL,"
        " since REAL NOT NULL, completed_at REAL);"
        "CREATE TABLE schedule_ticks (key TEXT PRIMARY KEY, schedule TEXT NOT NULL, version INTEGER NOT NULL,"
        " tick_at REAL NOT NULL, state TEXT NOT NULL, reason TEXT, started_at REAL, ended_at REAL, summary TEXT,"
        " data TEXT);"
    )
    t = ts("2026-03-02T06:00:00")
    conn.execute("INSERT INTO schedules VALUES ('q', 'x', 1, ?, ?)", (t - 86400, t + 1))
    row = ("k", "q", 1, t, "done", None, t, t + 1, "exit 0", "{}")
    conn.execute("INSERT INTO schedule_ticks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
    conn.commit()
    conn.close()
    report = explain_from_db(loaded, "q", t + 60)
    assert report.verdict.startswith("ran the 06:00") and report.timeline()[0]["trigger"] == "schedule"
    ticks, _ = upcoming_ticks(loaded, t + 60, 1)
    assert [x["at_utc"] for x in ticks if x["schedule"] == "q"] == ["2026-03-03T06:00:00Z"]


async def test_after_two_schedules_runs_once_both_ended_for_the_tick(make: Any) -> None:
    body = (
        f'[schedule.a]\ncron = "0 6 * * *"\n{ECHO}\n'
        '[schedule.b]\ncron = "0 6 * * *"\nrun = ["sh", "-c", "sleep 0.5; exit 2"]\n'
        f'[schedule.both]\nafter = ["a", "b"]\n{ECHO}\n'
        f'[schedule.any]\nafter = ["a", "b"]\non = "failure"\n{ECHO}\n'
    )
    h = await make(body, "2026-03-02T05:59:00")
    h.clock.set("2026-03-02T06:00:00")
    await h.sched.step()
    while not h.of("schedule.a.done"):
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    (waiting,) = h.rows("both")
    assert waiting["state"] == "waiting" and waiting["summary"] == "waiting for b's run (started)"
    await h.sched.idle()
    (both,) = h.rows("both")
    assert both["state"] == "skipped" and both["summary"] == "not run (on = success): b failed (exit 2: no output)"
    (any_,) = h.rows("any")
    assert any_["state"] == "done"
    (started,) = h.of("schedule.any.started")
    assert [u["schedule"] for u in started["upstream"]] == ["a", "b"]


async def test_a_schedule_after_another_follows_its_run_now(make: Any) -> None:
    body = f'[schedule.report]\ncron = "0 6 * * *"\n{ECHO}\n[schedule.email]\nafter = ["report"]\n{ECHO}\n'
    body += '[schedule.off]\ncron = "0 6 * * *"\nrun = ["true"]\nenabled = false\n'
    h = await make(body, "2026-03-02T09:00:00")
    key, _ = await h.sched.run_now("report", "cli:alice")
    await h.sched.idle()
    (started,) = h.of("schedule.email.started")
    assert started["upstream_key"] == key and started["trigger"] == "after"
    assert (started["period_start"], started["period_end"]) == ("2026-03-02T06:00:00Z", "2026-03-02T09:00:00Z")
    with pytest.raises(WatchdError, match="is disabled"):
        await h.sched.run_now("off", "cli:alice")


async def test_run_then_with_retries_hands_off_the_outcome_once(make: Any, tmp_path: Path) -> None:
    flag = tmp_path / "ok"
    body = f'[schedule.sync]\ncron = "0 * * * *"\nrun = {flaky(flag)}\nretries = 1\nthen = ["notify.console"]\n'
    h = await make(body, "2026-03-02T09:59:00")
    await h.step("2026-03-02T10:00:00")
    handoffs = "SELECT reason FROM handoffs WHERE watch = 'schedule:sync'"
    assert h.store.conn.execute(handoffs).fetchall() == []  # attempt 1 failed; it is tried again
    flag.write_text("")
    key = tick_key("sync", 1, ts("2026-03-02T10:00:00"))
    await step_to(h, row(h, "sync", key)["next_attempt_at"])
    ((reason,),) = h.store.conn.execute(handoffs).fetchall()
    assert reason.endswith("done: exit 0")


async def test_a_reload_keeps_a_pending_retry_and_a_schedule_it_adds_after_another_follows(
    make: Any, tmp_path: Path
) -> None:
    # The runner indexes the schedules with retries pending and each schedule's downstreams: a
    # reload builds them again from the new schedules, the pending retry carried over.
    flag = tmp_path / "ok"
    body = f'[schedule.sync]\ncron = "0 * * * *"\nrun = {flaky(flag)}\nretries = 1\nretry_backoff = "1m"\n'
    h = await make(body, "2026-03-02T09:59:00")
    await h.step("2026-03-02T10:00:00")
    key = tick_key("sync", 1, ts("2026-03-02T10:00:00"))
    due = row(h, "sync", key)["next_attempt_at"]
    path = h.loaded.config_path
    assert path is not None
    path.write_text(path.read_text() + f'[schedule.mail]\nafter = ["sync"]\n{ECHO}\n')
    await h.sched.install(config.load(path))
    assert h.sched.next_wake() == due and h.sched.slots["sync"].version == 1
    flag.write_text("")
    await step_to(h, due)
    assert row(h, "sync", key)["state"] == "done"
    await h.sched.idle()
    (ran,) = h.rows("mail")
    assert ran["state"] == "done" and ran["tick_at"] == ts("2026-03-02T10:00:00")
    assert h.sched.next_wake() == ts("2026-03-02T11:00:00")
