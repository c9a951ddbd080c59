"""The compiled CEL subset against the CEL binding: random expressions from a grammar of the
subset, on random events, must give the same value, or an error worded the same.

Where the compiled form declines (`Unsupported` at run time, or None at compile time) the
binding is used instead, so those cases only need to be rare, not equal.
"""

from __future__ import annotations

import copy
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
KEYS = [*FIELDS, "k"]
MISSING = object()  # what a generated path names when the event does not hold it

# ---- events ----------------------------------------------------------------------------------

# Values a careless comparison confuses: ints and doubles equal as doubles but not exactly
# (2**53 + 1), the edges of int64 and uint64, NaN and the infinities, strings that share a
# length in characters or in UTF-8 bytes ("ab", "é"; "😀" is four bytes), bytes.
ints = st.one_of(
    st.integers(-3, 5),
    st.sampled_from([2**53, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1]),
)
EDGE_FLOATS = [0.0, -0.0, 1.0, 2.5, -1.5, math.inf, -math.inf, math.nan, 2.0**53, 2.0**63, 2.0**64]
floats = st.one_of(st.sampled_from(EDGE_FLOATS), st.floats())
STRINGS = ["", "a", "ab", "ba", "é", "aé", "😀", "web1", "a\nb", "1", "true", "db.example.com"]
strings = st.one_of(st.sampled_from(STRINGS), st.text(alphabet="ab1é😀", max_size=3))
blobs = st.one_of(st.sampled_from([b"", b"a", b"ab", "é".encode(), "😀".encode(), b"\xff\x00"]), st.binary(max_size=3))
scalars = st.one_of(st.none(), st.booleans(), ints, floats, strings, blobs)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)),
    max_leaves=8,
)


def _neighbour(draw: st.DrawFn, v: Any) -> Any:
    """A value that is not `v` but that a comparison done carelessly takes for it: the same
    length or keys with one part changed, the same number as another type, NaN."""
    t = type(v)
    if t is list and v:
        i = draw(st.integers(0, len(v) - 1))
        how = draw(st.sampled_from(["part", "part", "drop", "add", "turn"]))
        if how == "part":
            return [*v[:i], _neighbour(draw, v[i]), *v[i + 1 :]]
        if how == "drop":
            return v[:i] + v[i + 1 :]
        if how == "add":
            return [*v, draw(scalars)]
        return v[::-1]
    if t is dict and v:
        k = draw(st.sampled_from(sorted(v)))
        how = draw(st.sampled_from(["part", "part", "rename", "add"]))
        if how == "part":
            return {**v, k: _neighbour(draw, v[k])}
        others = [x for x in KEYS if x not in v]
        if how == "rename" and others:
            return {(draw(st.sampled_from(others)) if x == k else x): y for x, y in v.items()}
        return {**v, draw(st.sampled_from(KEYS)): draw(scalars)}
    if t is bool:
        return draw(st.sampled_from([not v, int(v), float(v)]))
    if t is int:
        return draw(st.sampled_from([v + 1, v - 1, float(v), str(v), v == 1]))
    if t is float:
        close = [math.nan, -v, math.nextafter(v, math.inf)]
        return draw(st.sampled_from([*close, int(v)] if math.isfinite(v) else close))
    if t is str:
        same_chars = v[:-1] + ("b" if v[-1:] == "a" else "a")
        same_bytes = v[:-1] + "é" if len(v[-1:].encode()) == 2 else "ab"
        return draw(st.sampled_from([same_chars, same_bytes, v.encode(), v + "a"]))
    if t is bytes:
        flipped = v[:-1] + bytes([(v[-1] + 1) % 256]) if v else b"a"
        return draw(st.sampled_from([flipped, v.decode(errors="replace"), len(v)]))
    return draw(st.sampled_from([False, 0, "", [], {}]))


def _twin(draw: st.DrawFn, v: Any) -> Any:
    """`v` itself (a copy) or a neighbour of it: two fields to compare that agree on much."""
    return copy.deepcopy(v) if draw(st.integers(0, 3)) == 0 else _neighbour(draw, v)


