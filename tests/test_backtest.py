"""`watchd test FILE`: backtesting watch definitions over a JSONL file or the recorded stream.

Scenarios for each watch kind with the exact fires expected; bad lines; invalid definitions; the
JSON shape. Then the point of the feature — agreement: the backtest predicts exactly the fires of
an engine driven by the daemon's own loop (property-based), and of the real daemon (end to end, in the
test's event loop, on wall-clock time: the backtest reads the stream's own timestamps).
"""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.cli import run_cli
from support.inprocess import InProcessDaemon
from support.waiting import until

from watchd import config
from watchd.daemon import FETCH_BATCH, MAX_IDLE_WAIT_S
from watchd.engine import Engine, EventInput, Outputs, Tick
from watchd.explain.backtest import replay_events
from watchd.model import Event, make_event

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
FALL_BACK = datetime(2026, 10, 25, 0, 0, tzinfo=UTC)  # 02:00 CEST; at 01:00 UTC clocks go back to 02:00 CET


def at(t: datetime, minutes: float = 0) -> str:
    return (t + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def ev(subject: str, t: datetime, minutes: float = 0, **data: Any) -> dict[str, Any]:
    return {"subject": subject, "time": at(t, minutes), "data": data}


def write_project(root: Path, watches: str, events: list[dict[str, Any] | str], zone: str = "UTC") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.toml").write_text(f'timezone = "{zone}"\nstate_dir = "state"\n[nats]\nlisten = "127.0.0.1:1"\n')
    (root / "w.toml").write_text(watches)
    lines = [e if isinstance(e, str) else json.dumps(e) for e in events]
    (root / "events.jsonl").write_text("\n".join(lines) + "\n")
    return root


def backtest_json(root: Path) -> dict[str, Any]:
    args = ["test", str(root / "w.toml"), "--events", str(root / "events.jsonl"), "--json"]
    code, out, err = run_cli(*args, "--config", str(root / "config.toml"))
    assert code == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


def fires_of(report: dict[str, Any], watch: str | None = None) -> list[tuple[str, str, str | None]]:
    return [(f["at"], f["watch"], f["key"]) for f in report["fires"] if watch is None or f["watch"] == watch]


# ---- scenarios, one per kind -------------------------------------------------------------------

MATCH = """
[[watch]]
id = "urgent"
kind = "match"
on = { subject = "mail.received", where = 'data.urgent == true' }
then = ["notify.console"]

[[watch]]
id = "urgent-quiet"
kind = "match"
on = { subject = "mail.received", where = 'data.urgent == true', key = "data.from" }
cooldown = "10m"
then = ["notify.console"]

[[watch]]
id = "urgent-shadow"
kind = "match"
on = { subject = "mail.received", where = 'data.urgent == true', key = "data.from" }
mode = "shadow"
"""


def test_match_with_where_and_cooldown(tmp_path: Path) -> None:
    events: list[dict[str, Any] | str] = [
        ev("mail.received", T0, 0, urgent=True, **{"from": "ceo"}),
        ev("mail.received", T0, 1, urgent=False, **{"from": "ceo"}),  # where false: a miss
        ev("mail.received", T0, 2, **{"from": "ceo"}),  # no `urgent`: the where errors, a miss
        ev("mail.other", T0, 3, urgent=True),  # another subject: not even a candidate
        ev("mail.received", T0, 4, urgent=True, **{"from": "ceo"}),  # fires; the cooldown suppresses urgent-quiet
        ev("mail.received", T0, 15, urgent=True, **{"from": "ceo"}),  # all fire: the cooldown is over
    ]
    report = backtest_json(write_project(tmp_path, MATCH, events))
    assert fires_of(report, "urgent") == [
        (at(T0, 0), "urgent", None),
        (at(T0, 4), "urgent", None),
        (at(T0, 15), "urgent", None),
    ]
    assert fires_of(report, "urgent-quiet") == [(at(T0, 0), "urgent-quiet", "ceo"), (at(T0, 15), "urgent-quiet", "ceo")]
    assert [f[0] for f in fires_of(report, "urgent-shadow")] == [at(T0, 0), at(T0, 4), at(T0, 15)]
    assert report["totals"] == {
        "urgent": {"fires": 3, "events": 3, "misses": 2},
        "urgent-quiet": {"fires": 2, "events": 3, "misses": 2},  # a suppressed match is an event, not a fire
        "urgent-shadow": {"fires": 3, "events": 3, "misses": 2},  # shadow counts as would-fire
    }
    assert report["fires"][0]["reason"] == "mail.received matched where data.urgent == true"
    assert {f["mode"] for f in report["fires"] if f["watch"] == "urgent-shadow"} == {"shadow"}


COUNT = """
[[watch]]
id = "login-storm"
kind = "match"
on = { subject = "auth.failed", key = "data.user" }
count = 3
window = "10m"
then = ["notify.console"]
"""


def test_count_in_window_per_key(tmp_path: Path) -> None:
    minutes = {"bob": [0, 1, 2, 5, 20, 21, 29], "alice": [3, 8, 15, 30]}
    failures = [ev("auth.failed", T0, m, user=u) for u, ms in minutes.items() for m in ms]
    failures.sort(key=lambda e: str(e["time"]))
    events: list[dict[str, Any] | str] = list(failures)
    report = backtest_json(write_project(tmp_path, COUNT, events))
    # bob: 0,1,2 → fire (the count starts again); 5 alone; 20,21,29 inside 10m → fire.
    # alice: 3,8 then 15 (3 has left the window), 30 (8 and 15 have too): never three in 10m.
    assert fires_of(report) == [(at(T0, 2), "login-storm", "bob"), (at(T0, 29), "login-storm", "bob")]
    assert report["fires"][0]["reason"] == "3 × auth.failed within 10m"
    assert report["totals"]["login-storm"] == {"fires": 2, "events": 11, "misses": 0}


ABSENT = """
[[watch]]
id = "alive"
kind = "absent"
expect = { subject = "hb.*", key = "data.host" }
for = "15m"
recover = true
then = ["notify.console"]
"""


def test_absent_per_key_with_recover(tmp_path: Path) -> None:
    events: list[dict[str, Any] | str] = [
        ev("hb.ping", T0, 0, host="a"),
        ev("hb.ping", T0, 0, host="b"),
        ev("hb.ping", T0, 10, host="a"),
        ev("hb.ping", T0, 20, host="a"),
        ev("hb.ping", T0, 40, host="b"),  # b was silent since 0: fired at 15, recovers now
        ev("hb.ping", T0, 50, host="a"),  # a silent since 20: fired at 35, recovers now
        ev("noise", T0, 60),  # the end instant: b (silent since 40) is due at 55 and fires before it
    ]
    report = backtest_json(write_project(tmp_path, ABSENT, events))
    assert fires_of(report) == [
        (at(T0, 15), "alive", "b"),
        (at(T0, 35), "alive", "a"),
        (at(T0, 40), "alive", "b"),
        (at(T0, 50), "alive", "a"),
        (at(T0, 55), "alive", "b"),
    ]
    reasons = [f["reason"] for f in report["fires"]]
    assert reasons[0] == f"no hb.* for key b for 15m (last seen {at(T0, 0)})"
    assert reasons[2] == "hb.* for key b resumed after 40m of silence"
    assert report["totals"]["alive"] == {"fires": 5, "events": 6, "misses": 0}
    assert report["from"] == at(T0, 0) and report["to"] == at(T0, 60)


CRON_DEADLINE = """
[[watch]]
id = "nightly-backup"
kind = "deadline"
opens = { cron = "30 2 * * *", timezone = "Europe/Berlin" }
expect = { subject = "backup.done", where = "data.exit_code == 0" }
within = "1h"
then = ["notify.console"]
"""


def test_cron_deadline_across_the_fall_back_day_opens_one_window(tmp_path: Path) -> None:
    day = FALL_BACK - timedelta(days=1)  # 2026-10-24 00:00 UTC, 02:00 CEST
    events: list[dict[str, Any] | str] = [
        ev("noise", day),
        ev("backup.done", day, 45, exit_code=0),  # 02:45 CEST: inside 02:30–03:30, met
        ev("backup.done", FALL_BACK, 40, exit_code=1),  # 02:40 CEST on the fall-back day: where false
        # 02:45 CET, the second 02:45: the one window (02:30 CEST + 1h = 02:30 CET) has already
        # fired, and there is no second window for it to close
        ev("backup.done", FALL_BACK, 105, exit_code=0),
        ev("backup.done", FALL_BACK + timedelta(days=1), 105, exit_code=0),  # 02:45 CET on the 26th: met
        ev("noise", FALL_BACK + timedelta(days=1), 12 * 60),
    ]
    report = backtest_json(write_project(tmp_path, CRON_DEADLINE, events))
    assert fires_of(report) == [("2026-10-25T01:30:00Z", "nightly-backup", None)]
    (fire,) = report["fires"]
    assert fire["at_local"] == "2026-10-25T02:30:00+01:00"  # the second 02:30, in CET
    assert fire["reason"] == (
        "no backup.done with data.exit_code == 0 between 2026-10-25 02:30 CEST and 2026-10-25 02:30 CET Europe/Berlin"
    )
    assert report["totals"]["nightly-backup"] == {"fires": 1, "events": 3, "misses": 1}


def test_cron_deadline_fires_at_the_end_instant_when_still_open(tmp_path: Path) -> None:
    # No event after the window's end on the 25th: the report ends at the last event, so it is not due yet.
    events: list[dict[str, Any] | str] = [ev("noise", FALL_BACK), ev("noise", FALL_BACK, 89)]
    assert backtest_json(write_project(tmp_path, CRON_DEADLINE, events))["fires"] == []
    events.append(ev("noise", FALL_BACK, 90))  # 01:30 UTC: the deadline itself
    report = backtest_json(write_project(tmp_path, CRON_DEADLINE, events))
    assert fires_of(report) == [("2026-10-25T01:30:00Z", "nightly-backup", None)]


EVENT_DEADLINE = """
[[watch]]
id = "pr-review"
kind = "deadline"
opens = { subject = "pr.opened", key = "data.n" }
expect = { subject = "pr.review", key = "data.n" }
within = "1h"
then = ["notify.console"]
"""


def test_deadline_opened_by_event_per_key(tmp_path: Path) -> None:
    events: list[dict[str, Any] | str] = [
        ev("pr.opened", T0, 0, n=1),
        ev("pr.opened", T0, 10, n=2),
        ev("pr.review", T0, 30, n=1),  # in time for 1
        ev("pr.review", T0, 40, n=3),  # 3 is not open yet: does not count
        ev("pr.opened", T0, 50, n=3),
        ev("pr.review", T0, 75, n=2),  # 2 was due at 70: too late
        ev("noise", T0, 120),
    ]
    report = backtest_json(write_project(tmp_path, EVENT_DEADLINE, events))
    assert fires_of(report) == [(at(T0, 70), "pr-review", "2"), (at(T0, 110), "pr-review", "3")]
    assert report["fires"][0]["reason"] == "no pr.review for key 2 within 1h of pr.opened"
    assert report["totals"]["pr-review"] == {"fires": 2, "events": 6, "misses": 0}


# ---- input problems, invalid definitions, output shape -----------------------------------------


def test_bad_lines_are_reported_with_numbers_and_good_lines_used(tmp_path: Path) -> None:
    events: list[dict[str, Any] | str] = [
        ev("mail.received", T0, 0, urgent=True),  # 1
        "{not json",  # 2
        "[1, 2]",  # 3
        "",  # 4: blank lines are ignored
        json.dumps({"subject": "mail.received", "data": {"urgent": True}}),  # 5: no time
        json.dumps(ev("bad subject!", T0, 1)),  # 6
        json.dumps({**ev("mail.received", T0, 2), "data": [1]}),  # 7: data not an object
        ev("mail.received", T0, 3, urgent=True),  # 8
    ]
    report = backtest_json(write_project(tmp_path, MATCH, events))
    assert fires_of(report, "urgent") == [(at(T0, 0), "urgent", None), (at(T0, 3), "urgent", None)]
    assert [s["line"] for s in report["skipped_lines"]] == [2, 3, 5, 6, 7]
    reasons = [s["reason"] for s in report["skipped_lines"]]
    assert reasons[0].startswith("not valid JSON")
    assert reasons[1].startswith("not a JSON object")
    assert reasons[2].startswith('no "time"')
    assert reasons[3].startswith("bad subject 'bad subject!'")
    assert "data" in reasons[4]
    assert report["events"] == 2


def test_events_out_of_order_are_replayed_in_time_order(tmp_path: Path) -> None:
    events: list[dict[str, Any] | str] = [ev("hb.x", T0, 20, host="a"), ev("hb.x", T0, 0, host="a")]
    report = backtest_json(write_project(tmp_path, ABSENT, events))
    assert fires_of(report) == [(at(T0, 15), "alive", "a"), (at(T0, 20), "alive", "a")]
    assert any("time order" in n for n in report["notes"])


def test_invalid_watch_file_is_file_line_col_and_exit_1(tmp_path: Path) -> None:
    bad = '[[watch]]\nid = "x"\nkind = "match"\non = { subject = "a..b" }\nthen = ["notify.nope"]\ncooldown = "soon"\n'
    root = write_project(tmp_path, bad, [ev("a.b", T0)])
    code, out, err = run_cli(
        "test", str(root / "w.toml"), "--events", str(root / "events.jsonl"), "--config", str(root / "config.toml")
    )
    assert code == 1 and out == ""
    problems = [ln for ln in err.splitlines() if re.match(r"^\S*w\.toml:\d+:\d+: ", ln)]
    assert len(problems) == 3, err
    assert any(re.search(r"w\.toml:4:\d+: bad subject pattern 'a\.\.b'", p) for p in problems)
    assert any(re.search(r"w\.toml:5:\d+: unknown target 'notify\.nope'", p) for p in problems)
    assert any(re.search(r"w\.toml:6:\d+: .*soon", p) for p in problems)
    assert "Traceback" not in err
    # a TOML syntax error too
    (root / "w.toml").write_text('[[watch]]\nid = "x\n')
    code, _, err = run_cli(
        "test", str(root / "w.toml"), "--events", str(root / "events.jsonl"), "--config", str(root / "config.toml")
    )
    assert code == 1 and re.search(r"w\.toml:2:\d+: TOML syntax error", err), err


def test_other_watch_files_of_the_config_do_not_matter(tmp_path: Path) -> None:
    root = write_project(tmp_path, COUNT, [ev("auth.failed", T0, user="bob")])
    (root / "watches").mkdir()
    (root / "watches" / "broken.toml").write_text("[[watch]]\nid = 1\n")
    with pytest.raises(Exception, match="broken"):
        config.load(root / "config.toml")
    assert backtest_json(root)["totals"]["login-storm"]["events"] == 1


def test_unreadable_input_and_usage_errors_exit_1(tmp_path: Path) -> None:
    root = write_project(tmp_path, MATCH, [])
    cfg = ["--config", str(root / "config.toml")]
    code, _, err = run_cli("test", str(root / "w.toml"), "--events", str(root / "nope.jsonl"), *cfg)
    assert code == 1 and "cannot read" in err and "nope.jsonl" in err
    code, _, err = run_cli("test", str(root / "nope.toml"), *cfg)
    assert code == 1 and "nope.toml not found" in err
    code, _, err = run_cli("test", str(root / "w.toml"), "--since", "1d", "--events", "x", *cfg)
    assert code == 1 and "not both" in err
    code, _, err = run_cli("test", str(root / "w.toml"), "--since", "soon", *cfg)
    assert code == 1 and "bad --since" in err
    # NATS not reachable (nothing listens on port 1): one clear line, fast, and what to do instead
    started = time.monotonic()
    code, _, err = run_cli("test", str(root / "w.toml"), *cfg)
    assert code == 1 and "cannot reach NATS" in err and "--events" in err and "Traceback" not in err
    assert time.monotonic() - started < 3


def test_json_shape(tmp_path: Path) -> None:
    events: list[dict[str, Any] | str] = [ev("mail.received", T0, 0, urgent=True), "nope"]
    report = backtest_json(write_project(tmp_path, MATCH, events, zone="Europe/Berlin"))
    assert set(report) == {"fires", "totals", "skipped_lines", "rejected", "events", "from", "to", "notes"}
    assert report["fires"][0] == {
        "watch": "urgent",
        "key": None,
        "at": "2026-11-22T12:00:00Z",
        "at_local": "2026-11-22T13:00:00+01:00",
        "mode": "live",
        "reason": "mail.received matched where data.urgent == true",
    }
    assert set(report["totals"]["urgent"]) == {"fires", "events", "misses"}
    assert report["skipped_lines"] == [{"line": 2, "reason": report["skipped_lines"][0]["reason"]}]
    assert (report["from"], report["to"], report["events"], report["rejected"]) == (at(T0), at(T0), 1, [])


def test_human_output_shows_watch_zone_and_utc(tmp_path: Path) -> None:
    events: list[dict[str, Any] | str] = [ev("mail.received", T0, 0, urgent=True, **{"from": "[b]x[/b]"}), "nope"]
    root = write_project(tmp_path, MATCH, events, zone="Europe/Berlin")
    args = ("test", str(root / "w.toml"), "--events", str(root / "events.jsonl"), "--config", str(root / "config.toml"))
    code, summary, _ = run_cli(*args)
    assert code == 0  # a report: exit 0 even though watches fire
    # by default a summary per watch: fires, the first and the last (watch zone), keys
    row = next(line for line in summary.splitlines() if line.startswith("urgent-shadow"))
    assert row.split()[1:8] == ["shadow", "1", "11-22", "13:00", "11-22", "13:00", "1"], row
    table = summary[summary.index("\nwatch ") : summary.index("skipped line")]
    assert max(len(line) for line in table.splitlines()) <= 80, table
    assert "(12:00:00 UTC)" not in summary and "(--all lists each one with its reason)" in summary
    code, out, _ = run_cli(*args, "--all")
    assert "2026-11-22 13:00:00 CET (12:00:00 UTC)  urgent" in out
    assert "urgent-shadow [[b]x[/b]] (shadow: would fire)" in out  # keys printed verbatim, never as markup
    assert "skipped line 2: not valid JSON" in out
    assert "3 would-be fires" in out


def test_a_progress_bar_on_a_terminal_and_none_on_a_pipe(tmp_path: Path) -> None:
    events: list[dict[str, Any] | str] = [ev("mail.received", T0, i / 60, urgent=i % 2 == 0) for i in range(6000)]
    root = write_project(tmp_path, MATCH, events)
    argv = [sys.executable, "-m", "watchd", "test", str(root / "w.toml"), "--events", str(root / "events.jsonl")]
    argv += ["--config", str(root / "config.toml")]
    env = {k: v for k, v in os.environ.items() if k != "WATCHD_CONFIG"} | {"COLUMNS": "100"}
    piped = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert piped.returncode == 0 and "replaying events" not in piped.stdout + piped.stderr
    pid, fd = pty.fork()
    if pid == 0:  # the child: a terminal on stdin, stdout and stderr
        os.execve(sys.executable, argv, env)
    seen = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, seen[-2000:]
    assert b"replaying events" in seen and b"/6000" in seen, seen[-2000:]


# ---- agreement with the daemon's own loop (property) -------------------------------------------

AGREEMENT_WATCHES = """
[[watch]]
id = "urgent"
kind = "match"
on = { subject = "mail.received", where = 'data.urgent == true' }

[[watch]]
id = "per-sender"
kind = "match"
on = { subject = "mail.received", key = "data.from" }
cooldown = "20m"

[[watch]]
id = "storm"
kind = "match"
on = { subject = "auth.failed", key = "data.user" }
count = 3
window = "10m"

[[watch]]
id = "bob-shadow"
kind = "match"
mode = "shadow"
on = { subject = "auth.failed", where = 'data.user == "bob"' }

[[watch]]
id = "hosts"
kind = "absent"
expect = { subject = "hb.*", key = "data.host" }
keys = ["a"]
for = "15m"
recover = true

[[watch]]
id = "any-hb"
kind = "absent"
expect = { subject = "hb.>" }
for = "30m"

[[watch]]
id = "backup-berlin"
kind = "deadline"
opens = { cron = "30 2 * * *", timezone = "Europe/Berlin" }
expect = { subject = "backup.done", where = "data.exit_code == 0" }
within = "1h"

[[watch]]
id = "hourly"
kind = "deadline"
opens = { cron = "0 * * * *" }
expect = { subject = "backup.done" }
within = "20m"

[[watch]]
id = "pr"
kind = "deadline"
opens = { subject = "pr.opened", key = "data.n" }
expect = { subject = "pr.review", key = "data.n" }
within = "30m"

[[watch]]
id = "off"
kind = "match"
enabled = false
on = { subject = ">" }
"""

SPAN_S = 4 * 3600  # 00:00–04:00 UTC on the fall-back day: 02:00 CEST … 02:00 CET … 05:00 CET

_PAYLOADS: list[tuple[str, dict[str, Any]]] = [
    ("mail.received", {"from": "a", "urgent": True}),
    ("mail.received", {"from": "b", "urgent": False}),
    ("mail.received", {"from": "b"}),  # `urgent` missing: the where errors
    ("auth.failed", {"user": "bob"}),
    ("auth.failed", {"user": "alice"}),
    ("auth.failed", {}),  # no user: the key errors
    ("hb.ping", {"host": "a"}),
    ("hb.ping", {"host": "b"}),
    ("backup.done", {"exit_code": 0}),
    ("backup.done", {"exit_code": 1}),
    ("pr.opened", {"n": 1}),
    ("pr.opened", {"n": 2}),
    ("pr.review", {"n": 1}),
    ("pr.review", {"n": 2}),
    ("other.thing", {}),
]

event_sequences = st.lists(
    st.tuples(st.integers(0, SPAN_S), st.integers(0, len(_PAYLOADS) - 1)), min_size=0, max_size=40
).map(sorted)


def daemon_loop(
    defs: list[Any], zone: str, events: list[tuple[float, Event]], start: float, end: float
) -> list[tuple[float, str, str | None, str]]:
    """The engine as `Daemon._engine_loop` drives it, on a virtual clock: sleep until the earliest
    timer (at most MAX_IDLE_WAIT_S) or until messages arrive; step each fetched message at its
    stream time; tick at the current time when a timer is due and the backlog is drained."""
    engine = Engine(zone)
    engine.load(defs, start)
    clock, i, seq = start, 0, 0
    fired: list[tuple[float, str, str | None, str]] = []

    def take(out: Outputs) -> None:
        fired.extend((d.at, d.watch, d.key, d.reason) for d in out.decisions if d.verdict in ("fired", "would_fire"))

    while True:
        due = engine.next_due()
        wait = MAX_IDLE_WAIT_S if due is None else min(MAX_IDLE_WAIT_S, max(0.001, due - clock))
        batch: list[tuple[float, Event]] = []
        if i < len(events) and events[i][0] <= clock + wait:  # fetch returns as soon as messages are there
            clock = max(clock, events[i][0])
            while i < len(events) and events[i][0] <= clock and len(batch) < FETCH_BATCH:
                batch.append(events[i])
                i += 1
        elif clock >= end:
            break
        else:
            clock = min(clock + wait, end)
        for t, event in batch:
            seq += 1
            take(engine.step(EventInput(event, t, seq)))
        due = engine.next_due()
        if due is not None and due <= clock and len(batch) < FETCH_BATCH:
            take(engine.step(Tick(clock)))
    return fired


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_sequences)
def test_backtest_agrees_with_the_daemon_loop(draws: list[tuple[int, int]]) -> None:
    start, end = FALL_BACK.timestamp(), FALL_BACK.timestamp() + SPAN_S
    events = [(start, make_event("noise", {}, id="first", time_s=start))]
    for n, (offset, which) in enumerate(draws):
        subject, data = _PAYLOADS[which]
        events.append((start + offset, make_event(subject, dict(data), id=f"e{n}", time_s=start + offset)))
    events.append((end, make_event("noise", {}, id="last", time_s=end)))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "w.toml").write_text(AGREEMENT_WATCHES)
        (root / "events.jsonl").write_text("".join(json.dumps(_envelope(e)) + "\n" for _, e in events))
        loaded = config.load(None, watches=False)
        loaded.config.timezone = "UTC"
        defs, _ = config.load_watch_file(loaded, root / "w.toml")
        report = replay_events("w.toml", defs, "UTC", root / "events.jsonl")
    predicted = [(f.at, f.watch, f.key, f.reason) for f in report.fires]
    assert predicted == daemon_loop([(d, 1) for d in defs], "UTC", events, start, end)
    assert "off" not in {f.watch for f in report.fires}


