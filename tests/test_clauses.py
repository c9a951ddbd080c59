"""Naming the false clause of a `where`: splitting at the top level only, and the values shown."""

from __future__ import annotations

import pytest

from watchd.explain.clauses import explain_error, explain_errored, explain_false, split_top
from watchd.model import make_event


@pytest.mark.parametrize(
    ("source", "op", "parts"),
    [
        ("a && b", "&&", ["a", "b"]),
        ("a && (b || c) && d", "&&", ["a", "b || c", "d"]),
        ('data.s == "x && y" && b', "&&", ['data.s == "x && y"', "b"]),
        ("data.s == 'it''s' || b", "||", ["data.s == 'it''s'", "b"]),
        ("(a && b)", "&&", ["a && b"]),
        ("(a) && (b)", "&&", ["a", "b"]),
        ("f(a && b, c) && d", "&&", ["f(a && b, c)", "d"]),
        ("data.l.exists(x, x > 1 && x < 3)", "&&", ["data.l.exists(x, x > 1 && x < 3)"]),
        ("a ? b && c : d", "&&", ["a ? b && c : d"]),  # a top-level conditional stays whole
        ("a && b || c", "||", ["a && b", "c"]),
    ],
)
def test_split_top(source: str, op: str, parts: list[str]) -> None:
    assert split_top(source, op) == parts


def test_values_are_shown_once_and_long_ones_cut() -> None:
    event = make_event("x", {"host": "h" * 100, "n": 2}, id="e1", time_s=0)
    reason = explain_false('data.host == "a" && data.n > 2 && data.host != ""', event)
    assert reason.count("data.host = ") == 1
    assert "…" in reason and len(reason) < 300
    assert "clause 2 of 3 false: data.n > 2 (data.n = 2)" in reason


def test_a_missing_field_is_named() -> None:
    event = make_event("x", {"n": 1}, id="e1", time_s=0)
    reason = explain_false("has(data.size) && data.n == 1", event)
    assert reason.endswith("clause 1 of 2 false: has(data.size) (data.size missing)")


def test_a_method_call_shows_the_value_it_read_not_a_missing_field() -> None:
    event = make_event("mail.received", {"from": "a@small.com", "urgent": True}, id="e1", time_s=0)
    reason = explain_false('data.from.endsWith("@big.com") && data.urgent', event)
    assert reason.endswith('clause 1 of 2 false: data.from.endsWith("@big.com") (data.from = "a@small.com")')
    assert "missing" not in reason


EVENT = make_event(
    "x", {"exit_code": "0", "from": 5, "n": None, "f": 2.5, "m": {"a": 1}, "s": "abc", "ok": False}, id="e1", time_s=0
)


@pytest.mark.parametrize(
    ("source", "said"),
    [
        ("data.exit_code > 0", "data.exit_code is a string '0', compared with an int (in data.exit_code > 0)"),
        ("0 < data.exit_code", "data.exit_code is a string '0', compared with an int (in 0 < data.exit_code)"),
        (
            "data.exit_code > data.f",
            "data.exit_code is a string '0', compared with data.f, a double 2.5 (in data.exit_code > data.f)",
        ),
        (  # the smallest failing part of a conjunction, inside brackets
            '(data.s == "abc" && data.exit_code >= 1) && true',
            "data.exit_code is a string '0', compared with an int (in data.exit_code >= 1)",
        ),
        ("data.f + 1 > 2", "data.f is a double 2.5, combined by + with an int (in data.f + 1)"),
        (
            'data.from.endsWith("x")',
            'data.from is an int 5, which has no endsWith(string) (in data.from.endsWith("x"))',
        ),
        ("size(data.n) > 0", "data.n is null, which size() does not take (in size(data.n))"),
        ("data.n.host == 1", "data.n is null, which has no field host (in data.n.host)"),
        ("data.m.a.b == 1", "data.m.a is an int 1, which has no field b (in data.m.a.b)"),
        ("data.s in 5", "data.s is a string 'abc', looked up in an int (in data.s in 5)"),
        ("data.missing == 1", "no such field 'missing'"),  # a missing field names itself
    ],
)
def test_an_error_says_the_value_and_type_it_met(source: str, said: str) -> None:
    assert explain_error(source, EVENT) == said


def test_an_expression_that_does_not_error_has_nothing_to_say() -> None:
    assert explain_error("data.ok && data.exit_code > 0", EVENT) is None  # false && error is false


def test_an_erroring_clause_is_said_to_error_with_what_it_met() -> None:
    assert explain_false("data.exit_code > 0 && data.ok", EVENT) == (
        "where false: data.exit_code > 0 && data.ok — clause 1 of 2 errored: data.exit_code > 0 "
        "(data.exit_code is a string '0', compared with an int); clause 2 of 2 false: data.ok (data.ok = false)"
    )


def test_an_engine_error_reason_is_rewritten_and_an_unreadable_one_kept() -> None:
    reason = "where errored: No such overload: the operation is not defined (in data.exit_code > 0)"
    assert explain_errored(reason, EVENT) == (
        "where errored: data.exit_code is a string '0', compared with an int (in data.exit_code > 0)"
    )
    assert explain_errored("where errored: no such field 'x' (in data.x)", EVENT) == "where errored: no such field 'x'"
    for kept in ("where gave 'x', not a boolean (in data.s)", "where errored: odd (in data.s ==", "key is null"):
        assert explain_errored(kept, EVENT) == kept


def test_a_batchs_misses_are_worded_once_per_distinct_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """The words of a false `where` depend only on the fields it reads: events with the same values
    there share them (worded once), events with other values get their own."""
    from watchd.engine import WHERE_FALSE, Decision, Verdict
    from watchd.explain import clauses

    source = 'data.level > 4 && data.host == "h1"'
    events = {
        1: make_event("svc.event", {"level": 2, "host": "h1", "other": 1}),
        2: make_event("svc.event", {"level": 2, "host": "h1", "other": 2}),  # same values read
        3: make_event("svc.event", {"level": 5, "host": "h2"}),
    }
    worded: list[str] = []
    real = clauses.explain_false

    def counting(src: str, event: object, ctx: object = None) -> str:
        worded.append(src)
        return real(src, event, ctx)  # type: ignore[arg-type]

    monkeypatch.setattr(clauses, "explain_false", counting)
    clauses._DESCRIBED.clear()
    misses = [Decision(0.0, "w", None, Verdict.WHERE_FALSE, WHERE_FALSE + source, f"e{s}", s) for s in events]
    clauses.describe_misses(misses, events)
    assert len(worded) == 2
    assert misses[0].reason == misses[1].reason == real(source, events[1])
    assert misses[2].reason == real(source, events[3]) != misses[0].reason
    assert "data.level = 2" in misses[0].reason and 'data.host = "h2"' in misses[2].reason


def test_misses_over_large_values_are_worded_without_being_kept() -> None:
    """A `where` that reads a large value (all of `data`) is worded for each miss and the words are
    not kept: the cache holds small keys only."""
    from watchd.engine import WHERE_FALSE, Decision, Verdict
    from watchd.explain import clauses

    source = 'size(data) > 500 && data.kind == "x"'
    events = {1: make_event("svc.event", {f"f{i}": "v" * 20 for i in range(40)} | {"kind": "y"})}
    clauses._DESCRIBED.clear()
    misses = [Decision(0.0, "w", None, Verdict.WHERE_FALSE, WHERE_FALSE + source, "e1", 1)]
    clauses.describe_misses(misses, events)
    assert misses[0].reason == clauses.explain_false(source, events[1])
    assert clauses._DESCRIBED == {}
