"""Naming the false clause of a `where`: splitting at the top level only, and the values shown."""

from __future__ import annotations

import pytest

from watchd.explain.clauses import explain_false, split_top
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