def _envelope(e: Event) -> dict[str, Any]:
    return {"id": e.id, "subject": e.subject, "time": e.time.isoformat().replace("+00:00", "Z"), "data": e.data}


def test_agreement_oracle_sees_every_kind_fire() -> None:
    """The property above is only as good as its inputs: one fixed sequence where every kind fires."""
    start = FALL_BACK.timestamp()
    minutes = [(0, 6), (0, 7), (1, 0), (2, 3), (3, 3), (4, 3), (5, 10), (50, 6), (70, 12), (95, 9), (200, 14)]
    events = [
        (start + m * 60, make_event(_PAYLOADS[w][0], dict(_PAYLOADS[w][1]), id=f"e{k}", time_s=start + m * 60))
        for k, (m, w) in enumerate(minutes)
    ]
    loaded = config.load(None, watches=False)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "w.toml").write_text(AGREEMENT_WATCHES)
        defs, _ = config.load_watch_file(loaded, Path(tmp) / "w.toml")
    fired = daemon_loop([(d, 1) for d in defs], "UTC", events, start, start + 200 * 60)
    assert {w for _, w, _, _ in fired} == {
        "urgent",
        "per-sender",
        "storm",
        "bob-shadow",
        "hosts",
        "any-hb",
        "backup-berlin",
        "hourly",
        "pr",
    }


