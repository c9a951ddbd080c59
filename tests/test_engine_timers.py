"""The engine's timers (near heap + entries filed by minute): the live entry that comes first is
always the earliest due of all keys, after any sequence of arming (a due moving earlier or later,
within its minute or across minutes), a due moving later with no new entry (an absent key heard
again: its old entry is filed again when found), forgetting, restarts and firing."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from support.engine_sim import Sim

from watchd.engine.timers import BUCKET_S, Timers

KEYS = ["a", "b", "c", None]  # None: the one key of a watch without keys (its own watch here)
dues = st.one_of(
    st.floats(min_value=0, max_value=20 * BUCKET_S, allow_nan=False),
    st.integers(min_value=0, max_value=20).map(lambda m: m * BUCKET_S),  # on a minute's edge
    st.sampled_from([1e15, math.inf]),
)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("arm"), st.sampled_from(KEYS), dues),
        st.tuples(st.just("later"), st.sampled_from(KEYS), st.floats(min_value=0, max_value=5 * BUCKET_S)),
        st.tuples(st.just("forget"), st.sampled_from(KEYS), st.just(0.0)),
        st.tuples(st.just("fire"), st.just(None), st.floats(min_value=0, max_value=25 * BUCKET_S)),
        st.tuples(st.just("restart"), st.just(None), st.just(0.0)),
    ),
    max_size=60,
)


def wid(key: str | None) -> str:
    return "w" if key is not None else "v"


def earliest(current: dict[str | None, float]) -> tuple[float, str, str | None] | None:
    return min(((due, wid(k), k) for k, due in current.items()), default=None)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_the_earliest_due_comes_first(steps: list[tuple[str, str | None, float]]) -> None:
    current: dict[str | None, float] = {}
    timers = Timers(lambda wid, key: current.get(key))
    for op, key, value in steps:
        if op == "arm":
            current[key] = value
            timers.push(value, wid(key), key)
        elif op == "later":  # heard again: the due moves later and nothing is armed
            if key in current:
                current[key] += value
        elif op == "forget":
            current.pop(key, None)
        elif op == "restart":  # every key armed afresh, at once
            timers = Timers(lambda wid, key: current.get(key))
            for w in ("w", "v"):
                timers.push_keys(w, [(due, k) for k, due in current.items() if wid(k) == w])
        else:  # fire everything due by `value`, as the engine's step does: a fired key is forgotten
            fired: list[float] = []
            while (got := timers.first(until=value)) is not None:
                assert got == earliest(current) and got[0] <= value
                low = timers.earliest_possible()
                assert low is not None and low <= got[0]
                timers.pop()
                fired.append(got[0])
                del current[got[2]]
            assert sorted(fired) == fired  # in time order
            after = earliest(current)
            assert after is None or after[0] > value  # everything due by then fired
        assert timers.first() == earliest(current)


def test_a_restart_with_many_keys_files_them_by_minute() -> None:
    """The far future costs no tuple per key: 10,000 keys due in an hour sit in one minute."""
    current = {f"k{i}": 3600.0 + i / 1000 for i in range(10_000)}
    timers = Timers(lambda wid, key: current.get(key or ""))
    for key, due in current.items():
        timers.push(due, "w", key)
    assert timers.earliest_possible() == 3600.0  # the minute's start: nothing is due before it
    assert timers.first() == (3600.0, "w", "k0")
    current["k0"] = 7200.0  # heard again: its entry is stale, and a new one is filed
    timers.push(7200.0, "w", "k0")
    assert timers.first() == (3600.001, "w", "k1")


def test_firing_what_is_due_leaves_a_later_minute_unread() -> None:
    """The step that fires the last key due before a minute of 10,000 keys does not read that
    minute (a few hundred ms for 100,000): its commit would wait for it."""
    current: dict[str | None, float] = {"early": 100.0} | {f"k{i}": 3600.0 for i in range(10_000)}
    read: list[str | None] = []

    def due_of(wid: str, key: str | None) -> float | None:
        read.append(key)
        return current.get(key)

    timers = Timers(due_of)
    for key, due in current.items():
        timers.push(due, "w", key)
    assert timers.first(until=100.0) == (100.0, "w", "early")
    timers.pop()
    del current["early"]
    assert timers.first(until=100.0) is None and len(read) <= 2
    assert timers.first() == (3600.0, "w", "k0") and len(read) > 10_000  # read when asked for it


def test_a_key_heard_again_and_again_keeps_one_timer_entry() -> None:
    """An absent key heard every 30 s does not arm an entry per event (each one stale a minute
    later, 120 an hour): its one entry is filed again when found early, and it fires on time."""
    sim = Sim(
        """
[[watch]]
id = "quiet"
kind = "absent"
expect = { subject = "hb", key = "data.host" }
for = "1h"
then = ["notify.console"]
"""
    )
    for _ in range(400):  # 3 h 20 min of heartbeats
        sim.emit("hb", {"host": "a"}, after=30)
        assert sim.engine.timer_entries() <= 2
    last = sim.now
    fires = sim.advance(2 * 3600)
    assert [f.fired_at for f in fires] == [last + 3600]
