"""`watchd explain`: every verdict kind, built through the real pure engine on a virtual clock and
persisted with the real store (as the daemon commits a batch), then read back as the CLI does."""

from __future__ import annotations

import json
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
from rich.console import Console
from support.cli import CliResult, run_cli

from watchd.config import Watch, WatchDef
from watchd.dispatch import handoffs_from_fire
from watchd.engine import Decision, Engine, EventInput, Fire, Outputs, Tick
from watchd.errors import WatchdError
from watchd.explain import backtest
from watchd.explain import watch as ex
from watchd.explain.render import render_watch
from watchd.model import Event, make_event
from watchd.stepping import kept_for_explain
from watchd.store import Store

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC).timestamp()
BERLIN = ZoneInfo("Europe/Berlin")


def berlin(*args: int) -> float:
    return datetime(*args, tzinfo=BERLIN).timestamp()  # type: ignore[misc]


def defs(text: str) -> list[WatchDef]:
    raw = tomllib.loads(text)
    return [WatchDef(msgspec.convert(w, Watch), "t.toml", 1 + 6 * i, str(i)) for i, w in enumerate(raw["watch"])]


class World:
    """The engine on a virtual clock whose every step is committed to a real state db, as the
    daemon does it (misses thinned, handoffs made from fires, subjects heard)."""

    def __init__(self, root: Path, text: str, now: float = T0, zone: str = "UTC") -> None:
        self.defs = defs(text)
        self.zone = zone
        self.now = now
        self.seq = 0
        self.state_dir = root / "state"
        self.store = Store(self.state_dir / "watchd.db")
        self.engine = Engine(zone)
        versions = self.store.assign_versions({d.watch.id: d.digest for d in self.defs}, now)
        self.engine.load([(d, versions[d.watch.id]) for d in self.defs], now)
        self.fires: list[Fire] = []
        self._commit(Outputs(), {})

    def _commit(
        self, out: Outputs, subjects: dict[str, tuple[float, str, int]], events: dict[int, Event] | None = None
    ) -> None:
        self.fires += out.fires
        watches = {d.watch.id: d.watch for d in self.defs}
        holds: dict[str, float] = {}
        handoffs = [
            h
            for f in out.fires
            for h in handoffs_from_fire(
                f,
                watches[f.watch].message,
                quiet=watches[f.watch].quiet,
                urgent=watches[f.watch].urgent,
                zone=self.zone,
                holds=holds,
            )
        ]
        self.store.commit_step(
            last_seq=self.seq,
            clock=self.engine.clock,
            changes=self.engine.take_changes(),
            decisions=kept_for_explain(out.decisions, events or {}),
            handoffs=handoffs,
            subjects=subjects,
            now=self.now,
            holds=holds,
        )

    def emit(
        self,
        subject: str,
        data: dict[str, Any] | None = None,
        *,
        after: float = 0.0,
        id: str | None = None,
        source: str = "test",
    ) -> list[Fire]:
        self.now += after
        self.seq += 1
        event = make_event(subject, data or {}, id=id or f"e{self.seq}", time_s=self.now, source=source)
        out = self.engine.step(EventInput(event, self.now, self.seq))
        self._commit(out, {subject: (self.now, source, 1)}, {self.seq: event})
        return out.fires

    def emit_batch(self, subject: str, datas: list[dict[str, Any]], *, after: float = 1.0) -> None:
        """Several events committed as one batch, as the daemon commits what one fetch returned."""
        out, events = Outputs(), {}
        for data in datas:
            self.now += after
            self.seq += 1
            event = make_event(subject, data, id=f"e{self.seq}", time_s=self.now)
            events[self.seq] = event
            step = self.engine.step(EventInput(event, self.now, self.seq))
            out.decisions += step.decisions
            out.fires += step.fires
        self._commit(out, {subject: (self.now, "test", len(datas))}, events)

    def advance(self, seconds: float) -> None:
        """Time passes with watchd running: it wakes at each due timer and commits."""
        target = self.now + seconds
        while (due := self.engine.next_due()) is not None and due <= target:
            self.now = max(self.now, due)
            self._commit(self.engine.step(Tick(self.now)), {})
        self.now = target
        self._commit(self.engine.step(Tick(self.now)), {})

    def explain(self, watch: str, *, since: str | None = None, key: str | None = None) -> ex.WatchReport:
        conn = ex.open_db(self.state_dir)
        try:
            return ex.explain_from_db(conn, self.defs, self.zone, watch, now=self.now, since=since, key=key)
        finally:
            conn.close()

    def verdict(self, watch: str, **kw: Any) -> str:
        return self.explain(watch, **kw).verdict

    def event(self, event_id: str) -> ex.EventReport:
        conn = ex.open_db(self.state_dir)
        try:
            return ex.event_from_db(conn, self.defs, self.zone, event_id)
        finally:
            conn.close()