# ---- agreement with the real daemon (end to end) -----------------------------------------------

E2E_WATCHES = """
[[watch]]
id = "urgent"
kind = "match"
on = { subject = "mail.received", where = 'data.urgent == true' }
then = ["notify.console"]

[[watch]]
id = "storm"
kind = "match"
on = { subject = "auth.failed", key = "data.user" }
count = 2
window = "1m"
then = ["notify.console"]

[[watch]]
id = "hosts"
kind = "absent"
expect = { subject = "hb.*", key = "data.host" }
for = "1s"
recover = true
then = ["notify.console"]

[[watch]]
id = "pr"
kind = "deadline"
opens = { subject = "pr.opened", key = "data.n" }
expect = { subject = "pr.review", key = "data.n" }
within = "1s"
then = ["notify.console"]
"""


async def test_backtest_predicts_the_real_daemons_fires(daemon_factory: Callable[..., InProcessDaemon]) -> None:
    d = await daemon_factory({"w.toml": E2E_WATCHES}).start()
    await d.publish(
        make_event("mail.received", {"urgent": True}),
        make_event("mail.received", {"urgent": False}),
        make_event("auth.failed", {"user": "bob"}),
        make_event("auth.failed", {"user": "alice"}),
        make_event("auth.failed", {"user": "bob"}),
        make_event("hb.ping", {"host": "a"}),
        make_event("hb.ping", {"host": "b"}),
        make_event("pr.opened", {"n": 1}),
        make_event("pr.opened", {"n": 2}),
        make_event("pr.review", {"n": 1}),
    )

    def fired() -> Counter[tuple[str, str | None]]:
        return Counter((r["watch"], r["key"]) for r in d.decisions(verdict="fired"))

    # a and b fall silent and pr 2 misses its deadline; then a comes back (a recovery) and falls
    # silent again. After that nothing is pending: b is silent, every window is closed.
    await until(lambda: fired()[("hosts", "a")] == 1 and fired()[("pr", "2")] == 1, what="silences and deadline")
    await d.publish(make_event("hb.ping", {"host": "a"}))
    await until(lambda: fired()[("hosts", "a")] == 3, what="recovery and second silence")
    expected = Counter({("urgent", None): 1, ("storm", "bob"): 1, ("hosts", "a"): 3, ("hosts", "b"): 1, ("pr", "2"): 1})
    assert fired() == expected

    r = await d.cli("test", str(d.watches_dir / "w.toml"), "--since", "1h", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert Counter((f["watch"], f["key"]) for f in report["fires"]) == fired()
    assert report["events"] == 11 and report["rejected"] == []
    assert any("holds only 11 event(s)" in n for n in report["notes"]), report["notes"]
    # and at the same instants, to the millisecond the daemon's clock allows
    daemon_at = sorted((r["watch"], r["key"], r["at"]) for r in d.decisions(verdict="fired"))
    predicted = sorted((f["watch"], f["key"], datetime.fromisoformat(f["at"]).timestamp()) for f in report["fires"])
    for (w1, k1, t1), (w2, k2, t2) in zip(daemon_at, predicted, strict=True):
        assert (w1, k1) == (w2, k2) and abs(t1 - t2) < 0.5, (w1, k1, t1, t2)


# ---- --since: the recorded stream, read directly ---------------------------------------------


async def test_since_replays_from_now_minus_d_and_reports_malformed_messages(
    nats_server: Any, nats_client: Any
) -> None:
    from watchd import bus
    from watchd.explain.backtest import replay_stream

    js = nats_client.jetstream()
    loaded = config.load(None, watches=False)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "w.toml").write_text(MATCH)
        defs, _ = config.load_watch_file(loaded, Path(tmp) / "w.toml")
    with pytest.raises(Exception, match="no EVENTS stream"):
        await replay_stream("w.toml", defs, "UTC", nats_server.url, 3600, time.time(), "1h")
    await bus.ensure_streams(js)
    empty = await replay_stream("w.toml", defs, "UTC", nats_server.url, 3600, time.time(), "1h")
    assert empty.events == 0 and empty.fires == [] and "empty" in empty.notes[0]

    await bus.publish_event(js, make_event("mail.received", {"urgent": True, "from": "old"}, id="old"))
    time.sleep(0.05)
    second = await bus.publish_event(js, make_event("mail.received", {"urgent": True, "from": "x"}, id="new"))
    await bus.publish_raw(js, "watchd.events.mail.received", b"{not json", "broken")
    await bus.publish_event(js, make_event("mail.received", {"urgent": False, "from": "x"}, id="miss"))
    second_at = (await js.get_msg(bus.EVENTS_STREAM, seq=second.seq)).time.timestamp()
    now = time.time()
    # D reaches back to just before the second message: the first is not replayed
    report = await replay_stream("w.toml", defs, "UTC", nats_server.url, now - second_at + 0.001, now, "D")
    assert [(f.watch, f.key) for f in report.fires] == [("urgent", None), ("urgent-quiet", "x"), ("urgent-shadow", "x")]
    assert report.events == 2 and report.notes == []
    assert [(s.where, s.reason.split(":")[0]) for s in report.rejected] == [(3, "event is not valid JSON")]
    assert report.totals["urgent"].misses == 1
    assert report.end == now and report.start == pytest.approx(second_at - 0.001)
    assert report.to_json()["rejected"] == [{"seq": 3, "reason": report.rejected[0].reason}]
