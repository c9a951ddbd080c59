"""The pure core, driven by a virtual clock: every watch kind, per key, timers, restarts, DST."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import msgspec
import pytest
from support.engine_sim import T0, Sim, defs

from watchd.engine import Engine, KeyState, Tick, Verdict, WatchMeta, compile_watch
from watchd.engine.kinds import KINDS

MATCH = """
[[watch]]
id = "urgent"
kind = "match"
on = { subject = "mail.received", where = 'data.from.endsWith("@big.com") && data.urgent' }
then = ["notify.console"]
"""


def test_match_fires_per_matching_event_with_evidence() -> None:
    sim = Sim(MATCH)
    fires = sim.emit("mail.received", {"from": "a@big.com", "urgent": True})
    assert len(fires) == 1
    assert fires[0].watch == "urgent" and fires[0].evidence[0]["data"]["from"] == "a@big.com"
    assert fires[0].targets == ["notify.console"]
    assert sim.emit("mail.received", {"from": "a@small.com", "urgent": True}) == []
    assert sim.emit("mail.other", {"from": "a@big.com", "urgent": True}) == []
    assert sim.verdicts("urgent") == ["fired", "where_false"]


def test_where_error_is_false_with_reason_and_never_stops_the_engine() -> None:
    sim = Sim(MATCH)
    assert sim.emit("mail.received", {"from": "a@big.com"}) == []  # no `urgent` field
    assert sim.emit("mail.received", {"from": 5, "urgent": True}) == []  # wrong type
    errors = [d for d in sim.decisions if d.verdict == "where_error"]
    assert len(errors) == 2
    assert "urgent" in errors[0].reason
    assert "endsWith" in errors[1].reason
    assert len(sim.emit("mail.received", {"from": "b@big.com", "urgent": True})) == 1


def test_handoff_identity_is_deterministic() -> None:
    a, b = Sim(MATCH), Sim(MATCH)
    fa = a.emit("mail.received", {"from": "a@big.com", "urgent": True}, id="same")[0]
    fb = b.emit("mail.received", {"from": "a@big.com", "urgent": True}, id="same", after=30)[0]
    assert fa.handoff_id("notify.console") == fb.handoff_id("notify.console")
    assert fa.handoff_id("notify.console") != fa.handoff_id("notify.other")


COUNT = """
[[watch]]
id = "login-storm"
kind = "match"
on = { subject = "auth.failed", key = "data.user" }
count = 3
window = "10m"
then = ["notify.console"]
"""


def test_count_in_sliding_window_per_key() -> None:
    sim = Sim(COUNT)
    for _ in range(2):
        assert sim.emit("auth.failed", {"user": "bob"}, after=60) == []
    assert sim.emit("auth.failed", {"user": "eve"}, after=60) == []  # another key does not add up
    fires = sim.emit("auth.failed", {"user": "bob"}, after=60)
    assert [f.key for f in fires] == ["bob"]
    assert len(fires[0].evidence) == 3
    assert "3 × auth.failed within 10m" in fires[0].reason
    counted = [d.reason for d in sim.decisions if d.verdict == "counted"]
    assert counted[:2] == ["1 of 3 in 10m", "2 of 3 in 10m"]


def test_count_window_slides() -> None:
    sim = Sim(COUNT)
    sim.emit("auth.failed", {"user": "bob"})
    sim.emit("auth.failed", {"user": "bob"}, after=400)
    # the first hit is now 11 minutes old: only 2 inside the window
    assert sim.emit("auth.failed", {"user": "bob"}, after=260) == []
    assert len(sim.emit("auth.failed", {"user": "bob"}, after=10)) == 1


def test_cooldown_suppresses_refires_per_key() -> None:
    sim = Sim("""