@pytest.fixture
def world(tmp_path: Path) -> Any:
    made: list[World] = []

    def make(text: str, now: float = T0, zone: str = "UTC") -> World:
        w = World(tmp_path / f"w{len(made)}", text, now, zone)
        made.append(w)
        return w

    yield make
    for w in made:
        w.store.close()


URGENT = """
[[watch]]
id = "urgent-mail"
kind = "match"
on = { subject = "mail.received", where = "data.urgent" }
then = ["notify.phone"]
"""

COUNT = """
[[watch]]
id = "login-storm"
kind = "match"
on = { subject = "auth.failed", key = "data.user" }
count = 5
window = "10m"
then = ["notify.phone"]
"""

ABSENT = """
[[watch]]
id = "laptop-alive"
kind = "absent"
expect = { subject = "heartbeat.*", key = "data.host" }
for = "15m"
recover = true
then = ["notify.phone"]
"""

BACKUP = """
[[watch]]
id = "nightly-backup"
kind = "deadline"
opens = { cron = "0 1 * * *", timezone = "Europe/Berlin" }
expect = { subject = "backup.done", where = "data.exit_code == 0" }
within = "2h"
then = ["notify.phone"]
"""

PR = """
[[watch]]
id = "pr-needs-review"
kind = "deadline"
opens = { subject = "github.pull_request", where = 'data.action == "opened"', key = "data.number" }
expect = { subject = "github.pull_request_review", key = "data.pull_request.number" }
within = "24h"
then = ["notify.team"]
"""

# ---- each verdict kind -------------------------------------------------------------------------


def test_fired_names_the_last_handoff_and_its_delivery(world: Any) -> None:
    w = world(URGENT)
    w.emit("mail.received", {"urgent": True}, after=60)
    w.emit("mail.received", {"urgent": False}, after=60)
    w.emit("mail.received", {"urgent": True}, after=60)
    (fire,) = w.emit("mail.received", {"urgent": True}, after=60)
    hid = fire.handoff_id("notify.phone")
    w.store.finish(hid, "delivered", w.now, None)
    report = w.explain("urgent-mail")
    assert report.verdict == (
        f"fired 3 times since 12:01 UTC; last at 12:04 UTC (handoff {hid} delivered to notify.phone)"
    )
    assert report.fired
    assert [d.verdict for d in report.timeline] == ["fired", "where_false", "fired", "fired"]
    assert [(h.state, h.target) for h in report.handoffs][-1] == ("delivered", "notify.phone")
    assert len(report.handoffs) == 3
    # --since narrows both the count and the start
    assert w.verdict("urgent-mail", since="2m").startswith("fired 2 times since 12:02 UTC; last at 12:04 UTC")


def test_fired_with_several_targets_lists_each_delivery(world: Any) -> None:
    w = world(URGENT.replace('["notify.phone"]', '["notify.phone", "agent.triage"]'))
    (fire,) = w.emit("mail.received", {"urgent": True}, after=60)
    phone, agent = fire.handoff_id("notify.phone"), fire.handoff_id("agent.triage")
    w.store.finish(agent, "retrying", w.now, "HTTP 503", w.now + 10)
    assert w.verdict("urgent-mail") == (
        f"fired once since 12:01 UTC; last at 12:01 UTC (handoffs {phone} pending for notify.phone, "
        f"{agent} retrying for agent.triage, next try 12:01:10 UTC)"
    )
    assert {h.id: h.last_error for h in w.explain("urgent-mail").handoffs}[agent] == "HTTP 503"


