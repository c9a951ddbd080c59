"""The engine's state through SQLite and back: what `load_engine_state` reads is what the engine
held when `commit_step` wrote it (every kind's fields: a count's hits and evidence, an absent key's
last event, a deadline's windows, an open incident with its evidence), and a restored engine
fires exactly as the one that kept running."""

from __future__ import annotations

import functools
import json
import sqlite3
from pathlib import Path

import pytest
from support.engine_sim import T0, Sim, defs

from watchd.engine import Engine, EventInput, Tick
from watchd.engine.base import STORED
from watchd.model import make_event
from watchd.store import engine_state, schema
from watchd.store.engine_state import commit_step, load_engine_state, stored_evidence

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


def test_an_absent_keys_evidence_left_in_sqlite_is_read_when_it_fires_and_kept_when_written(tmp_path: Path) -> None:
    """Read lazily (as the daemon reads its state), an absent key holds no evidence in memory: a
    fire reads it from the database, and a write of the key's row (here its silence, then a
    rewind of every key) keeps it there. The fires equal those of the engine that kept running."""
    sim = Sim(WATCHES)
    sim.emit("hb", {"host": "a", "up": True}, after=1)
    sim.emit("hb", {"host": "b", "n": 1}, after=1)
    sim.emit("err", {"host": "a"}, after=1)  # a count's evidence stays in memory
    conn = saved(sim.engine, tmp_path / "state.db")

    keys, meta, clock = load_engine_state(conn, lazy_evidence=True)
    assert keys["quiet"]["a"].evidence is STORED and keys["quiet"]["b"].evidence is STORED
    assert keys["burst"]["a"].evidence == sim.engine.keys["burst"]["a"].evidence
    restored = Engine()
    restored.restore(keys, meta, clock)
    restored.stored_evidence = functools.partial(stored_evidence, conn)
    restored.load(defs(WATCHES), clock)
    at = T0 + 16 * 60
    kept, back = sim.engine.step(Tick(at)), restored.step(Tick(at))
    assert [f.evidence for f in back.fires] == [f.evidence for f in kept.fires]
    assert [f.evidence[0]["data"] for f in back.fires] == [{"host": "a", "up": True}, {"host": "b", "n": 1}]

    restored.rewind(at - 60)  # every key's row written again, its evidence still left in the database
    commit_step(
        conn,
        last_seq=None,
        clock=restored.clock,
        changes=restored.take_changes(),
        decisions=[],
        handoffs=[],
        subjects={},
        now=restored.clock,
    )
    again, _, _ = load_engine_state(conn)
    assert again["quiet"]["a"].evidence == sim.engine.keys["quiet"]["a"].evidence
    assert again["quiet"]["b"].silent and again["quiet"]["b"].evidence == sim.engine.keys["quiet"]["b"].evidence


def test_a_count_keeps_its_newest_events_in_order_across_a_restart_from_an_old_row(tmp_path: Path) -> None:
    """A counted event is added to the key's evidence without the others decoded: the fire shows
    the newest five in arrival order, also when the first were read from a row stored as a JSON
    array by an older watchd."""
    text = WATCHES.replace("count = 3", "count = 8")
    conn = sqlite3.connect(tmp_path / "state.db")
    schema.create(conn)
    old = [
        {"id": f"e{n}", "subject": "err", "time": "2026-11-22T12:00:00Z", "data": {"host": "a", "n": n}} for n in (1, 2)
    ]
    row = json.dumps({"hits": [T0, T0 + 1], "evidence": old}).encode()
    conn.execute("INSERT INTO key_state VALUES (?, ?, ?)", ("burst", '"a"', row))
    keys, meta, _ = load_engine_state(conn)
    engine = Engine()
    engine.restore(keys, meta, T0 + 1)
    engine.load(defs(text), T0 + 1)
    fires = []
    for n in range(3, 9):
        event = make_event("err", {"host": "a", "n": n}, id=f"e{n}", time_s=T0 + n)
        fires += engine.step(EventInput(event, T0 + n, n)).fires
    assert [e["data"]["n"] for f in fires for e in f.evidence] == [4, 5, 6, 7, 8]


def test_the_state_read_in_chunks_is_the_state_saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows are read a chunk at a time (here 2): every key of every chunk comes back, with its
    shard's filter applied per chunk."""
    monkeypatch.setattr(engine_state, "LOAD_CHUNK", 2)
    sim = Sim(WATCHES)
    for n in range(7):
        sim.emit("hb", {"host": f"h{n}"}, after=1)
        sim.emit("err", {"host": f"h{n}"}, after=1)
    conn = saved(sim.engine, tmp_path / "state.db")
    keys, _, _ = load_engine_state(conn)
    assert keys == sim.engine.keys and len(keys["quiet"]) == len(keys["burst"]) == 7
    only, _, _ = load_engine_state(conn, keep=lambda watch: watch == "burst")
    assert only == {"burst": sim.engine.keys["burst"]}
