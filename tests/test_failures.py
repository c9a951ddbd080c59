"""An input whose handling raises is confined: recorded as `failed` for that event (and watch),
committed so the stream moves on, never replayed, and the daemon lives.

The fault is injected into the pure engine (a kind's handler raising for marked events): every
overflow that once made processing raise is fixed, and the confinement must hold for the next
unforeseen one. `status` and `explain` are tried on state no date can hold.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import pytest
from support.engine_sim import T0, defs
from support.inprocess import InProcessDaemon
from support.waiting import until

from watchd import stepping
from watchd.engine import Engine, EventInput, Fire, KeyState, Outputs, Tick, Verdict
from watchd.engine.absent import AbsentLogic
from watchd.engine.base import EngineState
from watchd.engine.match import MatchLogic
from watchd.model import encode, make_event
from watchd.stepping import Batch, take

DOOR = """
[[watch]]
id = "guarded"
kind = "match"
on = { subject = "door.opened" }
then = ["notify.console"]

[[watch]]
id = "door-quiet"
kind = "absent"
expect = { subject = "door.opened" }
for = "1h"
then = ["notify.console"]
"""

BEYOND_YEAR_9999 = 1e300


class Boom(RuntimeError):
    pass


@pytest.fixture
def match_raises_on_boom(monkeypatch: pytest.MonkeyPatch) -> None:
    """A match watch's handler raises for events whose data has `boom`."""
    original = MatchLogic.on_event

    def on_event(self: MatchLogic, s: EngineState, key: str | None, event: EventInput) -> None:
        if event.event.data.get("boom"):
            raise Boom("cannot judge this one")
        original(self, s, key, event)

    monkeypatch.setattr(MatchLogic, "on_event", on_event)


def event_input(event_id: str, at: float, seq: int, **data: object) -> EventInput:
    return EventInput(make_event("door.opened", dict(data), id=event_id, time_s=at), at, seq)


@pytest.mark.usefixtures("match_raises_on_boom")
def test_the_engine_confines_a_failure_to_the_watch_and_the_event() -> None:
    engine = Engine()
    engine.load(defs(DOOR), T0)
    out = engine.step(event_input("e1", T0, 1, boom=True))
    (failed,) = [d for d in out.decisions if d.verdict == Verdict.FAILED]
    assert (failed.watch, failed.event_id, failed.seq) == ("guarded", "e1", 1)
    assert failed.reason == "processing failed: Boom: cannot judge this one"
    assert [(d, type(e)) for d, e in out.errors] == [(failed, Boom)]
    assert [d.watch for d in out.decisions if d.verdict == Verdict.MATCHED] == ["door-quiet"]  # judged as usual
    out = engine.step(event_input("e2", T0 + 1, 2))
    assert [f.watch for f in out.fires] == ["guarded"] and not out.errors


def test_a_timer_that_raises_fails_for_its_watch_and_is_not_run_again_in_the_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def on_timer(self: AbsentLogic, s: EngineState, key: str | None, due: float) -> None:
        raise Boom("cannot time this one")

    monkeypatch.setattr(AbsentLogic, "on_timer", on_timer)
    engine = Engine()
    engine.load(defs(DOOR), T0)
    engine.step(event_input("e1", T0, 1))
    out = engine.step(Tick(T0 + 2 * 3600))
    assert [(d.watch, d.verdict, d.event_id) for d in out.decisions] == [("door-quiet", Verdict.FAILED, None)]
    assert [f.watch for f in engine.step(event_input("e2", T0 + 2 * 3600, 2)).fires] == ["guarded"]


def test_a_step_that_raises_is_one_failed_decision_for_its_event() -> None:
    class Raising(Engine):
        def step(self, inp: EventInput | Tick) -> Outputs:
            raise RuntimeError("a bug")

    batch = Batch()
    take(Raising(), event_input("e1", T0, 7), batch)
    take(Raising(), Tick(T0 + 1), batch)
    assert [(d.watch, d.verdict, d.event_id, d.seq, d.reason) for d in batch.decisions] == [
        ("", Verdict.FAILED, "e1", 7, "processing failed: RuntimeError: a bug"),
        ("", Verdict.FAILED, None, None, "processing failed: RuntimeError: a bug"),
    ]
    assert batch.fires == [] and batch.handoffs == [] and len(batch.errors) == 2