def test_where_false_reports_the_nearest_misses(world: Any) -> None:
    w = world(URGENT)
    for _ in range(4):
        w.emit("mail.received", {"urgent": False}, after=60)
    report = w.explain("urgent-mail")
    assert report.verdict == (
        "did not fire: 4 events on mail.received, none matched — last miss: where false: data.urgent "
        "(data.urgent = false) (at 12:04 UTC)"
    )
    assert not report.fired


def test_miss_counts_are_exact_though_only_the_nearest_misses_are_stored(world: Any) -> None:
    w = world(URGENT)
    w.emit_batch("mail.received", [{"urgent": False}] * 40 + [{"from": "x"}] * 7 + [{"urgent": False}] * 5)
    stored = w.store.conn.execute("SELECT verdict, COUNT(*), SUM(n) FROM decisions GROUP BY verdict").fetchall()
    assert sorted(stored) == [("where_error", 1, 7), ("where_false", 3, 45)]
    assert w.verdict("urgent-mail") == "did not fire: the where errored on 7 events: no such field 'urgent'"
    w.emit("mail.received", {"urgent": False}, after=60)
    w.store.conn.execute("DELETE FROM decisions WHERE verdict = 'where_error'")
    assert w.verdict("urgent-mail").startswith("did not fire: 46 events on mail.received, none matched — ")


def test_where_false_names_the_failing_clause_and_its_values(world: Any) -> None:
    where = 'data.exit_code == 0 && (data.host == "nas" || data.host == "pi") && size(data.tags) > 0'
    w = world(URGENT.replace('where = "data.urgent"', f"where = '{where}'"))
    w.emit("mail.received", {"exit_code": 0, "host": "laptop", "tags": ["x"]}, after=60)
    assert w.explain("urgent-mail").timeline[-1].reason == (
        'where false: data.exit_code == 0 && (data.host == "nas" || data.host == "pi") && size(data.tags) > 0 — '
        'clause 2 of 3 false: data.host == "nas" || data.host == "pi" (data.host = "laptop")'
    )
    w.emit("mail.received", {"exit_code": 3, "host": "nas", "tags": []}, after=60)
    assert w.explain("urgent-mail").timeline[-1].reason == (
        'where false: data.exit_code == 0 && (data.host == "nas" || data.host == "pi") && size(data.tags) > 0 — '
        "clause 1 of 3 false: data.exit_code == 0 (data.exit_code = 3); "
        "clause 3 of 3 false: size(data.tags) > 0 (data.tags = [])"
    )


def test_where_false_with_alternatives_shows_each(world: Any) -> None:
    w = world(URGENT.replace('where = "data.urgent"', """where = 'data.urgent || data.from == "boss@example.org"'"""))
    w.emit("mail.received", {"urgent": False, "from": "news@example.org"}, after=60)
    assert w.explain("urgent-mail").timeline[-1].reason == (
        'where false: data.urgent || data.from == "boss@example.org" — no alternative held: '
        "data.urgent (data.urgent = false) | "
        'data.from == "boss@example.org" (data.from = "news@example.org")'
    )


def test_where_errors_are_reported_before_false_wheres(world: Any) -> None:
    w = world(URGENT)
    w.emit("mail.received", {"urgent": False}, after=60)
    w.emit("mail.received", {"from": "a@b.c"}, after=60)
    w.emit("mail.received", {"from": "d@e.f"}, after=60)
    assert w.verdict("urgent-mail") == "did not fire: the where errored on 2 events: no such field 'urgent'"


def test_key_errors(world: Any) -> None:
    w = world(COUNT)
    w.emit("auth.failed", {"name": "bob"}, after=60)
    assert w.verdict("login-storm") == "did not fire: the key errored on 1 event: no such field 'user'"


def test_count_not_reached_per_key(world: Any) -> None:
    w = world(COUNT)
    for user in ("bob", "bob", "eve", "bob"):
        w.emit("auth.failed", {"user": user}, after=30)
    assert w.verdict("login-storm") == "did not fire: count not reached — 3 of 5 in 10m (key bob)"
    assert w.verdict("login-storm", key="eve") == "did not fire: count not reached — 1 of 5 in 10m (key eve)"
    assert [d.key for d in w.explain("login-storm", key="eve").timeline] == ["eve"]


def test_suppressed_by_cooldown(world: Any) -> None:
    w = world(URGENT.replace("then =", 'cooldown = "30m"\nthen ='))
    assert w.emit("mail.received", {"urgent": True}, after=60)
    assert not w.emit("mail.received", {"urgent": True}, after=300)
    assert w.verdict("urgent-mail") == "suppressed by cooldown until 12:31 UTC; last fired at 12:01 UTC"


