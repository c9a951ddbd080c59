"""An input whose handling raises is confined: recorded as `failed` for that event (and watch),
committed so the stream moves on, never replayed, and the daemon lives.

The failure here is a natural one: a state row an older watchd could leave behind (a cooldown
from before durations were bounded, ending past year 9999, which no instant can be written as).
"""

from __future__ import annotations

import sqlite3
import tomllib
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec
from support.inprocess import InProcessDaemon
from support.waiting import until

from watchd.config import Watch, WatchDef
from watchd.engine import Engine, EventInput, Fire, KeyState, Outputs, Tick, Verdict
from watchd.model import encode, make_event
from watchd.stepping import Batch, take

DOOR = """
[[watch]]
id = "guarded"
kind = "match"
on = { subject = "door.opened" }
cooldown = "1h"
then = ["notify.console"]

[[watch]]
id = "loud"
kind = "match"
on = { subject = "door.opened" }
then = ["notify.console"]
"""

BEYOND_YEAR_9999 = 1e300
T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC).timestamp()


def defs(text: str) -> list[tuple[WatchDef, int]]:
    raw = tomllib.loads(text)
    return [(WatchDef(msgspec.convert(w, Watch), "t.toml", 1, str(i)), 1) for i, w in enumerate(raw["watch"])]


def event_input(event_id: str, at: float, seq: int) -> EventInput:
    return EventInput(make_event("door.opened", {}, id=event_id, time_s=at), at, seq)


def broken_engine() -> Engine:
    engine = Engine()
    engine.restore({"guarded": {None: KeyState(last_fire=BEYOND_YEAR_9999)}}, {}, 0.0)
    engine.load(defs(DOOR), T0)
    return engine


def test_the_engine_confines_a_failure_to_the_watch_and_the_event() -> None:
    engine = broken_engine()
    for seq in (1, 2):
        out = engine.step(event_input(f"e{seq}", T0 + seq, seq))
        failed = [d for d in out.decisions if d.verdict == Verdict.FAILED]
        assert [(d.watch, d.event_id, d.seq) for d in failed] == [("guarded", f"e{seq}", seq)]
        assert failed[0].reason.startswith("processing failed: OverflowError")
        assert [f.watch for f in out.fires] == ["loud"]  # the other watch judged the event as usual
        assert [(d, type(e).__name__) for d, e in out.errors] == [(failed[0], "OverflowError")]


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


def test_a_fire_whose_handoffs_cannot_be_made_fails_for_its_watch_only() -> None:
    def fire(watch: str, window: tuple[float, float]) -> Fire:
        return Fire(
            watch=watch,
            version=1,
            kind="absent",
            key="k",
            logical="x",
            fired_at=T0,
            reason="r",
            targets=["notify.console"],
            window=window,
        )

    batch = Batch.of(Outputs(fires=[fire("bad", (T0, BEYOND_YEAR_9999)), fire("good", (T0 - 60, T0))]), Engine())
    assert [f.watch for f in batch.fires] == ["good"] and [h.watch for h in batch.handoffs] == ["good"]
    (d,) = batch.decisions
    assert (d.watch, d.key, d.verdict) == ("bad", "k", Verdict.FAILED)


async def test_an_event_whose_processing_raises_is_recorded_failed_and_never_replayed(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = await daemon_factory({"door.toml": DOOR}).start()
    await d.stop()
    with sqlite3.connect(d.db_path) as conn:
        state = encode(KeyState(last_fire=BEYOND_YEAR_9999))
        conn.execute("INSERT OR REPLACE INTO key_state VALUES (?, ?, ?)", ("guarded", "null", state))
    conn.close()

    await d.start()
    await d.publish(make_event("door.opened", {}, id="ev-bad"), make_event("door.opened", {}, id="ev-next"))
    await until(lambda: len(d.decisions("loud", "fired")) == 2, what="both events judged by the other watch")
    failed = d.decisions("guarded", "failed")
    assert [f["event_id"] for f in failed] == ["ev-bad", "ev-next"]
    assert all(f["reason"].startswith("processing failed: OverflowError") for f in failed)
    assert d.health()["ok"] and not d.running.upkeep.crashed()
    assert "watch guarded failed on event ev-bad" in d.logged()

    shown = await d.cli("explain", "--event", "ev-bad")
    assert shown.returncode == 0 and "guarded failed" in shown.stdout and "loud fired" in shown.stdout, shown.stdout
    shown = await d.cli("explain", "guarded")
    assert shown.returncode == 0 and "failed on event ev-next" in shown.stdout, shown.stdout
    status = await d.cli("status")
    assert status.returncode == 0, status.stderr

    committed = d.last_seq()
    await d.stop()
    await d.start()
    await d.publish(make_event("door.opened", {}, id="ev-after"))
    await until(lambda: len(d.decisions("loud", "fired")) == 3, what="the event after the restart")
    assert [f["event_id"] for f in d.decisions("guarded", "failed")] == ["ev-bad", "ev-next", "ev-after"]
    assert d.last_seq() == committed + 1
