"""`watchd schedules`, `watchd explain --schedule`, the schedules in `status`, and schedule validation."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from support.cli import run_cli
from support.clocks import ManualClock
from support.scheduling import ECHO, OFF, Harness, ts

from watchd import config
from watchd.cli import cli
from watchd.errors import ConfigError
from watchd.explain.schedule import explain_from_db


def invoke(*args: str) -> Any:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def write(tmp_path: Path, body: str, zone: str = "Europe/Berlin") -> str:
    path = tmp_path / "config.toml"
    path.write_text(f'state_dir = "state"\ntimezone = "{zone}"\n{OFF}{body}')
    return str(path)


def test_schedules_json_from_across_the_spring_forward_night(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        '[schedule.early]\ncron = "30 2 * * *"\nrun = ["true"]\n'
        '[schedule.hourly]\ncron = "0 * * * *"\nrun = ["true"]\n',
    )
    ticks = json.loads(invoke("schedules", "--config", cfg, "--from", "2026-03-29T00:30", "--next", "3", "--json"))
    assert ticks == [
        {"schedule": "hourly", "at_utc": "2026-03-29T00:00:00Z", "at_local": "2026-03-29T01:00:00+01:00", "note": None},
        # 02:00 does not exist; an hourly job follows real time, as Debian cron does: 01:00 then 03:00
        {
            "schedule": "early",
            "at_utc": "2026-03-29T01:00:00Z",
            "at_local": "2026-03-29T03:00:00+02:00",
            "note": "dst_gap: 02:30 does not exist on 2026-03-29 in Europe/Berlin; runs at 03:00 (shifted)",
        },
        {"schedule": "hourly", "at_utc": "2026-03-29T01:00:00Z", "at_local": "2026-03-29T03:00:00+02:00", "note": None},
        {"schedule": "hourly", "at_utc": "2026-03-29T02:00:00Z", "at_local": "2026-03-29T04:00:00+02:00", "note": None},
        {"schedule": "early", "at_utc": "2026-03-30T00:30:00Z", "at_local": "2026-03-30T02:30:00+02:00", "note": None},
        {"schedule": "early", "at_utc": "2026-03-31T00:30:00Z", "at_local": "2026-03-31T02:30:00+02:00", "note": None},
    ]


def test_schedules_json_from_across_the_fall_back_night(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        '[schedule.early]\ncron = "30 2 * * *"\nrun = ["true"]\n'
        '[schedule.hourly]\ncron = "0 * * * *"\nrun = ["true"]\n',
    )
    ticks = json.loads(invoke("schedules", "--config", cfg, "--from", "2026-10-24T23:30Z", "--next", "3", "--json"))
    fold = "dst_fold: {} occurs twice on 2026-10-25 in Europe/Berlin; runs at "
    assert [(t["schedule"], t["at_utc"], t["at_local"], t["note"]) for t in ticks[:4]] == [
        # 02:00 happens twice: the hourly job follows real time and runs at both …
        (
            "hourly",
            "2026-10-25T00:00:00Z",
            "2026-10-25T02:00:00+02:00",
            fold.format("02:00") + "both (real time): first occurrence",
        ),
        # … the fixed-time one runs once, at the first 02:30
        ("early", "2026-10-25T00:30:00Z", "2026-10-25T02:30:00+02:00", fold.format("02:30") + "the first occurrence"),
        (
            "hourly",
            "2026-10-25T01:00:00Z",
            "2026-10-25T02:00:00+01:00",
            fold.format("02:00") + "both (real time): second occurrence",
        ),
        ("hourly", "2026-10-25T02:00:00Z", "2026-10-25T03:00:00+01:00", None),
    ]
    assert [t["at_utc"] for t in ticks if t["schedule"] == "early"][1] == "2026-10-26T01:30:00Z"


def test_schedules_text_shows_local_and_utc_and_the_last_runs(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        'timezone = "Europe/Berlin"\n[schedule.backup]\ncron = "30 2 * * *"\njob = "backup"\n'
        'enabled = false\n[schedule.canary]\nenabled = false\n[schedule.sync]\nevery = "2h"\n'
        'run = ["true"]\n'
    )
    cfg = str(path)
    text = invoke("schedules", "--config", cfg, "--from", "2026-03-28T12:00", "--next", "2")
    assert "Sat 2026-03-28 14:00 CET  Sat 13:00" in text  # local, and the UTC weekday and time
    assert "disabled: backup, canary" in text and "heartbeat" in text


async def test_explain_schedule_json_and_text(tmp_path: Path) -> None:
    body = f'[schedule.q]\ncron = "0 */6 * * *"\nmissed = "skip"\n{ECHO}\n'
    h = Harness(tmp_path, body, ManualClock("2026-03-02T05:59:00"))
    try:
        await h.sched.start()
        await h.step("2026-03-02T06:00:00")
        await h.step("2026-03-05T11:00:00")  # 12 ticks missed while down, one verdict
    finally:
        h.close()
    cfg = str(h.loaded.config_path)
    report = explain_from_db(h.loaded, "q", ts("2026-03-05T11:00:00")).to_json()
    assert report["schedule"] == "q" and report["fired"] is False and report["version"] == 1
    assert report["verdict"].startswith("skipped the 06:00 UTC tick (missed): missed: 5h late")
    assert [(t["state"], t["reason"]) for t in report["timeline"]][:2] == [("done", None), ("skipped", "missed")]
    assert len(report["timeline"]) == 13 and report["timeline"][0]["lateness_s"] == 0
    assert report["next_due"] == "2026-03-05T12:00:00Z"
    as_now = json.loads(invoke("explain", "--schedule", "q", "--config", cfg, "--json"))
    assert as_now["fired"] is False and as_now["verdict"].startswith("no record of the ")  # watchd is not running
    assert "overdue by" in as_now["verdict"] and as_now["timeline"] == report["timeline"]
    text = invoke("explain", "--schedule", "q", "--config", cfg)
    assert "skipped (missed) ×12" in text and text.count("\n") < 10  # twelve skips are one line


async def test_status_json_has_the_schedules(tmp_path: Path) -> None:
    h = Harness(tmp_path, f'[schedule.q]\ncron = "0 * * * *"\n{ECHO}\n', ManualClock("2026-03-02T09:59:00"))
    try:
        await h.sched.start()
        await h.step("2026-03-02T10:00:00")
    finally:
        h.close()
    report = json.loads(invoke("status", "--config", str(h.loaded.config_path), "--json"))
    (q,) = [s for s in report["schedules"] if s["name"] == "q"]
    assert q == {
        "name": "q",
        "timing": "cron '0 * * * *'",
        "does": f"run {sys.executable}",
        "enabled": True,
        "next_due": "2026-03-02T11:00:00Z",
        "last_tick": "2026-03-02T10:00:00Z",
        "last_outcome": "done",
        "last_summary": "exit 0",
    }
    assert {s["name"]: s["enabled"] for s in report["schedules"]}["backup"] is False


def test_bad_from_and_unknown_schedule_are_one_line_errors(tmp_path: Path) -> None:
    cfg = write(tmp_path, "")
    for args, first, hint in [
        (["schedules", "--from", "yesterday"], "error: bad --from 'yesterday'", "hint: use a date-time"),
        (["explain", "--schedule", "nope"], "error: no schedule named 'nope'", "hint: known schedules: backup"),
        (["explain", "x", "--schedule", "backup"], "error: --schedule takes no WATCH", "hint: e.g."),
    ]:
        r = run_cli(*args, "--config", cfg)
        lines = r.stderr.splitlines()
        assert r.returncode == 1 and lines[0].startswith(first) and lines[1].startswith(hint), r.stderr


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ('[schedule."Bad Name"]\nevery = "5m"\nrun = ["x"]\n', "schedule name 'Bad Name' must match"),
        ('[schedule.s]\nevery = "5m"\nthen = ["notify.nope"]\n', "unknown target 'notify.nope'"),
        ('[schedule.s]\nevery = "0s"\nrun = ["x"]\n', "`every` must be at least 1s, not '0s'"),
        ('[schedule.s]\nevery = "1ms"\nrun = ["x"]\n', "`every` must be at least 1s, not '1ms'"),
        ('[schedule.s]\nat = "next tuesday"\nrun = ["x"]\n', "invalid at time 'next tuesday'"),
        ('[schedule.s]\nevery = "5m"\nrun = []\n', "`run` needs at least the program"),
    ],
)
def test_schedule_validation(tmp_path: Path, body: str, problem: str) -> None:
    with pytest.raises(ConfigError) as exc:
        config.load(Path(write(tmp_path, body)))
    assert any(problem in p for p in exc.value.problems), exc.value.problems


def test_enabled_false_alone_turns_a_default_off(tmp_path: Path) -> None:
    loaded = config.load(Path(write(tmp_path, "")))
    assert config.effective_schedules(loaded.config) == {}