def test_fired_but_held_for_quiet_hours(world: Any) -> None:
    w = world(URGENT.replace("then =", 'quiet = { from = "11:00", to = "13:30" }\nthen ='))
    (fire,) = w.emit("mail.received", {"urgent": True}, after=60)
    hid = fire.handoff_id("notify.phone")
    assert w.verdict("urgent-mail") == (
        f"fired once since 12:01 UTC; last at 12:01 UTC (handoff {hid} pending for notify.phone, "
        "held for quiet hours until 13:30 UTC)"
    )


def test_waiting_for_an_exhausted_budget(world: Any) -> None:
    w = world(URGENT.replace('"notify.phone"', '"agent.triage"'))
    (fire,) = w.emit("mail.received", {"urgent": True}, after=60)
    hid = fire.handoff_id("agent.triage")
    w.store.finish(
        hid, "pending", w.now, "budget_exhausted: agent.triage spent 200000 of 200000 tokens today", w.now + 3600
    )
    assert w.verdict("urgent-mail").endswith(
        f"(handoff {hid} pending for agent.triage, budget exhausted: waits until 13:01 UTC)"
    )


def test_suppressed_as_a_duplicate_fire_key(world: Any) -> None:
    w = world(URGENT)
    (first,) = w.emit("mail.received", {"urgent": True}, after=60, id="01MAIL")
    w.emit("mail.received", {"urgent": True}, after=600, id="01MAIL")  # re-sent after the broker's dedup window
    hid = first.handoff_id("notify.phone")
    assert w.verdict("urgent-mail") == (
        f"suppressed: duplicate fire key: {hid} to notify.phone was already handed off at 2026-11-22T12:01:00Z"
    )
    assert len(w.explain("urgent-mail").handoffs) == 1


def test_since_beyond_retention_says_what_is_kept(world: Any) -> None:
    w = world(URGENT)
    w.emit("mail.received", {"urgent": True}, after=60)
    w.emit("mail.received", {"urgent": True}, after=3600)
    assert w.store.prune_decisions(older_than=w.now - 1800, keep_rows=1000) == 1
    report = w.explain("urgent-mail", since="1d")
    assert report.note == (
        "--since 1d reaches past retention: decisions before 12:31 UTC are no longer kept "
        "([engine] decisions_keep_days / decisions_keep_rows); showing what is available"
    )
    assert report.to_json()["note"] == report.note
    assert w.explain("urgent-mail", since="10m").note is None


def test_shadow_mode_would_fire_and_makes_no_handoffs(world: Any) -> None:
    w = world(URGENT.replace("then =", 'mode = "shadow"\nthen ='))
    w.emit("mail.received", {"urgent": True}, after=60)
    w.emit("mail.received", {"urgent": True}, after=60)
    report = w.explain("urgent-mail")
    assert report.verdict == "would have fired 2 times since 12:01 UTC; last at 12:02 UTC (shadow mode: no handoffs)"
    assert report.handoffs == [] and not report.fired


def test_disabled(world: Any) -> None:
    w = world(COUNT + URGENT + "enabled = false\n")
    w.emit("mail.received", {"urgent": True}, after=60)
    report = w.explain("urgent-mail")
    assert report.verdict == "disabled (enabled = false in t.toml:7)"
    assert report.timeline == [] and report.next_due is None


def test_deadline_window_open_in_zone_and_utc(world: Any) -> None:
    w = world(BACKUP, now=berlin(2026, 11, 22, 0, 0), zone="Europe/Berlin")
    assert w.verdict("nightly-backup") == "waiting: next window opens 01:00 Europe/Berlin (00:00 UTC), in 1h"
    w.advance(3600 + 48 * 60)  # 01:48: the window opened at 01:00
    report = w.explain("nightly-backup")
    assert report.verdict == "waiting: deadline 03:00 Europe/Berlin (02:00 UTC), in 1h12m"
    assert report.next_due == berlin(2026, 11, 22, 3, 0)
    assert report.to_json()["timeline"][-1]["at_local"] == "2026-11-22T01:00:00+01:00"


