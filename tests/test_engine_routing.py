"""The engine's routing: subject trie, `where`s and `key`s evaluated once per event for the watches
sharing them, and the equality index. An engine routing so decides exactly what one judging each
watch on its own decides (`Engine(shares=False)`), on random watches and events."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from watchd import expr
from watchd.config import Watch, WatchDef
from watchd.engine import Engine, EventInput, Tick, core
from watchd.engine.index import SubjectIndex, subject_matches
from watchd.engine.routing import Plan, equality_conjuncts
from watchd.model import make_event

T0 = 1_800_000_000.0
SUBJECTS = ["a.b", "a.c", "a.b.c", "x.y", "a"]
PATTERNS = [*SUBJECTS, "a.*", "*.b", "a.>", ">", "*.*.c", "a.*.c", "*"]
WHERES = [
    None,
    'data.s == "p"',
    'data.s == "q"',
    '"p" == data.s',
    "data.n == 1",
    "data.n == 2",
    "data.f == true",
    "data.f == false",
    'data.s == "p" && data.n > 1',
    'data.n > 1 && data.s == "q" && data.f == true',
    'data.m.s == "p"',
    'data.s == "p" || data.n == 1',  # not a top-level conjunction: never indexed
    "data.n > 1",
    'data.s.startsWith("p")',
    "data.s",  # not a boolean
    'data.s == "p" && data.s',  # ruled out when false, an error when not
    "data.n == 9007199254740993",  # beyond what a double holds exactly: not indexed
    "data.n == 1.0",  # a double literal: not indexed
    'data.s == "p" && data.n + 1 > 2',  # outside the compiled subset: not indexed
]
KEYS = [None, "data.s", "data.n", "data.m.s"]
VALUES = st.one_of(
    st.sampled_from(["p", "q", "", "P"]),
    st.sampled_from([0, 1, 2, -1, 2**53 + 1, 2**64]),
    st.sampled_from([1.0, 2.5, 0.0, -0.0, 1e300]),
    st.booleans(),
    st.none(),
    st.lists(st.sampled_from(["p", 1]), max_size=2),
)
DATA = st.fixed_dictionaries(
    {},
    optional={
        "s": VALUES,
        "n": VALUES,
        "f": VALUES,
        "m": st.one_of(VALUES, st.fixed_dictionaries({}, optional={"s": VALUES})),
    },
)


@st.composite
def watches(draw: st.DrawFn) -> list[tuple[WatchDef, int]]:
    out = []
    for i in range(draw(st.integers(1, 12))):
        pattern: dict[str, Any] = {"subject": draw(st.sampled_from(PATTERNS))}
        if (where := draw(st.sampled_from(WHERES))) is not None:
            pattern["where"] = where
        if (key := draw(st.sampled_from(KEYS))) is not None:
            pattern["key"] = key
        kind = draw(st.sampled_from(["match", "count", "absent", "cooldown"]))
        raw: dict[str, Any] = {"id": f"w{i}", "then": ["notify.console"]}
        if kind == "absent":
            raw |= {"kind": "absent", "expect": pattern, "for": "1m"}
        else:
            raw |= {"kind": "match", "on": pattern}
            if kind == "count":
                raw |= {"count": 2, "window": "5m"}
            elif kind == "cooldown":
                raw["cooldown"] = "30s"
        out.append((WatchDef(msgspec.convert(raw, Watch), "t.toml", 1, str(i)), 1))
    return out


def outputs(engine: Engine, steps: list[EventInput | Tick]) -> list[Any]:
    seen = []
    for inp in steps:
        out = engine.step(inp)
        seen.append((msgspec.to_builtins(out.decisions), msgspec.to_builtins(out.fires)))
    return seen


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(defs=watches(), events=st.lists(st.tuples(st.sampled_from(SUBJECTS), DATA, st.integers(0, 90)), max_size=25))
def test_routing_decides_what_judging_each_watch_alone_decides(
    defs: list[tuple[WatchDef, int]], events: list[tuple[str, dict[str, Any], int]]
) -> None:
    steps: list[EventInput | Tick] = []
    at = T0
    for n, (subject, data, after) in enumerate(events, 1):
        at += after
        steps.append(EventInput(make_event(subject, data, id=f"e{n}", time_s=at), at, n))
    steps.append(Tick(at + 600))  # the absences run out
    routed, alone = Engine(), Engine(shares=False)
    routed.load(defs, T0)
    alone.load(defs, T0)
    assert outputs(routed, steps) == outputs(alone, steps)


def test_the_equality_index_rules_out_without_evaluating() -> None:
    where = expr.compile_expr('data.kind == "disk" && data.level > 3')
    assert equality_conjuncts(where) == [(("kind",), "disk")]
    assert equality_conjuncts(expr.compile_expr('data.kind == "disk" || data.level > 3')) == []
    assert equality_conjuncts(expr.compile_expr("data.up == true && 2 == data.n")) == [
        (("up",), (bool, True)),
        (("n",), (int, 2)),
    ]
    plan = Plan([])
    plan.equalities = [(("kind",), {"disk": frozenset({0}), "cpu": frozenset({1})}, frozenset({0, 1}))]
    for data, ruled_out in [
        ({"kind": "disk"}, [1]),
        ({"kind": "cpu"}, [0]),
        ({"kind": "net"}, [0, 1]),
        ({"kind": 3}, [0, 1]),  # another type is never equal
        ({}, []),  # no such field: the `where` errors, which it says itself
        ({"kind": {"x": 1}}, [0, 1]),
    ]:
        assert sorted(plan.ruled_out(plan.values(data))) == ruled_out, data


def test_a_ruled_out_watch_still_records_its_miss_with_its_key() -> None:
    raw = [
        {"id": f"w{c}", "kind": "match", "then": ["notify.console"]}
        | {"on": {"subject": "disk.usage", "where": f'data.host == "{c}"', "key": "data.mount"}}
        for c in ("a", "b", "c")
    ]
    engine = Engine()
    engine.load([(WatchDef(msgspec.convert(w, Watch), "t.toml", 1, str(i)), 1) for i, w in enumerate(raw)], T0)
    event = make_event("disk.usage", {"host": "b", "mount": "/srv"}, id="e1", time_s=T0)
    out = engine.step(EventInput(event, T0, 1))
    assert [(d.watch, d.key, str(d.verdict), d.reason) for d in out.decisions] == [
        ("wa", "/srv", "where_false", 'where false: data.host == "a"'),
        ("wb", "/srv", "fired", 'disk.usage matched where data.host == "b"'),
        ("wc", "/srv", "where_false", 'where false: data.host == "c"'),
    ]


@given(
    patterns=st.lists(st.sampled_from(PATTERNS), max_size=12),
    subject=st.sampled_from([*SUBJECTS, "a.b.c.d", "b", "x.b", "q.r.c"]),
)
def test_the_subject_trie_finds_what_matching_each_pattern_finds(patterns: list[str], subject: str) -> None:
    index: SubjectIndex[int] = SubjectIndex()
    for n, p in enumerate(patterns):
        index.add(p, n)
    assert index.candidates(subject) == [n for n, p in enumerate(patterns) if subject_matches(p, subject)]


def test_plans_made_again_when_subjects_outnumber_those_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "PLANS_KEPT", 3)  # one plan per device subject: they turn over
    raw = {"id": "hot", "kind": "match", "then": ["notify.console"]} | {
        "on": {"subject": "dev.*.temp", "where": 'data.unit == "C" && data.value > 30', "key": "data.room"}
    }
    defs = [(WatchDef(msgspec.convert(raw, Watch), "t.toml", 1, "0"), 1)]
    steps: list[EventInput | Tick] = [
        EventInput(make_event(f"dev.{n % 7}.temp", data, id=f"e{n}", time_s=T0 + n), T0 + n, n)
        for n, data in enumerate(
            [{"unit": "C", "value": 35, "room": "a"}, {"unit": "F", "value": 95, "room": "b"}, {"value": 40}] * 10
        )
    ]
    routed, alone = Engine(), Engine(shares=False)
    routed.load(defs, T0)
    alone.load(defs, T0)
    seen = outputs(routed, steps)
    assert seen == outputs(alone, steps)
    assert sum(len(fires) for _, fires in seen) == 10  # the ten in °C above 30, on every device