[[watch]]
id = "cpu"
kind = "match"
on = { subject = "cpu.hot", key = "data.host" }
cooldown = "30m"
""")
    assert len(sim.emit("cpu.hot", {"host": "a"})) == 1
    assert sim.emit("cpu.hot", {"host": "a"}, after=600) == []
    assert len(sim.emit("cpu.hot", {"host": "b"})) == 1
    suppressed = [d for d in sim.decisions if d.verdict == "suppressed"]
    assert len(suppressed) == 1 and suppressed[0].reason.startswith("cooldown until 2026-11-22T12:30:00")
    assert len(sim.emit("cpu.hot", {"host": "a"}, after=1201)) == 1


ABSENT = """
[[watch]]
id = "laptop-alive"
kind = "absent"
expect = { subject = "heartbeat.*", key = "data.host" }
for = "15m"
recover = true
then = ["notify.console"]
"""


def test_absent_per_key_fires_once_per_silence_and_recovers() -> None:
    sim = Sim(ABSENT)
    assert sim.engine.next_due() is None  # keys are known once seen
    sim.emit("heartbeat.x1", {"host": "x1"})
    sim.emit("heartbeat.x2", {"host": "x2"}, after=300)
    assert sim.engine.next_due() == T0 + 900
    fires = sim.advance(600)
    assert [(f.key, f.kind) for f in fires] == [("x1", "absent")]
    assert "no heartbeat.* for key x1 for 15m" in fires[0].reason
    assert sim.advance(3600) and [f.key for f in sim.fires] == ["x1", "x2"]  # x2 went silent too
    assert sim.advance(3600) == []  # once per silence
    rec = sim.emit("heartbeat.x1", {"host": "x1"})
    assert [f.key for f in rec] == ["x1"] and "resumed after" in rec[0].reason
    assert rec[0].handoff_id("t") != sim.fires[0].handoff_id("t")


def test_absent_without_key_counts_from_start_and_listed_keys() -> None:
    sim = Sim("""
[[watch]]
id = "digest"
kind = "absent"
expect = { subject = "digest.sent" }
for = "1d"

