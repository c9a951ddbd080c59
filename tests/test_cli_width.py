"""What the read commands print fits an 80-column terminal: every table line is at most 80
characters and no id, key or time in it is broken over two lines; `status` tells its times in the
configured zone, or UTC with --utc, and --json stays UTC."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from support.cli import run_cli
from support.inprocess import InProcessDaemon
from support.waiting import until
from test_backtest import write_project

from watchd.model import make_event
from watchd.status import table_time
from watchd.store.runs import close_run, new_run

WIDTH = 80
PROSE = ("nightly-database-backup-finished: snoozed", "last backup:", "canary:")  # status's sentences

WATCHES = {
    "w.toml": """
[[watch]]
id = "nightly-database-backup-finished"
kind = "match"
on = { subject = "backup.done", key = "data.host" }
repeat = "1h"
then = ["notify.console"]

[[watch]]
id = "customer-invoices-overdue"
kind = "absent"
expect = { subject = "invoice.paid" }
for = "36h"
then = ["notify.console"]
""",
}

SCHEDULE = """
[schedule.weekly-report-for-the-whole-team]
cron = "30 7 * * MON"
run = ["true"]
"""


def fits(text: str, *whole: str, prose: tuple[str, ...] = ()) -> None:
    """No line wider than the terminal, but sentences (lines starting with `prose`, which a terminal
    wraps as text); and each of `whole` unbroken on one line."""
    wide = [line for line in text.splitlines() if len(line) > WIDTH and not line.startswith(prose)]
    assert not wide, "\n".join(wide)
    for value in whole:
        assert any(value in line for line in text.splitlines()), f"{value!r} is broken or missing:\n{text}"


async def prepared(daemon_factory: Callable[..., InProcessDaemon]) -> InProcessDaemon:
    d = daemon_factory(WATCHES, extra_config=SCHEDULE.replace("[schedule", "\n[schedule"))
    await d.start()
    await d.publish(make_event("backup.done", {"host": "db-primary.eu-central.example.com"}))
    await until(lambda: d.handoffs("nightly-database-backup-finished"), what="the fire")
    code, _, err = await d.cli("snooze", "nightly-database-backup-finished", "2h")
    assert code == 0, err
    return d


async def test_status_fits_80_columns_with_times_in_the_configured_zone(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = await prepared(daemon_factory)
    text = d.config_path.read_text().replace('timezone = "UTC"', 'timezone = "Asia/Kolkata"')  # +05:30, no DST
    d.config_path.write_text(text)
    report = json.loads((await d.cli("status", "--json")).stdout)
    watch = next(w for w in report["watches"] if w["id"] == "nightly-database-backup-finished")
    assert watch["last_fired"].endswith("Z")  # --json: always UTC

    shown = (await d.cli("status")).stdout
    assert shown.startswith("times in Asia/Kolkata (--utc for UTC)\n")
    fired = datetime.fromisoformat(watch["last_fired"].replace("Z", "+00:00"))
    local = fired.astimezone(ZoneInfo("Asia/Kolkata"))  # +05:30: never the UTC wall time
    fits(shown, "nightly-database-backup-finished", "customer-invoices-overdue", prose=PROSE)
    row = next(line for line in shown.splitlines() if line.startswith("nightly-database-backup-finished "))
    assert f"{local:%H:%M:%S}" in row and f"{fired:%H:%M:%S}" not in row, row
    assert "ok, 1 open" in row  # the open incident
    until = datetime.fromisoformat(watch["holds"][0]["until"].replace("Z", "+00:00")).astimezone(local.tzinfo)
    assert f"until {until:%Y-%m-%d %H:%M:%S} Asia/Kolkata" in shown, shown  # the snooze, in words, in the zone

    utc = (await d.cli("status", "--utc")).stdout
    assert utc.startswith("times in UTC\n")
    fits(utc, "nightly-database-backup-finished", prose=PROSE)
    row = next(line for line in utc.splitlines() if line.startswith("nightly-database-backup-finished "))
    assert f"{fired:%H:%M:%S}" in row and f"{local:%H:%M:%S}" not in row, row
    assert "Asia/Kolkata" not in utc and " UTC" in utc.split("snoozed by ", 1)[1].splitlines()[0]  # the snooze too


async def test_handoffs_schedules_runs_and_explain_fit_80_columns(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = await prepared(daemon_factory)
    hid = d.handoffs("nightly-database-backup-finished")[0]["id"]
    conn = sqlite3.connect(d.db_path)
    try:
        run = new_run(conn, hid, "agent.database-janitor", "claude-sonnet-4-5", 1_795_000_000.0)
        conn.execute(
            "UPDATE agent_runs SET steps = 12, input_tokens = 1234567, output_tokens = 234567, "
            "cache_read_tokens = 3456789, cache_write_tokens = 45678, cost_usd = 12.3456 WHERE id = ?",
            (run.id,),
        )
        close_run(conn, run.id, 1_795_000_100.0, "done", "cleaned up")
        conn.commit()
    finally:
        conn.close()

    # handoffs are two lines each, not a table: a long watch id and key are never cut, only wrapped
    handoffs = (await d.cli("handoffs")).stdout
    all_prose = tuple(handoffs.splitlines())
    fits(handoffs, "nightly-database-backup-finished [db-primary.eu-central.example.com]", prose=all_prose)
    assert handoffs.splitlines()[2] == "    backup.done matched"
    schedules = (await d.cli("schedules")).stdout
    fits(schedules, "weekly-report-for-the-whole-team", "Mon 2026-12-07 07:30 UTC  Mon 07:30")
    runs = (await d.cli("runs")).stdout
    fits(runs, "agent.database-janitor  claude-sonnet-4-5  done  12 steps")
    assert f"    {hid}  $12.3456  1.23M in 234.6k out 3.46M/45.7k cache" in runs.splitlines()
    explain = (await d.cli("explain", "nightly-database-backup-finished")).stdout
    timeline = explain.split("\ntimeline:\n", 1)[1]  # the verdict above is prose, wrapped by the terminal
    fits(timeline, hid, "db-primary.eu-central.example.com")


def test_the_backtest_summary_fits_80_columns(tmp_path: Path) -> None:
    events = [
        {"subject": "backup.done", "time": f"2026-11-22T0{h}:00:00Z", "data": {"host": f"db-{h}.example.com"}}
        for h in range(1, 6)
    ]
    write_project(tmp_path, WATCHES["w.toml"], events, zone="Europe/Berlin")
    args = ("test", str(tmp_path / "w.toml"), "--events", str(tmp_path / "events.jsonl"))
    code, out, err = run_cli(*args, "--config", str(tmp_path / "config.toml"))
    assert code == 0, err
    # eight columns: a long watch id folds onto a second line (never cut), the counts and times stay whole
    fits(out, "11-22 02:00  11-22 06:00", prose=("backtest of ",))
    row = next(line for line in out.splitlines() if line.startswith("nightly-database-"))
    assert re.search(r"\slive\s+15\s+11-22 02:00\s+11-22 06:00\s+5\s+5\s+0", row), row


def test_a_table_time_is_short_in_the_zone_and_never_fails() -> None:
    now = datetime(2026, 12, 2, 12, 0, tzinfo=ZoneInfo("UTC")).timestamp()
    assert table_time("2026-12-02T14:31:24.655Z", "Asia/Kolkata", now) == "20:01:24"  # today there
    assert table_time("2026-12-02T20:00:00Z", "Asia/Kolkata", now) == "Dec 03 01:30"  # tomorrow there
    assert table_time(None, "UTC", now) == "-"
    assert table_time("soon", "UTC", now) == "soon"