@st.composite
def datas(draw: st.DrawFn) -> dict[str, Any]:
    data: dict[str, Any] = draw(st.dictionaries(st.sampled_from(FIELDS), values, max_size=5))
    for f, g in draw(st.lists(st.tuples(st.sampled_from(FIELDS), st.sampled_from(FIELDS)), max_size=3)):
        if f in data:
            data[g] = _twin(draw, data[f])
    return data


def _paths(value: Any, path: str, depth: int) -> list[tuple[str, Any]]:
    """The paths into a value (fields and the first list items), with what each names."""
    found = [(path, value)]
    if depth:
        if type(value) is dict:
            for k, v in value.items():
                found += _paths(v, f"{path}.{k}", depth - 1)
        elif type(value) is list:
            for i, v in enumerate(value[:2]):
                found += _paths(v, f"{path}[{i}]", depth - 1)
    return found


# ---- expressions -----------------------------------------------------------------------------


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _literal(v: Any) -> str | None:
    """`v` written in CEL, or None when the subset has no literal for it (bytes, maps, NaN)."""
    t = type(v)
    if v is None:
        return "null"
    if t is bool:
        return "true" if v else "false"
    if t is int:
        return str(v) if -(2**63) <= v < 2**63 else None
    if t is float:
        return repr(v) if math.isfinite(v) else None
    if t is str:
        return _quote(v)
    if t is list:
        items = [_literal(x) for x in v]
        return None if None in items else "[" + ", ".join(i for i in items if i is not None) + "]"
    return None


CONSTANTS = ["null", "true", "false", "0", "1", "-1", "3", "2.5", "-0.5", "1e3", "0x10", "9007199254740993"]
CONSTANTS += ["9223372036854775807", "-9223372036854775808", "1.0", "0.0", "-0.0", "9007199254740992.0"]
CONSTANTS += [_quote(s) for s in STRINGS]
REGEX_PARTS = ["a", "b", "1", ".", "^", "$", "\\d", "\\D", "[a-c]", "[^b]", "(a|b)", "*", "+", "?", "{2}", "{1,2}"]
REGEX_PARTS += ["\\.", "-", " ", "é", "\\w", "[[:alpha:]]", "(?i)", "\\", "[$]", "()", "x*?", "|", "{", "*+"]
ORDERS = ["==", "!=", "<", "<=", ">", ">="]


