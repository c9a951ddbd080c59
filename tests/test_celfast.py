"""The compiled CEL subset against the CEL binding: random expressions from a grammar of the
subset, on random events, must give the same value, or an error worded the same.

Where the compiled form declines (`Unsupported` at run time, or None at compile time) the
binding is used instead, so those cases only need to be rare, not equal.
"""

from __future__ import annotations

import math
from typing import Any

import cel
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from watchd import celfast, expr
from watchd.engine import Engine, EventInput
from watchd.model import make_event

FIELDS = ["a", "b", "s", "l", "m", "n"]

# ---- events ----------------------------------------------------------------------------------

ints = st.one_of(
    st.integers(-5, 5),
    st.sampled_from([2**53, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1]),
)
floats = st.one_of(st.sampled_from([0.0, -0.0, 1.0, 2.5, -1.5, math.inf, math.nan, 9007199254740992.0]), st.floats())
strings = st.sampled_from(["", "a", "ab", "web1", "db.example.com", "é", "a\nb", "x1", "1", "true", "😀"])
scalars = st.one_of(st.none(), st.booleans(), ints, floats, strings)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from([*FIELDS, "k"]), inner, max_size=4)
    ),
    max_leaves=12,
)
datas = st.dictionaries(st.sampled_from(FIELDS), values, max_size=6)


# ---- expressions -----------------------------------------------------------------------------


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


literals = st.one_of(
    st.sampled_from(["null", "true", "false", "0", "1", "-1", "3", "2.5", "-0.5", "1e3", "0x10", "9007199254740993"]),
    strings.map(_quote),
    st.sampled_from(["9223372036854775807", "-9223372036854775808", "1.0", "0.0"]),
)
REGEX_PARTS = ["a", "b", "1", ".", "^", "$", "\\d", "\\D", "[a-c]", "[^b]", "(a|b)", "*", "+", "?", "{2}", "{1,2}"]
REGEX_PARTS += ["\\.", "-", " ", "é", "\\w", "[[:alpha:]]", "(?i)", "\\", "[$]", "()", "x*?", "|", "{", "*+"]
regexes = st.lists(st.sampled_from(REGEX_PARTS), max_size=5).map(lambda parts: _quote("".join(parts)))


def paths(root: str) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(FIELDS), min_size=0, max_size=2).map(lambda fs: ".".join([root, *fs]))


def operands(binders: tuple[str, ...]) -> st.SearchStrategy[str]:
    roots = st.sampled_from(["data", *binders]) if binders else st.just("data")
    path = roots.flatmap(paths)
    indexed = st.tuples(path, st.sampled_from(["0", "1", "-1", '"a"', '"m"', "1.0"])).map(lambda t: f"{t[0]}[{t[1]}]")
    lists = st.lists(literals, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]")
    return st.one_of(path, path, literals, indexed, lists, st.sampled_from(["subject", "source", "id"]))


def predicates(binders: tuple[str, ...] = ()) -> st.SearchStrategy[str]:
    ops = st.sampled_from(["==", "!=", "<", "<=", ">", ">=", "in"])
    path = (st.sampled_from(["data", *binders]) if binders else st.just("data")).flatmap(paths)
    base = st.one_of(
        st.tuples(operands(binders), ops, operands(binders)).map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
        path.map(lambda p: f"has({p}.a)" if p == "data" else f"has({p})"),
        st.tuples(path, st.sampled_from(["size({})", "{}.size()"]), st.sampled_from(["==", "<", ">"]), ints).map(
            lambda t: f"{t[1].format(t[0])} {t[2]} {t[3]}"
        ),
        st.tuples(path, st.sampled_from(["startsWith", "endsWith", "contains"]), operands(binders)).map(
            lambda t: f"{t[0]}.{t[1]}({t[2]})"
        ),
        st.tuples(path, regexes).map(lambda t: f"{t[0]}.matches({t[1]})"),
        path,
        st.sampled_from(["true", "false", "1", "null"]),
    )
    if len(binders) < 2:
        binder = "x" if not binders else "y"
        macro = st.tuples(path, st.sampled_from(["exists", "all"]), predicates((*binders, binder))).map(
            lambda t: f"{t[0]}.{t[1]}({binder}, {t[2]})"
        )
        base = st.one_of(base, macro)
    return st.recursive(
        base,
        lambda inner: st.one_of(
            st.tuples(inner, st.sampled_from(["&&", "||"]), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
            inner.map(lambda p: f"!({p})"),
            inner.map(lambda p: f"!{p}" if p[0] in "(!" else f"({p})"),
        ),
        max_leaves=4,
    )


# ---- comparing -------------------------------------------------------------------------------


def _binding(source: str, data: dict[str, Any]) -> tuple[str, Any]:
    try:
        program = cel.compile(source)
    except Exception:
        return "compile-error", None
    ctx = expr.Activation(None, frozenset(), {"data": data, "subject": "a.b", "source": "src", "id": "e1"})
    try:
        return "value", program.execute(ctx.cel())
    except Exception as exc:
        return "error", expr.describe_error(exc)


def _fast(source: str, data: dict[str, Any]) -> tuple[str, Any] | None:
    compiled = celfast.compile_fast(source)
    if compiled is None:
        return None
    ctx = expr.context({"data": data, "subject": "a.b", "source": "src", "id": "e1"})
    try:
        value = compiled.fn(ctx.values, None)
    except celfast.Unsupported:
        return None
    except Exception as exc:
        return "error", expr.describe_error(exc)
    return None if celfast.wide(value) else ("value", value)


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool) and a == b
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