[[watch]]
id = "hosts"
kind = "absent"
expect = { subject = "hb", key = "data.host" }
keys = ["nas", "pi"]
for = "1h"
""")
    fires = sim.advance(3600)
    assert sorted(f.key or "" for f in fires) == ["nas", "pi"]
    assert "never seen since the watch started" in fires[0].reason
    fires = sim.advance(86400)
    assert [f.watch for f in fires] == ["digest"]


def test_overdue_timer_after_restart_fires_once_and_says_how_late() -> None:
    sim = Sim(ABSENT)
    sim.emit("heartbeat.x1", {"host": "x1"})
    # persist, "crash", restore into a new engine 2 hours later
    keys = {
        w: {k: msgspec.json.decode(msgspec.json.encode(s), type=KeyState) for k, s in ks.items()}
        for w, ks in sim.engine.keys.items()
    }
    meta = {w: msgspec.json.decode(msgspec.json.encode(m), type=WatchMeta) for w, m in sim.engine.meta.items()}
    later = sim.now + 7200
    engine = Engine()
    engine.restore(keys, meta, sim.engine.clock)
    engine.load(defs(ABSENT), later)
    out = engine.step(Tick(later))
    assert len(out.fires) == 1
    assert out.fires[0].late_s == pytest.approx(7200 - 900)
    assert "1h45m late" in out.fires[0].reason
    assert engine.step(Tick(later + 10)).fires == []


DEADLINE_CRON = """
[[watch]]
id = "nightly-backup"
kind = "deadline"
opens = { cron = "0 1 * * *", timezone = "Europe/Berlin" }
expect = { subject = "backup.done", where = "data.exit_code == 0" }
within = "2h"
then = ["notify.console"]
"""

BERLIN = ZoneInfo("Europe/Berlin")


def berlin(*args: int) -> float:
    return datetime(*args, tzinfo=BERLIN).timestamp()  # type: ignore[misc]


def test_deadline_from_schedule_fires_when_missed() -> None:
    sim = Sim(DEADLINE_CRON, now=berlin(2026, 11, 22, 0, 0))
    assert sim.engine.next_due() == berlin(2026, 11, 22, 1, 0)
    sim.advance(3600)  # 01:00: window opens
    assert "window_opened" in sim.verdicts("nightly-backup")
    sim.emit("backup.done", {"exit_code": 1}, after=600)  # failed backup does not count
    fires = sim.advance(2 * 3600)
    assert len(fires) == 1
    assert fires[0].reason == (
        "no backup.done with data.exit_code == 0 between 2026-11-22 01:00 and 2026-11-22 03:00 Europe/Berlin"
    )
    assert fires[0].window == (berlin(2026, 11, 22, 1, 0), berlin(2026, 11, 22, 3, 0))


def test_deadline_met_closes_window_and_early_expect_does_not_count() -> None:
    sim = Sim(DEADLINE_CRON, now=berlin(2026, 11, 22, 0, 0))
    sim.emit("backup.done", {"exit_code": 0}, after=1800)  # 00:30, before the window opens
    assert sim.decisions[-1].reason == "no window open: does not count"
    sim.advance(1800)  # 01:00 opens
    sim.emit("backup.done", {"exit_code": 0}, after=3000)
    assert sim.decisions[-1].verdict == "window_closed"
    assert sim.advance(3 * 3600) == []
    # the next night, nothing arrives
    fires = sim.advance(24 * 3600)
    assert len(fires) == 1 and "2026-11-23 01:00" in fires[0].reason


@pytest.mark.parametrize(
    "day", [(2026, 3, 29), (2026, 10, 25), (2026, 3, 28), (2026, 10, 26)], ids=["gap", "fold", "before", "after"]
)
def test_deadline_cron_on_dst_days_opens_once_at_local_time(day: tuple[int, int, int]) -> None:
    sim = Sim(DEADLINE_CRON, now=berlin(*day, 0, 0))
    fires = sim.advance(20 * 3600)
    opened = [d for d in sim.decisions if d.verdict == "window_opened"]
    assert len(opened) == 1  # not twice on the fold day, not zero on the gap day
    assert len(fires) == 1
    assert fires[0].window is not None
    assert fires[0].window[0] == berlin(*day, 1, 0)
    assert fires[0].window[1] - fires[0].window[0] == 7200


def test_deadline_in_dst_gap_and_fold_for_fixed_hour() -> None:
    text = DEADLINE_CRON.replace('"0 1 * * *"', '"30 2 * * *"')
    gap = Sim(text, now=berlin(2026, 3, 29, 0, 0))
    gap.advance(24 * 3600)
    opened = [d for d in gap.decisions if d.verdict == "window_opened"]
    assert len(opened) == 1  # 02:30 does not exist: runs once, at the 03:00 transition
    assert gap.fires[0].window and gap.fires[0].window[0] == berlin(2026, 3, 29, 3, 0)
    fold = Sim(text, now=berlin(2026, 10, 25, 0, 0))
    fold.advance(24 * 3600)
    assert len([d for d in fold.decisions if d.verdict == "window_opened"]) == 1  # not twice


DEADLINE_EVENT = """
[[watch]]
id = "pr-needs-review"
kind = "deadline"
opens = { subject = "github.pull_request", where = 'data.action == "opened"', key = "data.number" }
expect = { subject = "github.pull_request_review", key = "data.pull_request.number" }
within = "24h"
then = ["notify.team"]
"""


def test_deadline_opened_by_event_per_key() -> None:
    sim = Sim(DEADLINE_EVENT)
    sim.emit("github.pull_request", {"action": "opened", "number": 7})
    sim.emit("github.pull_request", {"action": "opened", "number": 8}, after=60)
    sim.emit("github.pull_request", {"action": "closed", "number": 9}, after=60)
    sim.emit("github.pull_request_review", {"pull_request": {"number": 8}}, after=3600)
    sim.emit("github.pull_request_review", {"pull_request": {"number": 99}}, after=60)  # no window for 99
    fires = sim.advance(24 * 3600)
    assert [f.key for f in fires] == ["7"]
    assert fires[0].reason == "no github.pull_request_review for key 7 within 24h of github.pull_request"
    assert fires[0].evidence[0]["data"]["number"] == 7
    assert sim.engine.keys.get("pr-needs-review", {}) == {}  # closed and fired keys are forgotten
    assert sim.advance(48 * 3600) == []


def test_expect_after_deadline_does_not_close_and_late_fire_is_once() -> None:
    sim = Sim(DEADLINE_EVENT)
    sim.emit("github.pull_request", {"action": "opened", "number": 1})
    # the review arrives 25h later, but watchd only learns of it now: the window fires first
    fires = sim.emit("github.pull_request_review", {"pull_request": {"number": 1}}, after=25 * 3600)
    assert len(fires) == 1 and fires[0].key == "1"
    assert sim.decisions[-1].reason == "no window open: does not count"


def test_downtime_over_many_windows_fires_only_the_latest() -> None:
    sim = Sim(
        DEADLINE_CRON.replace('"0 1 * * *"', '"0 * * * *"').replace('"2h"', '"30m"'), now=berlin(2026, 11, 22, 0, 5)
    )
    fires = sim.jump(3 * 86400)  # three days with no clock tick: watchd was down
    assert len(fires) == 1
    assert "late" in fires[0].reason
    missed = [d for d in sim.decisions if d.verdict == "missed_while_down"]
    assert len(missed) == 70  # 72 windows opened; the last is still open, the 71st fires


def test_shadow_mode_records_would_fire_without_firing() -> None:
    sim = Sim(MATCH.replace('then = ["notify.console"]', 'then = ["notify.console"]\nmode = "shadow"'))
    assert sim.emit("mail.received", {"from": "a@big.com", "urgent": True}) == []
    assert sim.verdicts("urgent") == ["would_fire"]


def test_disabled_watch_is_not_evaluated() -> None:
    sim = Sim(MATCH + "enabled = false\n")
    assert sim.emit("mail.received", {"from": "a@big.com", "urgent": True}) == []
    assert sim.decisions == []


def test_reload_keeps_state_and_bumps_version() -> None:
    sim = Sim(ABSENT)
    sim.emit("heartbeat.x1", {"host": "x1"})
    changed = defs(ABSENT.replace('"15m"', '"10m"'))
    changed = [(d, 2) for d, _ in changed]
    sim.engine.load(changed, sim.now)
    fires = sim.advance(600)
    assert len(fires) == 1 and fires[0].version == 2 and fires[0].key == "x1"


def test_removed_watch_state_is_deleted() -> None:
    sim = Sim(ABSENT)
    sim.emit("heartbeat.x1", {"host": "x1"})
    sim.engine.take_changes()
    sim.engine.load([], sim.now)
    _, _, deleted = sim.engine.take_changes()
    assert deleted == {"laptop-alive"}
    assert sim.engine.next_due() is None


def test_wildcards_and_subject_index() -> None:
    sim = Sim("""
