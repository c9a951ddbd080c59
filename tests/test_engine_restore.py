"""The engine's state through SQLite and back: what `load_engine_state` reads is what the engine
held when `commit_step` wrote it (every kind's fields: a count's hits and evidence, an absent key's
last event, a deadline's windows, an open incident with its evidence), and a restored engine
fires exactly as the one that kept running."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from support.engine_sim import T0, Sim, defs

from watchd.engine import Engine, Tick
from watchd.store import schema
from watchd.store.engine_state import commit_step, load_engine_state

WATCHES = """
[[watch]]
id = "burst"
kind = "match"
on = { subject = "err", key = "data.host" }
count = 3
window = "10m"
then = ["notify.console"]

[[watch]]
id = "quiet"
kind = "absent"
expect = { subject = "hb", key = "data.host" }
for = "15m"
repeat = "5m"
then = ["notify.console"]

[[watch]]
id = "reply"
kind = "deadline"
opens = { subject = "ask", key = "data.id" }
expect = { subject = "answer", key = "data.id" }
within = "30m"
then = ["notify.console"]
"""


def saved(engine: Engine, db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db)
    schema.create(conn)
    commit_step(
        conn,
        last_seq=None,
        clock=engine.clock,
        changes=engine.take_changes(),
        decisions=[],
        handoffs=[],
        subjects={},
        now=engine.clock,
    )
    return conn


def test_a_restored_state_is_the_one_saved_and_fires_the_same(tmp_path: Path) -> None:
    sim = Sim(WATCHES)
    for host in ("a", "b"):
        sim.emit("err", {"host": host, "n": 1}, after=1)
        sim.emit("err", {"host": host, "n": 2}, after=1)  # two of three: hits and evidence kept
        sim.emit("hb", {"host": host, "up": True}, after=1)
    sim.emit("ask", {"id": "q1"}, after=1)
    sim.emit("ask", {"id": "q1"}, after=60)  # two windows open
    sim.advance(16 * 60)  # the absent keys fire: incidents open, with a repeat due
    sim.emit("hb", {"host": "a"}, after=1)  # a resumes: its incident ends
    assert sim.engine.keys["burst"]["a"].hits and sim.engine.keys["reply"]["q1"].windows
    assert sim.engine.keys["quiet"]["b"].incident_evidence

    conn = saved(sim.engine, tmp_path / "state.db")
    keys, meta, clock = load_engine_state(conn)
    assert keys == sim.engine.keys and meta == sim.engine.meta and clock == sim.engine.clock

    restored = Engine()
    restored.restore(keys, meta, clock)
    restored.load(defs(WATCHES), clock)
    assert restored.next_due() == sim.engine.next_due()
    fired = []
    for minutes in (5, 15, 31, 60):
        at = T0 + minutes * 60 * 3
        kept, back = sim.engine.step(Tick(at)), restored.step(Tick(at))
        assert back.fires == kept.fires and back.decisions == kept.decisions
        fired += kept.fires
    assert {f.watch for f in fired} == {"quiet", "reply"}  # repeats of b's silence, missed deadlines
    assert restored.keys == sim.engine.keys