def test_deadline_missed_fires_and_met_does_not(world: Any) -> None:
    w = world(BACKUP, now=berlin(2026, 11, 22, 0, 0), zone="Europe/Berlin")
    w.emit("backup.done", {"exit_code": 0}, after=1800)  # 00:30: before the window, does not count
    assert w.verdict("nightly-backup") == (
        "did not fire: no window was open — backup.done at 00:30 Europe/Berlin (2026-11-21 23:30 UTC) did not "
        "count; next window opens 01:00 Europe/Berlin (00:00 UTC), in 30m"
    )
    w.advance(1800 + 600)
    w.emit("backup.done", {"exit_code": 0}, after=600)  # 01:20: closes the window
    assert w.verdict("nightly-backup") == (
        "did not fire: met in time at 01:20 Europe/Berlin (00:20 UTC); next window opens "
        "2026-11-23 01:00 Europe/Berlin (00:00 UTC), in 23h40m"
    )
    w.advance(26 * 3600)  # the next night nothing arrives: fired at 03:00 on the 23rd
    report = w.explain("nightly-backup")
    hid = w.fires[0].handoff_id("notify.phone")
    assert report.verdict == (
        "fired once since 2026-11-22 00:30 Europe/Berlin (2026-11-21 23:30 UTC); last at 03:00 Europe/Berlin "
        f"(02:00 UTC) (handoff {hid} pending for notify.phone)"
    )


def test_absent_waiting_then_silent(world: Any) -> None:
    w = world(ABSENT)
    w.emit("heartbeat.x1", {"host": "x1"})
    w.advance(300)
    assert w.verdict("laptop-alive") == (
        "waiting: fires at 12:15 UTC for key x1 unless heartbeat.* arrives, in 10m (last seen 12:00 UTC)"
    )
    w.advance(900)
    report = w.explain("laptop-alive")
    assert report.verdict == "silent since 12:00 UTC for key x1 (fired at 12:15 UTC)"
    assert report.fired and report.next_due is None


def test_absent_never_seen(world: Any) -> None:
    w = world(ABSENT.replace(', key = "data.host"', ""))
    w.advance(60)
    assert w.verdict("laptop-alive") == (
        "waiting: fires at 12:15 UTC unless heartbeat.* arrives, in 14m (never seen since the watch started)"
    )


def test_nothing_arrived_last_heard_with_wildcards(world: Any) -> None:
    w = world(URGENT.replace("mail.received", "heartbeat.*").replace(', where = "data.urgent"', ""))
    w.emit("heartbeat.nas", {}, source="http")
    w.advance(3 * 3600)
    assert w.verdict("urgent-mail", since="1h") == (
        "did not fire: nothing arrived on heartbeat.* in the last 1h — last heard 12:00 UTC from http on heartbeat.nas"
    )


def test_nothing_arrived_never_heard(world: Any) -> None:
    w = world(PR + URGENT)
    w.emit("other.subject", {})
    assert w.verdict("urgent-mail") == (
        "did not fire: nothing arrived on mail.received — never heard since the state began"
    )
    assert w.verdict("pr-needs-review") == (
        "did not fire: nothing arrived on github.pull_request — never heard since the state began"
    )


def test_event_opened_deadline_waiting_and_opens_misses(world: Any) -> None:
    w = world(PR)
    w.emit("github.pull_request", {"action": "closed", "number": 3})
    assert w.verdict("pr-needs-review") == (
        "did not fire: 1 event on github.pull_request, none matched — last miss: "
        'where false: data.action == "opened" (data.action = "closed") (at 12:00 UTC)'
    )
    w.emit("github.pull_request", {"action": "opened", "number": 7}, after=60)
    assert w.verdict("pr-needs-review") == "waiting: deadline 2026-11-23 12:01 UTC for key 7, in 1d"


def test_key_shows_the_near_misses_of_that_key(world: Any) -> None:
    w = world(COUNT.replace('key = "data.user"', 'key = "data.user", where = "data.remote"'))
    w.emit("auth.failed", {"user": "bob", "remote": False}, after=30)
    w.emit("auth.failed", {"user": "eve", "remote": False}, after=30)
    w.emit("auth.failed", {"user": "bob", "remote": False}, after=30)
    report = w.explain("login-storm", key="bob")
    assert report.verdict == (
        "did not fire: 2 events on auth.failed for key bob, none matched — last miss: "
        "where false: data.remote (data.remote = false) (at 12:01:30 UTC)"
    )
    assert [(d.verdict, d.key) for d in report.timeline] == [("where_false", "bob")] * 2
    assert w.verdict("login-storm", key="zed").startswith("did not fire: nothing arrived on auth.failed for key zed")