[[watch]]
id = "all-github"
kind = "match"
on = { subject = "github.>" }

[[watch]]
id = "one-token"
kind = "match"
on = { subject = "github.*" }
""")
    assert sorted(f.watch for f in sim.emit("github.push")) == ["all-github", "one-token"]
    assert [f.watch for f in sim.emit("github.push.main")] == ["all-github"]
    assert sim.emit("github") == []


def test_same_inputs_same_outputs() -> None:
    """Determinism: the property replay, explain and backtesting stand on."""

    def run() -> list[tuple[str, str | None, str, float]]:
        sim = Sim(ABSENT + COUNT + DEADLINE_EVENT)
        for i in range(50):
            sim.emit("heartbeat.h", {"host": f"h{i % 3}"}, after=(i * 37) % 600)
            sim.emit("auth.failed", {"user": f"u{i % 2}"}, after=(i * 13) % 120)
            if i % 7 == 0:
                sim.emit("github.pull_request", {"action": "opened", "number": i})
            sim.advance(400)
        return [(f.watch, f.key, f.logical, f.fired_at) for f in sim.fires]

    first = run()
    assert first and first == run()


def test_time_never_goes_backwards() -> None:
    sim = Sim(ABSENT)
    sim.emit("heartbeat.x1", {"host": "x1"})
    sim.advance(100)
    sim.now -= 50  # an event stamped earlier than the engine clock
    sim.emit("heartbeat.x1", {"host": "x1"})
    assert sim.engine.keys["laptop-alive"]["x1"].last_seen == T0 + 100


def test_near_misses_carry_their_key() -> None:
    sim = Sim(COUNT.replace('key = "data.user"', 'key = "data.user", where = "data.remote"'))
    sim.emit("auth.failed", {"user": "bob", "remote": False})
    sim.emit("auth.failed", {"user": "eve"})  # the where errors: still eve's
    sim.emit("auth.failed", {"remote": False})  # no user: the miss has no key
    sim.emit("auth.failed", {"user": "bob", "remote": True})
    assert [(d.verdict, d.key) for d in sim.decisions] == [
        ("where_false", "bob"),
        ("where_error", "eve"),
        ("where_false", None),
        ("counted", "bob"),
    ]
    assert sim.decisions[1].reason == "where errored: no such field 'remote' (in data.remote)"


def test_a_window_under_a_minute_is_told_to_the_second() -> None:
    sim = Sim(
        DEADLINE_CRON.replace('"0 1 * * *"', '"24 6 * * *"').replace('"2h"', '"30s"'), now=berlin(2026, 11, 22, 6, 0)
    )
    fires = sim.advance(3600)
    assert [d.reason for d in sim.decisions if d.verdict == "window_opened"] == [
        "window opened until 2026-11-22 06:24:30"
    ]
    assert fires[0].reason == (
        "no backup.done with data.exit_code == 0 between 2026-11-22 06:24:00 and 2026-11-22 06:24:30 Europe/Berlin"
    )
    missed = Sim(
        DEADLINE_CRON.replace('"0 1 * * *"', '"* * * * *"').replace('"2h"', '"30s"'), now=berlin(2026, 11, 22, 6, 0)
    )
    missed.jump(180)
    assert [d.reason for d in missed.decisions if d.verdict == "missed_while_down"] == [
        "window 2026-11-22 06:00:00–2026-11-22 06:00:30 passed while watchd was down",
        "window 2026-11-22 06:01:00–2026-11-22 06:01:30 passed while watchd was down",
    ]


def test_verdicts_are_one_enum_whose_values_are_the_stored_words() -> None:
    # The values are what the decisions table holds: renaming one would orphan existing rows.
    assert {v.value for v in Verdict} == {
        "matched",
        "where_false",
        "where_error",
        "key_error",
        "counted",
        "suppressed",
        "fired",
        "would_fire",
        "window_opened",
        "window_closed",
        "recovered",
        "missed_while_down",
        "rejected",
        "failed",
        "acked",
        "snoozed",
        "muted",
        "unmuted",
        "held",
        "snooze_ended",
        "mute_ended",
        "resolved",
    }
    sim = Sim(MATCH + COUNT + ABSENT + DEADLINE_EVENT)
    sim.emit("mail.received", {"from": "a@big.com", "urgent": True})
    sim.emit("mail.received", {"from": "a@small.com", "urgent": True})
    sim.emit("auth.failed", {"user": "bob"})
    sim.emit("heartbeat.x1", {"host": "x1"})
    sim.emit("github.pull_request", {"action": "opened", "number": 1})
    sim.advance(86400)
    assert len({d.verdict for d in sim.decisions}) == 5
    assert all(type(d.verdict) is Verdict for d in sim.decisions)


def test_each_kind_is_one_class_from_the_registry() -> None:
    watches = {d.watch.id: compile_watch(d.watch, 1, "UTC") for d, _ in defs(MATCH + COUNT + ABSENT + DEADLINE_EVENT)}
    assert {w: type(logic).__name__ for w, logic in watches.items()} == {
        "urgent": "MatchLogic",
        "login-storm": "CountLogic",
        "laptop-alive": "AbsentLogic",
        "pr-needs-review": "DeadlineLogic",
    }
    assert watches["login-storm"].kind == "match"  # a count is a match with count and window
    assert set(map(type, watches.values())) == set(KINDS)  # one class per kind, each registered


def test_next_due_per_key_comes_from_the_kind() -> None:
    sim = Sim(ABSENT)
    sim.emit("heartbeat.x1", {"host": "x1"})
    sim.emit("heartbeat.x2", {"host": "x2"}, after=60)
    assert sim.engine.watch_next_due("laptop-alive") == T0 + 900
    assert sim.engine.watch_next_due("laptop-alive", "x2") == T0 + 960
    assert sim.engine.watch_next_due("laptop-alive", "nope") is None
