"""Answers in the pure engine, on a virtual clock: `repeat` until acked, snooze (held, then judged
again), mute (recorded, never handed off, no catch-up), unmute, and what survives a restart."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import msgspec
from support.cli import run_cli
from support.engine_sim import T0, Sim, defs

from watchd.engine import Engine, KeyState, Tick, Verdict, WatchMeta
from watchd.engine.answers import ANSWER_SUBJECT

HOUR = 3600.0

ABSENT_REPEAT = """
[[watch]]
id = "laptop-alive"
kind = "absent"
expect = { subject = "heartbeat.*", key = "data.host" }
keys = ["x1"]
for = "15m"
repeat = "1h"
then = ["notify.console"]
"""

MATCH_REPEAT = """
[[watch]]
id = "disk-full"
kind = "match"
on = { subject = "disk.full" }
repeat = "30m"
then = ["notify.console"]
"""

MATCH_PLAIN = """
[[watch]]
id = "urgent"
kind = "match"
on = { subject = "mail.urgent" }
then = ["notify.console"]
"""

DEADLINE_REPEAT = """
[[watch]]
id = "pr-review"
kind = "deadline"
opens = { subject = "github.pull_request", key = "data.number" }
expect = { subject = "github.review", key = "data.number" }
within = "24h"
repeat = "2h"
then = ["notify.console"]
"""


def ids(fires: list) -> list[str]:
    return [f.handoff_id("notify.console") for f in fires]


def reasons(sim: Sim, verdict: Verdict) -> list[str]:
    return [d.reason for d in sim.decisions if d.verdict == verdict]


def test_repeat_hands_off_every_interval_until_acked_and_a_new_incident_notifies_again() -> None:
    sim = Sim(ABSENT_REPEAT)
    first = sim.advance(15 * 60)
    assert [f.key for f in first] == ["x1"]
    repeats = sim.advance(2 * HOUR)
    assert [f.reason.split(",")[0] for f in repeats] == ["repeat 1", "repeat 2"]
    assert repeats[0].reason.endswith("no heartbeat.* for key x1 for 15m (never seen since the watch started)")
    assert len(set(ids(first + repeats))) == 3  # each repeat is its own handoff

    sim.answer("ack", "laptop-alive", key="x1", by="telegram:42")
    assert reasons(sim, Verdict.ACKED) == [
        "acked by telegram user 42: the incident since 2026-11-22 12:15 UTC (no more repeats)"
    ]
    assert sim.advance(5 * HOUR) == []  # acked: no more repeats, and the silence fired once

    sim.emit("heartbeat.x1", {"host": "x1"})  # the incident is over
    again = sim.advance(15 * 60)
    assert [f.key for f in again] == ["x1"]  # a new silence is a new incident: it notifies
    assert [f.reason.split(",")[0] for f in sim.advance(HOUR)] == ["repeat 1"]


def test_repeat_handoff_ids_are_the_same_on_a_replay() -> None:
    def run() -> list[str]:
        sim = Sim(MATCH_REPEAT)
        sim.emit("disk.full", id="full-1")
        sim.advance(95 * 60)
        return ids(sim.fires)

    assert run() == run()
    assert len(run()) == 4  # the fire, then a repeat every 30m


def test_the_incident_ends_by_itself_and_its_repeats_stop() -> None:
    sim = Sim(ABSENT_REPEAT)
    sim.advance(15 * 60 + HOUR)
    assert len(sim.fires) == 2
    sim.emit("heartbeat.x1", {"host": "x1"})
    assert reasons(sim, Verdict.RESOLVED) == [
        "the incident since 2026-11-22 12:15 UTC is over: heartbeat.* for key x1 resumed after 1h15m of silence"
    ]
    assert sim.advance(10 * 60) == []

    pr = Sim(DEADLINE_REPEAT)
    pr.emit("github.pull_request", {"number": 7})
    pr.advance(24 * HOUR + 2 * HOUR)
    assert [f.reason.split(",")[0] for f in pr.fires][1:] == ["repeat 1"]
    pr.emit("github.review", {"number": 7})  # reviewed late: no more reminders
    assert reasons(pr, Verdict.RESOLVED)[0].endswith("github.review arrived late")
    assert pr.advance(10 * HOUR) == []
    assert pr.engine.keys.get("pr-review", {}) == {}  # the key is forgotten once its incident is over


def test_an_ack_of_an_older_incident_leaves_the_newer_one_repeating() -> None:
    sim = Sim(MATCH_REPEAT)
    old = sim.emit("disk.full")[0]
    new = sim.emit("disk.full", after=600)[0]  # a newer fire replaces the incident
    sim.answer("ack", "disk-full", handoff=old.handoff_id("notify.console"), fired_at=old.fired_at)
    assert "that handoff's incident is over" in reasons(sim, Verdict.ACKED)[0]
    assert len(sim.advance(30 * 60)) == 1  # the newer incident still repeats
    sim.answer("ack", "disk-full", handoff=new.handoff_id("notify.console"), fired_at=new.fired_at)
    assert sim.advance(3 * HOUR) == []


def test_snooze_holds_fires_then_fires_if_the_condition_still_holds() -> None:
    sim = Sim(ABSENT_REPEAT)
    sim.answer("snooze", "laptop-alive", duration="1h", by="slack:U7")
    assert reasons(sim, Verdict.SNOOZED) == ["snoozed by slack user U7 until 2026-11-22 13:00 UTC; then judged again"]
    assert sim.advance(59 * 60) == []  # the silence began at 12:15, held
    assert reasons(sim, Verdict.HELD)[0].endswith("(snoozed by slack user U7 until 2026-11-22 13:00 UTC)")
    after = sim.advance(60)
    assert [f.reason for f in after] == [
        "still open after the snooze (since 2026-11-22 12:15 UTC): "
        "no heartbeat.* for key x1 for 15m (never seen since the watch started)"
    ]
    assert after[0].fired_at == T0 + HOUR
    assert "snooze_ended" in sim.verdicts("laptop-alive")
    assert [f.reason.split(",")[0] for f in sim.advance(HOUR)] == ["repeat 1"]  # repeats count from the release


def test_snooze_ending_after_the_condition_ended_fires_nothing() -> None:
    sim = Sim(ABSENT_REPEAT)
    sim.answer("snooze", "laptop-alive", duration="1h")
    sim.advance(30 * 60)  # silent since 12:15: held
    for _ in range(4):  # and over before the snooze ends at 13:00 (heard every 10m until 13:00)
        sim.emit("heartbeat.x1", {"host": "x1"})
        assert sim.advance(10 * 60) == []
    assert sim.fires == []
    assert "snooze_ended" in sim.verdicts("laptop-alive")


def test_snooze_of_one_key_leaves_the_others_alone() -> None:
    sim = Sim(ABSENT_REPEAT.replace('keys = ["x1"]', 'keys = ["x1", "x2"]').replace('repeat = "1h"\n', ""))
    sim.answer("snooze", "laptop-alive", key="x1", duration="2h")
    fired = sim.advance(15 * 60)
    assert [f.key for f in fired] == ["x2"]
    assert [d.key for d in sim.decisions if d.verdict == Verdict.HELD] == ["x1"]
    assert [f.key for f in sim.advance(2 * HOUR)] == ["x1"]


def test_snooze_from_a_notification_reminds_even_for_a_watch_that_keeps_no_incidents() -> None:
    sim = Sim(MATCH_PLAIN)
    fire = sim.emit("mail.urgent")[0]
    hid = fire.handoff_id("notify.console")
    sim.answer("snooze", "urgent", handoff=hid, fired_at=fire.fired_at, reason=fire.reason, duration="1h")
    again = sim.advance(HOUR)
    assert [f.reason for f in again] == [
        "still open after the snooze (since 2026-11-22 12:00 UTC): mail.urgent matched"
    ]
    assert sim.engine.keys.get("urgent", {}) == {}  # reminded once: the plain match keeps nothing after
    assert sim.advance(5 * HOUR) == []


def test_mute_records_muted_hands_off_nothing_and_nothing_fires_when_it_ends() -> None:
    sim = Sim(ABSENT_REPEAT)
    sim.answer("mute", "laptop-alive", duration="2h", by="telegram:42")
    assert reasons(sim, Verdict.MUTED) == [
        "muted by telegram user 42 until 2026-11-22 14:00 UTC; nothing fires when it ends"
    ]
    assert sim.advance(2 * HOUR) == []
    muted = reasons(sim, Verdict.MUTED)[1:]
    assert muted[0].startswith("no heartbeat.* for key x1 for 15m")
    assert muted[0].endswith("(muted by telegram user 42 until 2026-11-22 14:00 UTC)")
    assert "mute_ended" in sim.verdicts("laptop-alive")
    assert sim.advance(5 * HOUR) == []  # no catch-up fire, and a muted fire opened no incident to repeat


def test_a_mute_swallows_the_repeats_of_an_open_incident() -> None:
    sim = Sim(MATCH_REPEAT)
    sim.emit("disk.full")
    sim.answer("mute", "disk-full", duration="1h", after=60)
    assert sim.advance(HOUR - 60) == []
    assert sum(1 for r in reasons(sim, Verdict.MUTED) if r.startswith("repeat")) == 2


def test_unmute_ends_a_snooze_early_and_judges_again_then() -> None:
    sim = Sim(MATCH_REPEAT)
    sim.answer("snooze", "disk-full", duration="4h")
    assert sim.emit("disk.full", after=60) == []
    fired = sim.answer("unmute", "disk-full", after=600, by="cli:alice")
    assert [f.reason for f in fired] == ["still open after the snooze (since 2026-11-22 12:01 UTC): disk.full matched"]
    assert reasons(sim, Verdict.UNMUTED) == [
        "snoozed by tester (command line) until 2026-11-22 16:00 UTC: ended early by alice (command line)"
    ]
    assert sim.advance(4 * HOUR)  # repeats again, and no second release when the 4h would have ended
    assert "snooze_ended" not in sim.verdicts("disk-full")


def test_unmute_of_a_mute_fires_nothing_and_unmuting_nothing_says_so() -> None:
    sim = Sim(MATCH_PLAIN)
    sim.answer("mute", "urgent", duration="4h")
    sim.emit("mail.urgent")
    assert sim.answer("unmute", "urgent") == []
    assert sim.emit("mail.urgent")  # live again
    sim.answer("unmute", "urgent")
    assert reasons(sim, Verdict.UNMUTED)[-1] == "unmute by tester (command line): nothing was snoozed or muted"


def test_a_malformed_or_unknown_answer_is_recorded_as_rejected() -> None:
    sim = Sim(MATCH_PLAIN)
    sim.answer("ack", "nope")
    sim.answer("snooze", "urgent", duration="soon")
    rejected = [(d.watch, d.reason) for d in sim.decisions if d.verdict == Verdict.REJECTED]
    assert rejected[0] == ("nope", "answer for an unknown watch 'nope'")
    assert rejected[1][0] == "urgent" and "soon" in rejected[1][1]


def test_holds_and_incidents_survive_a_restart() -> None:
    sim = Sim(MATCH_REPEAT)
    sim.emit("disk.full")
    sim.answer("mute", "disk-full", duration="3h")
    rows, metas, _ = sim.engine.take_changes()  # what the daemon persists, through its encoding
    keys = {w: {k: msgspec.json.decode(msgspec.json.encode(st), type=KeyState)} for w, k, st in rows if st}
    meta = {w: msgspec.json.decode(msgspec.json.encode(m), type=WatchMeta) for w, m in metas}
    restarted = Engine("UTC")
    restarted.restore(keys, meta, sim.now)
    restarted.load(defs(MATCH_REPEAT), sim.now)
    assert restarted.next_due() == T0 + 30 * 60  # the repeat, which the mute swallows
    out = restarted.step(Tick(T0 + 2 * HOUR))  # watchd was down from 12:00 to 14:00
    assert [d.verdict for d in out.decisions] == [Verdict.MUTED]  # one repeat, late; not a burst
    out = restarted.step(Tick(T0 + 4 * HOUR))
    assert [d.verdict for d in out.decisions] == [Verdict.FIRED, Verdict.MUTE_ENDED]  # 14:30 repeat, then 15:00
    assert out.fires[0].reason.startswith("repeat 2,")


def test_answers_are_events_on_the_ordinary_path() -> None:
    assert ANSWER_SUBJECT.startswith("watchd.")  # watchd's own: only watchd publishes it


def test_watchd_test_replays_answers_where_they_happened(tmp_path: Path) -> None:
    """`watchd test` steps recorded answers with the events around them: a mute set at 12:10 for 1h
    swallows the 12:20 fire and the repeats inside it, and the repeats after it go out again."""

    def line(subject: str, minutes: float, **data: object) -> str:
        time = datetime.fromtimestamp(T0 + minutes * 60, UTC).isoformat().replace("+00:00", "Z")
        return json.dumps({"id": f"e{minutes:g}", "subject": subject, "time": time, "data": data})

    (tmp_path / "config.toml").write_text('timezone = "UTC"\nstate_dir = "state"\n[nats]\nlisten = "127.0.0.1:1"\n')
    (tmp_path / "w.toml").write_text(MATCH_REPEAT)
    mute = {"action": "mute", "watch": "disk-full", "duration": "1h", "by": "telegram:42"}
    events = [line("disk.full", 0), line(ANSWER_SUBJECT, 10, **mute), line("disk.full", 20), line("noise.x", 100)]
    (tmp_path / "events.jsonl").write_text("\n".join(events) + "\n")
    args = ["test", str(tmp_path / "w.toml"), "--events", str(tmp_path / "events.jsonl"), "--json"]
    code, out, err = run_cli(*args, "--config", str(tmp_path / "config.toml"))
    assert code == 0, err
    fires = [(f["at"], f["reason"].split(":")[0]) for f in json.loads(out)["fires"]]
    assert fires == [
        ("2026-11-22T12:00:00Z", "disk.full matched"),
        ("2026-11-22T13:30:00Z", "repeat 3, not acked since 2026-11-22 12"),
    ]