def test_thinned_miss_counts_stay_exact_per_key(world: Any) -> None:
    w = world(COUNT.replace('key = "data.user"', 'key = "data.user", where = "data.remote"'))
    w.emit_batch("auth.failed", [{"user": "bob", "remote": False}] * 7 + [{"user": "eve", "remote": False}] * 4)
    assert w.verdict("login-storm", key="bob").startswith("did not fire: 7 events on auth.failed for key bob, ")
    assert w.verdict("login-storm", key="eve").startswith("did not fire: 4 events on auth.failed for key eve, ")
    assert w.verdict("login-storm").startswith("did not fire: 11 events on auth.failed, none matched")


def test_where_error_says_the_value_and_type_it_met(world: Any) -> None:
    w = world(BACKUP.replace("data.exit_code == 0", "data.exit_code < 1"), now=berlin(2026, 11, 22, 0, 30))
    w.emit("backup.done", {"exit_code": "0"}, after=60)
    assert w.verdict("nightly-backup") == (
        "did not fire: the where errored on 1 event: data.exit_code is a string '0', compared with an int "
        "(in data.exit_code < 1)"
    )


def test_backtest_notes_what_an_erroring_where_met(tmp_path: Path) -> None:
    lines = [
        {"subject": "mail.received", "time": f"2026-11-22T12:0{i}:00Z", "data": {"exit_code": "0"}} for i in range(3)
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = backtest.replay_events("w.toml", defs(URGENT.replace("data.urgent", "data.exit_code > 0")), "UTC", path)
    assert report.notes == [
        "urgent-mail: the where errored on 3 events, the first (line-1): data.exit_code is a string '0', "
        "compared with an int (in data.exit_code > 0)"
    ]


# ---- errors, --event, --json, rendering -------------------------------------------------------


def test_unknown_watch_suggests_the_nearest_ids(world: Any) -> None:
    w = world(URGENT + COUNT)
    with pytest.raises(WatchdError) as caught:
        w.explain("urgent-mial")
    assert caught.value.message == "no watch named 'urgent-mial'"
    assert caught.value.hint is not None and "did you mean urgent-mail?" in caught.value.hint
    with pytest.raises(WatchdError) as caught:
        w.explain("zzz")
    assert caught.value.hint == "known watches: login-storm, urgent-mail"


def test_no_state_db_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WatchdError) as caught:
        ex.open_db(tmp_path / "nothing")
    assert "the daemon has not run with this config yet" in caught.value.message
    assert caught.value.hint and "watchd run" in caught.value.hint


def test_event_lists_every_watch_it_was_a_candidate_for(world: Any) -> None:
    w = world(URGENT + URGENT.replace("urgent-mail", "from-boss").replace('"data.urgent"', "'data.from == \"boss\"'"))
    (fire,) = w.emit("mail.received", {"urgent": True, "from": "intern"}, id="m1")
    report = w.event("m1")
    assert report.verdict == "candidate for 2 watches: urgent-mail fired, from-boss where_false"
    assert not report.rejected
    assert [h.id for h in report.handoffs] == [fire.handoff_id("notify.phone")]
    data = report.to_json()
    assert set(data) == {"event", "verdict", "rejected", "decisions", "handoffs"}
    assert set(data["decisions"][0]) == {"at", "at_local", "watch", "verdict", "key", "reason", "version"}
    nothing = w.event("nope").verdict
    assert nothing == (
        "no decisions recorded for event nope (not a candidate for any watch, beyond retention, or only misses "
        "not kept)"
    )


def test_event_rejected_says_why(world: Any) -> None:
    w = world(URGENT)
    # what the daemon records for a malformed message on the stream
    rejected = Decision(w.now, "", None, "rejected", "event is not valid JSON: truncated", "bad1", 7)
    w.store.commit_step(
        last_seq=7, clock=w.now, changes=([], [], set()), decisions=[rejected], handoffs=[], subjects={}, now=w.now
    )
    report = w.event("bad1")
    assert report.rejected
    assert report.verdict == "rejected: event is not valid JSON: truncated (at 12:00 UTC)"