class _Exprs:
    """Draws expressions over one event: most paths name what the event holds, and constants
    are drawn from its values or their neighbours, so comparisons meet values, not errors."""

    def __init__(self, draw: st.DrawFn, data: dict[str, Any]) -> None:
        self.draw = draw
        self.known: dict[str, list[tuple[str, Any]]] = {"data": _paths(data, "data", 3)}

    def pick(self, options: list[Any]) -> Any:
        return self.draw(st.sampled_from(options))

    def chance(self, n: int) -> bool:
        """True one time in n."""
        return self.draw(st.integers(0, n - 1)) == 0

    def path(self, roots: tuple[str, ...]) -> tuple[str, Any]:
        root = self.pick(list(roots))
        known = self.known.get(root, [])
        if known and not self.chance(4):
            return self.pick(known)  # type: ignore[no-any-return]
        fields = self.draw(st.lists(st.sampled_from(FIELDS), max_size=2))
        return ".".join([root, *fields]), MISSING

    def constant(self, near: Any = MISSING) -> str:
        """A literal: `near` itself or a neighbour of it, else a fixed one."""
        if near is not MISSING and not self.chance(4):
            text = _literal(near if self.chance(2) else _neighbour(self.draw, near))
            if text is not None:
                return text
        return self.pick(CONSTANTS)

    def operand(self, roots: tuple[str, ...], near: Any = MISSING) -> tuple[str, Any]:
        kind = self.draw(st.integers(0, 9))
        if kind < 4:
            return self.path(roots)
        if kind < 8:
            return self.constant(near), MISSING
        if kind == 8:
            return self.pick(["subject", "source", "id"]), MISSING
        items = near if type(near) is list else [near]
        return "[" + ", ".join(self.constant(x) for x in items[:3]) + "]", MISSING

    def comparison(self, roots: tuple[str, ...]) -> str:
        left, value = self.operand(roots)
        if self.chance(5):
            if type(value) is list or type(value) is dict:
                member = self.pick(list(value)) if value else MISSING
                return f"{self.constant(member)} in {left}"
            return f"{left} in {self.operand(roots, value)[0]}"
        return f"{left} {self.pick(ORDERS)} {self.operand(roots, value)[0]}"

    def size(self, roots: tuple[str, ...]) -> str:
        path, value = self.path(roots)
        sizes = [0, 1, 2, 4]
        if type(value) is str:
            sizes += [len(value), len(value.encode())]
        elif type(value) in (bytes, list, dict):
            sizes += [len(value), len(value) + 1]
        form = self.pick(["size({})", "{}.size()"]).format(path)
        return f"{form} {self.pick(ORDERS)} {self.pick(sizes)}"

    def string_test(self, roots: tuple[str, ...]) -> str:
        path, value = self.path(roots)
        test = self.pick(["startsWith", "endsWith", "contains"])
        if type(value) is str and value and not self.chance(3):
            part = self.pick([value[:1], value[-1:], value, value[1:], "é"])
            return f"{path}.{test}({_quote(part)})"
        return f"{path}.{test}({self.operand(roots, value)[0]})"

    def macro(self, roots: tuple[str, ...]) -> str:
        binder = "x" if "x" not in roots else "y"
        path, value = self.path(roots)
        items = value if type(value) is list else []
        self.known[binder] = [p for item in items for p in _paths(item, binder, 2)]
        body = self.predicate((*roots, binder), 1)
        return f"{path}.{self.pick(['exists', 'all'])}({binder}, {body})"

    def predicate(self, roots: tuple[str, ...] = ("data",), depth: int = 0) -> str:
        kind = self.draw(st.integers(0, 15 if depth < 3 else 11))
        if kind < 4:
            return self.comparison(roots)
        if kind == 4:
            path = self.path(roots)[0]
            return f"has({path}.a)" if path in roots else f"has({path})"
        if kind == 5:
            return self.size(roots)
        if kind == 6:
            return self.string_test(roots)
        if kind == 7:
            regex = "".join(self.draw(st.lists(st.sampled_from(REGEX_PARTS), max_size=5)))
            return f"{self.path(roots)[0]}.matches({_quote(regex)})"
        if kind == 8:
            return self.path(roots)[0]
        if kind == 9:
            return self.pick(["true", "false", "1", "null"])
        if kind < 12:
            return self.macro(roots) if len(roots) < 3 else self.comparison(roots)
        if kind < 14:
            op = self.pick(["&&", "||"])
            return f"({self.predicate(roots, depth + 1)} {op} {self.predicate(roots, depth + 1)})"
        inner = self.predicate(roots, depth + 1)
        return f"!({inner})" if kind == 14 else (f"!{inner}" if inner[0] in "(!" else f"({inner})")


@st.composite
def cases(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """An event's data, and an expression over it."""
    data = draw(datas())
    return _Exprs(draw, data).predicate(), data


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
@given(case=cases())
def test_compiled_agrees_with_the_binding(case: tuple[str, dict[str, Any]]) -> None:
    source, data = case
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
@given(case=cases())
def test_most_of_the_grammar_compiles(case: tuple[str, dict[str, Any]]) -> None:
    """The subset is what watches write: a generated expression outside it is a rare case
    (an unsupported regex, a reserved word), not the rule."""
    source = case[0]
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


def test_an_int_beyond_64_bits_in_a_map_is_the_bindings_error() -> None:
    """The binding holds it as a double, which is no map key: an error, not false."""
    data = {"m": 2**64}
    assert _fast("data.m in data", data) is None  # the compiled form leaves it to the binding
    assert _binding("data.m in data", data) == ("error", "Value of type float cannot be used as a map key")