def test_a_fire_whose_handoffs_cannot_be_made_fails_for_its_watch_only(monkeypatch: pytest.MonkeyPatch) -> None:
    original = stepping.handoffs_from_fire

    def handoffs_from_fire(fire: Fire, *args: object, **kw: object) -> object:
        if fire.watch == "bad":
            raise Boom("no handoff")
        return original(fire)

    monkeypatch.setattr(stepping, "handoffs_from_fire", handoffs_from_fire)

    def fire(watch: str) -> Fire:
        return Fire(
            watch=watch, version=1, kind="match", key="k", logical="x", fired_at=T0, reason="r", targets=["notify.x"]
        )

    batch = Batch.of(Outputs(fires=[fire("bad"), fire("good")]), Engine())
    assert [f.watch for f in batch.fires] == ["good"] and [h.watch for h in batch.handoffs] == ["good"]
    (d,) = batch.decisions
    assert (d.watch, d.key, d.verdict, d.reason) == ("bad", "k", Verdict.FAILED, "processing failed: Boom: no handoff")


@pytest.mark.usefixtures("match_raises_on_boom")
async def test_an_event_whose_processing_raises_is_recorded_failed_and_never_replayed(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = await daemon_factory({"door.toml": DOOR}).start()
    await d.publish(make_event("door.opened", {"boom": True}, id="ev-bad"), make_event("door.opened", {}, id="ev-next"))
    await until(lambda: d.decisions("guarded", "fired"), what="the event after the failing one")
    (failed,) = d.decisions("guarded", "failed")
    assert failed["event_id"] == "ev-bad" and failed["reason"] == "processing failed: Boom: cannot judge this one"
    assert len(d.decisions("door-quiet", "matched")) == 2  # the other watch judged both
    assert d.health()["ok"] and d.running.failure is None
    assert "watch guarded failed on event ev-bad" in d.logged() and "Boom: cannot judge this one" in d.logged()

    shown = await d.cli("explain", "--event", "ev-bad")
    assert shown.returncode == 0 and "guarded failed" in shown.stdout, shown.stdout
    assert "door-quiet matched" in shown.stdout, shown.stdout
    shown = await d.cli("explain", "guarded")
    assert shown.returncode == 0 and "fired once" in shown.stdout, shown.stdout
    status = await d.cli("status")
    assert status.returncode == 0, status.stderr

    committed = d.last_seq()
    await d.stop()
    await d.start()
    await d.publish(make_event("door.opened", {"boom": True}, id="ev-after"))
    await until(lambda: len(d.decisions("guarded", "failed")) == 2, what="the event after the restart")
    assert [f["event_id"] for f in d.decisions("guarded", "failed")] == ["ev-bad", "ev-after"]  # none replayed
    assert d.last_seq() == committed + 1
    shown = await d.cli("explain", "guarded")
    assert shown.returncode == 0 and "failed on event ev-after" in shown.stdout, shown.stdout


FAR = """
[[watch]]
id = "quiet"
kind = "absent"
expect = { subject = "hb" }
for = "1h"
then = ["notify.console"]

[[watch]]
id = "due"
kind = "deadline"
opens = { subject = "job.started" }
expect = { subject = "job.done" }
within = "1h"
then = ["notify.console"]
"""


async def test_status_and_explain_show_instants_no_date_can_hold(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = await daemon_factory({"far.toml": FAR}).start()
    await d.stop()
    with sqlite3.connect(d.db_path) as conn:
        rows = [
            ("quiet", "null", encode(KeyState(last_seen=BEYOND_YEAR_9999))),
            ("due", "null", encode(KeyState(windows=((T0, BEYOND_YEAR_9999),)))),
            ("due", '"k"', encode(KeyState(windows=((-BEYOND_YEAR_9999, T0),)))),
        ]
        conn.executemany("INSERT OR REPLACE INTO key_state VALUES (?, ?, ?)", rows)
    conn.close()
    for args in (("status",), ("status", "--json"), ("explain", "quiet"), ("explain", "due", "--json")):
        shown = await d.cli(*args)
        assert shown.returncode == 0 and "Traceback" not in shown.stderr, (args, shown.stderr)
    await d.start()
    await d.publish(make_event("job.started", {}))
    await until(lambda: d.decisions("due", "window_opened"), what="the daemon going on")
    assert d.health()["ok"]