def test_json_shape(world: Any) -> None:
    w = world(COUNT)
    for _ in range(5):
        w.emit("auth.failed", {"user": "bob"}, after=10)
    data = w.explain("login-storm").to_json()
    assert set(data) == {
        "watch",
        "kind",
        "mode",
        "enabled",
        "file",
        "verdict",
        "fired",
        "timeline",
        "handoffs",
        "next_due",
        "note",
        "sources",
        "version",
    }
    assert (data["watch"], data["kind"], data["mode"], data["fired"]) == ("login-storm", "match", "live", True)
    assert data["verdict"].startswith("fired once since 12:00:10 UTC; last at 12:00:50 UTC for key bob")
    entry = data["timeline"][-1]
    assert entry == {
        "at": "2026-11-22T12:00:50Z",
        "at_local": "2026-11-22T12:00:50Z",
        "verdict": "fired",
        "key": "bob",
        "reason": "5 × auth.failed within 10m",
        "event_id": "e5",
        "version": None,  # no definition history in these rows
    }
    assert set(data["handoffs"][0]) == {"id", "key", "target", "state", "attempt", "last_error", "fired_at"}
    assert data["next_due"] is None
    json.dumps(data)


def test_timeline_is_bounded_newest_last(world: Any) -> None:
    w = world(URGENT)
    for i in range(60):
        w.emit("mail.received", {"urgent": True}, after=1, id=f"m{i}")
    report = w.explain("urgent-mail")
    assert len(report.timeline) == ex.TIMELINE_LIMIT and report.total == 60
    assert report.timeline[-1].event_id == "m59" and report.timeline[0].event_id == "m10"


def test_human_output_fits_80_columns_and_never_renders_markup(world: Any) -> None:
    w = world(COUNT, zone="Europe/Berlin")
    for _ in range(2):
        w.emit("auth.failed", {"user": "[red]bob[/red]"}, after=30)
    console = Console(width=80, record=True, highlight=False, soft_wrap=True, emoji=False)
    render_watch(w.explain("login-storm"), console)
    text = console.export_text()
    assert "(key [red]bob[/red])" in text
    assert "verdict: did not fire: count not reached — 2 of 5 in 10m" in text
    assert "Europe/Berlin" in text and "UTC" in text
    assert max(len(line) for line in text.splitlines()) <= 80


# ---- the command itself ------------------------------------------------------------------------


def test_cli_explain_beside_a_live_writer_and_after(tmp_path: Path) -> None:
    (tmp_path / "watches").mkdir()
    text = URGENT.replace("notify.phone", "notify.console")
    (tmp_path / "watches" / "mail.toml").write_text(text)
    cfg = tmp_path / "config.toml"
    cfg.write_text('watches = ["watches/"]\nstate_dir = "state"\ntimezone = "UTC"\n')
    w = World(tmp_path, text, now=time.time() - 600)
    w.emit("mail.received", {"urgent": True}, after=60, id="m1")

    def run(*args: str) -> CliResult:
        return run_cli("explain", *args, "--config", str(cfg))

    live = run("urgent-mail")  # the store is still open: a daemon would be writing
    assert live.returncode == 0, live.stderr
    assert "verdict: fired once since" in live.stdout and "notify.console" in live.stdout
    w.store.close()
    data = json.loads(run("urgent-mail", "--json").stdout)
    assert data["fired"] is True and data["timeline"][0]["event_id"] == "m1"
    event = run("--event", "m1")
    assert event.returncode == 0 and "candidate for 1 watch: urgent-mail fired" in event.stdout
    for args, first in [
        ((), "give one WATCH id or --event ID"),
        (("urgent-mial",), "no watch named 'urgent-mial'"),
        (("urgent-mail", "--event", "m1"), "give one WATCH id"),
        (("urgent-mail", "--since", "soon"), "bad --since"),
    ]:
        r = run(*args)
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert r.stderr.startswith(f"error: {first}"), r.stderr
    (tmp_path / "state" / "watchd.db").unlink()
    r = run("urgent-mail")
    assert r.returncode == 1 and "the daemon has not run" in r.stderr and "hint: start it" in r.stderr