def _convertible(data: dict[str, Any]) -> bool:
    """Whether the binding can hold the event at all (it refuses ints beyond a double)."""
    try:
        cel.Context({"data": data})
    except ValueError:
        return False
    return True


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=predicates(), data=datas)
def test_compiled_agrees_with_the_binding(source: str, data: dict[str, Any]) -> None:
    assume(_convertible(data))
    fast = _fast(source, data)
    want = _binding(source, data)
    if fast is None:
        return
    assert want[0] != "compile-error", f"compiled what the binding refuses: {source}"
    got_kind, got = fast
    want_kind, wanted = want
    assert got_kind == want_kind, f"{source} on {data!r}: compiled {fast!r}, binding {want!r}"
    if got_kind == "error":
        assert got == wanted, f"{source} on {data!r}: compiled {got!r}, binding {wanted!r}"
    else:
        assert _same(got, wanted), f"{source} on {data!r}: compiled {got!r}, binding {wanted!r}"


@settings(max_examples=300, deadline=None)
@given(source=predicates())
def test_most_of_the_grammar_compiles(source: str) -> None:
    """The subset is what watches write: a generated expression outside it is a rare case
    (an unsupported regex, a reserved word), not the rule."""
    if celfast.compile_fast(source) is None:
        assert "matches(" in source or _binding(source, {})[0] == "compile-error", source


@pytest.mark.parametrize(
    "source",
    [
        "data.level > 3",
        'data.host.startsWith("web") && data.ok == false',
        'data.tags.exists(t, t == "urgent")',
        'data.from.endsWith("@bigcustomer.com") && data.urgent',
        'data.action == "opened"',
        "data.pull_request.number",
        'has(data.x) && data.x in ["a", "b"]',
        'size(data.s) > 2 || data.s.matches("^web[0-9]+$")',
        'subject.startsWith("svc") && source != ""',
    ],
)
def test_the_shapes_watches_use_are_compiled(source: str) -> None:
    compiled = expr.compile_expr(source)
    assert compiled.fast is not None
    assert compiled._program is None  # the binding is not even loaded for it


@pytest.mark.parametrize(
    "source",
    ["data.a + 1 > 2", "data.m.exists_one(x, x > 1)", "time > timestamp('2026-01-01T00:00:00Z')", "data.x == 1u"],
)
def test_the_rest_goes_to_the_binding(source: str) -> None:
    compiled = expr.compile_expr(source)
    assert compiled.fast is None
    value, err = expr.evaluate(compiled, expr.event_context(make_event("a.b", {"a": 5, "x": 1, "m": [1, 2]})))
    assert err is None and value is not None


def test_a_map_walked_by_a_macro_falls_back_to_the_binding() -> None:
    compiled = expr.compile_expr('data.m.exists(k, k == "b")')
    assert compiled.fast is not None
    ctx = expr.event_context(make_event("a.b", {"m": {"a": 1, "b": 2}}))
    assert expr.evaluate(compiled, ctx) == (True, None)


def test_errors_are_worded_like_the_bindings() -> None:
    ctx = expr.event_context(make_event("a.b", {"level": "high", "n": None}))
    missing = expr.test_where(expr.compile_expr("data.missing > 3"), ctx)
    assert missing == (False, "where errored: no such field 'missing'")
    assert expr.test_where(expr.compile_expr("data.level > 3"), ctx)[1] == (
        "where errored: No such overload: the operation is not defined for the given operand types"
    )
    assert expr.test_where(expr.compile_expr("data.n.startsWith('a')"), ctx)[1] == (
        "where errored: Undefined variable or function: 'startsWith'"
    )


def test_the_engine_judges_the_same_with_either_form() -> None:
    """The same watches and events through the engine with the compiled forms, and with them
    taken away: the same decisions, word for word."""
    import msgspec

    from watchd.config import Watch, WatchDef

    wheres = ["data.level > 3", 'data.host.startsWith("web") && data.ok == false', 'data.tags.exists(t, t == "u")']
    raw = [
        {"id": f"w{i}", "kind": "match", "on": {"subject": "s", "where": w, "key": "data.host"}, "then": ["x"]}
        for i, w in enumerate(wheres)
    ]
    defs = [(WatchDef(msgspec.convert(r, Watch), "t", 1, str(i)), 1) for i, r in enumerate(raw)]
    events = [
        {"level": 5, "host": "web1", "ok": False, "tags": ["u"]},
        {"level": "x", "host": 3, "tags": 1},
        {"level": 1.5, "ok": True, "tags": []},
        {},
    ]

    def run(fast: bool) -> list[tuple[Any, ...]]:
        engine = Engine()
        engine.load(defs, 1000.0)
        if not fast:
            for logic in engine.watches.values():
                pattern = logic.pattern
                for e in (pattern.where, pattern.key):
                    if e is not None:
                        e.fast = None
        out = []
        for i, data in enumerate(events):
            step = engine.step(EventInput(make_event("s", data, id=f"e{i}", time_s=1000.0 + i), 1000.0 + i, i))
            out += [(d.watch, d.key, d.verdict, d.reason) for d in step.decisions]
        return out

    with_fast = run(True)
    expr.compile_expr.cache_clear()  # fresh Expr objects, whose compiled forms are then taken away
    without = run(False)
    expr.compile_expr.cache_clear()
    assert with_fast == without
    assert any(v == "where_error" for _, _, v, _ in with_fast)


@pytest.mark.parametrize(
    ("source", "want"),
    [("size(data.b)", 2), ("data.b.size() == 2", True), ("data.b < data.c", False), ("data.c < data.b", True)],
)
def test_bytes_are_sized_and_ordered_like_the_bindings(source: str, want: Any) -> None:
    data = {"b": "é".encode(), "c": b"b"}
    assert _fast(source, data) == ("value", want) == _binding(source, data)
