"""Which part of a `where` was false or failed, and what it read there — for `explain` and `test`.

A `where` is usually a conjunction ("subject matched but `data.exit_code == 0` was false") or a
list of alternatives. Splitting it at the top level, outside parentheses and string literals,
and evaluating each part against the event names the clause that failed, with the field values
it read. An error is followed down to the smallest failing sub-expression, and the values it
met there are named with their types ("data.exit_code is a string '0', compared with an int"):
CEL never converts between types, so a wrong type is the usual cause. This runs only for the
misses kept for `explain`, never on the engine's hot path.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from datetime import datetime, timedelta
from typing import Any

from watchd import expr
from watchd.engine import WHERE_FALSE, Decision, Verdict
from watchd.model import Event

VALUE_CHARS = 60  # a field value is shown up to this many characters
ERRORED = ("where errored: ", "key errored: ")  # how expr words an error; the engine adds " (in SOURCE)"
MISSING = "no such field"  # a missing field: the field's name already says where
_STRING = re.compile(r"""[rRbB]{0,2}(\"\"\"[\s\S]*?\"\"\"|'''[\s\S]*?'''|"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')""")
# A field path as read: `data.a.b`, `data["x"][0]` — not the name of a method called on it.
_FIELD = re.compile(
    r"(?<![\w.])(data(?:\.[A-Za-z_]\w*(?!\w|\s*\()|\[\s*(?:\"[^\"]*\"|'[^']*'|\d+)\s*\])*|subject|source|time|id)\b"
)
_PATH_END = re.compile(r"^(.+)\.([A-Za-z_]\w*)$")  # `data.a.b` → `data.a`, `b`
_CALL = re.compile(r"^(?:(.+)\.)?([A-Za-z_]\w*)\s*\($")  # what precedes a call's `(`: `target.name` or `name`
# Binary operators by precedence, loosest first; within a level CEL groups left to right, so
# the last one splits. Longer spellings first, so `<=` is not read as `<`.
_LEVELS = (("==", "!=", "<=", ">=", "<", ">", "in"), ("+", "-"), ("*", "/", "%"))
_RELATIONS = frozenset(("==", "!=", "<=", ">=", "<", ">"))


def split_top(source: str, op: str) -> list[str]:
    """`a && (b || c) && "x&&y"` split at `op` outside brackets and strings; one part if none."""
    return list(_split_top(source, op))


# A daemon explains the near misses of every batch, the same few `where` sources over and over:
# their parse is worth keeping.
@functools.lru_cache(maxsize=4096)
def _split_top(source: str, op: str) -> tuple[str, ...]:
    masked = _mask(source)
    parts: list[str] = []
    depth, start, i = 0, 0, 0
    while i < len(masked):
        ch = masked[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "?" and depth == 0:
            return (source.strip(),)  # a top-level conditional is one clause: splitting would change it
        elif depth == 0 and masked.startswith(op, i):
            parts.append(source[start:i].strip())
            start = i + len(op)
            i = start
            continue
        i += 1
    parts.append(source[start:].strip())
    return tuple(_unwrap(p) for p in parts if p)


def _unwrap(part: str) -> str:
    """`(a && b)` → `a && b` when one pair of brackets encloses the whole part."""
    while part.startswith("(") and part.endswith(")"):
        closes_at = _closing(_mask(part), 0)
        if closes_at != len(part) - 1:
            return part  # `(a) && (b)`: the first bracket closes before the end
        part = part[1:-1].strip()
    return part


def _closing(masked: str, opens_at: int) -> int:
    """Where the bracket opened at `opens_at` closes (-1 if it does not)."""
    depth = 0
    for i in range(opens_at, len(masked)):
        depth += (masked[i] in "([{") - (masked[i] in ")]}")
        if depth == 0:
            return i
    return -1


def _mask(text: str) -> str:
    """String literals blanked out, so brackets and operators inside them are not seen."""
    return _STRING.sub(lambda m: "_" * len(m.group(0)), text)


# ---- values in words -------------------------------------------------------------------------


def _show(value: Any) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= VALUE_CHARS else text[: VALUE_CHARS - 1] + "…"


def _type_name(value: Any) -> str:
    """A CEL type with its article: what the expression met, in CEL's own terms."""
    for python, name in (
        (bool, "a bool"),  # before int: a bool is an int in Python
        (int, "an int"),
        (float, "a double"),
        (str, "a string"),
        (bytes, "bytes"),
        (list, "a list"),
        (dict, "a map"),
        (datetime, "a timestamp"),
        (timedelta, "a duration"),
    ):
        if isinstance(value, python):
            return name
    return "null" if value is None else f"a {type(value).__name__}"


def _typed(value: Any) -> str:
    """`a string '0'`, `an int 5`, `null`."""
    if value is None:
        return "null"
    if isinstance(value, str):
        text = value if len(value) <= VALUE_CHARS else value[: VALUE_CHARS - 1] + "…"
        shown = "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    elif isinstance(value, bool):
        shown = "true" if value else "false"
    else:
        shown = _show(value)
    return f"{_type_name(value)} {shown}"


def field_values(clause: str, ctx: Any) -> str:
    """`data.exit_code = 1, data.host = "nas"` for the fields a clause reads (missing ones said so)."""
    shown: list[str] = []
    seen: set[str] = set()
    for m in _FIELD.finditer(_mask(clause)):
        path = clause[m.start() : m.end()]
        if path in seen:
            continue
        seen.add(path)
        try:
            value, err = expr.evaluate(expr.compile_expr(path), ctx)
        except expr.ExprError:
            continue
        shown.append(f"{path} missing" if err else f"{path} = {_show(value)}")
    return ", ".join(shown)


# ---- errors: the smallest failing part, and what it met ---------------------------------------


def _evaluate(text: str, ctx: Any) -> tuple[Any, str | None] | None:
    """(value, error) for a piece of an expression; None when the piece is not an expression alone."""
    try:
        return expr.evaluate(expr.compile_expr(text), ctx)
    except expr.ExprError:
        return None


def _reads_event(text: str) -> bool:
    try:
        return bool(expr.compile_expr(text).variables)
    except expr.ExprError:
        return True


def _split_binary(text: str) -> tuple[str, str, str] | None:
    """`left`, `op`, `right` at the loosest binary operator outside brackets and strings."""
    masked = _mask(text)
    for level in _LEVELS:
        found: tuple[int, str] | None = None
        depth, i = 0, 0
        while i < len(masked):
            ch = masked[i]
            depth += (ch in "([{") - (ch in ")]}")
            if ch == "?" and depth == 0:
                return None  # a conditional: not split at an operator inside it
            op = next((o for o in level if masked.startswith(o, i)), None) if depth == 0 else None
            if op is not None and _binary_at(masked, i, op):
                found = (i, op)
                i += len(op)
                continue
            i += 1
        if found is not None:
            at, op = found
            return text[:at].strip(), op, text[at + len(op) :].strip()
    return None


def _binary_at(masked: str, i: int, op: str) -> bool:
    before = masked[:i].rstrip()
    if op == "in":  # a word: not part of a name (`index`, `data.inbox`)
        after = masked[i + 2 : i + 3]
        return bool(before) and not re.match(r"[\w.]", masked[i - 1 : i]) and not re.match(r"\w", after)
    if op in ("<", ">") and masked[i + 1 : i + 2] == "=":
        return False
    if op in ("+", "-") and (not before or before[-1] in "([{,?:!=<>+-*/%&|"):
        return False  # a sign, not an operator
    return bool(before)


def _failure(text: str, ctx: Any, depth: int = 0) -> tuple[str, str] | None:
    """The smallest part of `text` that fails for `ctx`, and what it met; None if it does not fail."""
    text = _unwrap(text.strip())
    outcome = _evaluate(text, ctx)
    if outcome is None or outcome[1] is None:
        return None
    err = outcome[1]
    if depth > 20 or err.startswith(MISSING):
        return text, err  # a missing field names itself
    for op in ("||", "&&"):
        parts = split_top(text, op)
        if len(parts) > 1:
            return next((f for p in parts if (f := _failure(p, ctx, depth + 1))), (text, err))
    binary = _split_binary(text)
    if binary is not None:
        left, op, right = binary
        inner = _failure(left, ctx, depth + 1) or _failure(right, ctx, depth + 1)
        if inner is not None:
            return inner
        lv, rv = _value(left, ctx), _value(right, ctx)
        return text, _mismatch(left, lv, op, right, rv)
    if text[:1] in ("!", "-"):
        inner = _failure(text[1:], ctx, depth + 1)
        return inner or (
            text,
            f"{text[1:].strip()} is {_typed(_value(text[1:], ctx))}, which `{text[0]}` does not take",
        )
    if text.endswith(")"):
        described = _call_failure(text, err, ctx, depth)
        if described is not None:
            return described
    path = _PATH_END.match(text) if _FIELD.fullmatch(text) else None
    if path is not None:
        parent = _value(path.group(1), ctx)
        if not isinstance(parent, dict):
            return text, f"{path.group(1)} is {_typed(parent)}, which has no field {path.group(2)}"
    values = field_values(text, ctx)
    return text, err + (f" ({values})" if values else "")


def _call_failure(text: str, err: str, ctx: Any, depth: int) -> tuple[str, str] | None:
    """`target.name(args)` or `name(args)` that failed: inside an argument, or on their types."""
    masked = _mask(text)
    opens_at = next((i for i in range(len(masked)) if masked[i] == "(" and _closing(masked, i) == len(text) - 1), -1)
    head = _CALL.match(text[: opens_at + 1]) if opens_at > 0 else None
    if head is None:
        return None
    target, name = head.group(1), head.group(2)
    args = split_top(text[opens_at + 1 : -1], ",") if text[opens_at + 1 : -1].strip() else []
    for piece in ([target] if target else []) + args:
        inner = _failure(piece, ctx, depth + 1)
        if inner is not None:
            return inner
    if not err.startswith("Undefined variable or function") or any(_evaluate(a, ctx) is None for a in args):
        return None  # a macro (`exists(x, …)`) or a failure of the function itself: said as it is
    types = ", ".join(_type_name(_value(a, ctx)).split(" ")[-1] for a in args)  # `(string, int)`: no articles
    if target is not None:
        return text, f"{target} is {_typed(_value(target, ctx))}, which has no {name}({types})"
    if len(args) == 1:
        return text, f"{args[0]} is {_typed(_value(args[0], ctx))}, which {name}() does not take"
    return text, f"{name}() does not take ({types})"


def _value(text: str, ctx: Any) -> Any:
    outcome = _evaluate(text, ctx)
    return outcome[0] if outcome is not None else None


def _mismatch(left: str, lv: Any, op: str, right: str, rv: Any) -> str:
    """Two values an operator does not take: said from the side that reads the event."""
    if not _reads_event(left) and _reads_event(right):
        left, lv, right, rv = right, rv, left, lv
    other = f"{right}, {_typed(rv)}" if _reads_event(right) else _type_name(rv)
    if op in _RELATIONS:
        return f"{left} is {_typed(lv)}, compared with {other}"
    if op == "in":
        return f"{left} is {_typed(lv)}, looked up in {other}"
    return f"{left} is {_typed(lv)}, combined by {op} with {other}"


def explain_error(source: str, event: Event) -> str | None:
    """What an expression that errored for `event` met, at its smallest failing part:
    "data.exit_code is a string '0', compared with an int (in data.exit_code > 0)". A missing
    field is said as the engine says it. None when it does not error for `event`."""
    found = _failure(source, expr.event_context(event))
    if found is None:
        return None
    sub, what = found
    return what if what.startswith(MISSING) else f"{what} (in {sub})"


# ---- false clauses ----------------------------------------------------------------------------


def _outcome(clause: str, ctx: Any) -> tuple[bool | None, str]:
    """(True/False, "") or (None, error) for one clause."""
    try:
        compiled = expr.compile_expr(clause)
    except expr.ExprError as exc:
        return None, exc.message
    value, err = expr.evaluate(compiled, ctx)
    if err is not None:
        return None, err
    return (value if isinstance(value, bool) else None), ("" if isinstance(value, bool) else f"gave {value!r}")


def _described(clause: str, ctx: Any, err: str = "") -> str:
    if err and not err.startswith(MISSING) and (found := _failure(clause, ctx)) is not None:
        sub, what = found
        return f"{clause} ({what}" + (f" in {sub})" if sub != clause else ")")
    values = field_values(clause, ctx)
    if err.startswith(MISSING) and "missing" in values:
        err = ""  # the values already say which field is missing
    detail = "; ".join(x for x in (err, values) if x)
    return f"{clause}" + (f" ({detail})" if detail else "")


def explain_false(source: str, event: Event, ctx: Any = None) -> str:
    """Why a `where` was false for `event`: the whole expression first (as the engine records it),
    then the failing clause(s) with their field values. `ctx`: the event's CEL context, when the
    caller has it already (one per event, however many watches missed it)."""
    ctx = expr.event_context(event) if ctx is None else ctx
    head = f"{WHERE_FALSE}{source}"
    whole = _unwrap(source.strip())
    alternatives = split_top(whole, "||")
    if len(alternatives) > 1:
        return f"{head} — no alternative held: " + " | ".join(
            _described(a, ctx, _outcome(a, ctx)[1]) for a in alternatives
        )
    clauses = split_top(whole, "&&")
    failing = []
    if len(clauses) > 1:
        for n, clause in enumerate(clauses, 1):
            ok, err = _outcome(clause, ctx)
            if ok is not True:
                what = "errored" if ok is None and not err.startswith("gave ") else "false"
                failing.append(f"clause {n} of {len(clauses)} {what}: {_described(clause, ctx, err)}")
    if failing:
        return f"{head} — " + "; ".join(failing)
    values = field_values(whole, ctx)
    return f"{head} ({values})" if values else head


def explain_errored(reason: str, event: Event) -> str:
    """An engine's `where errored: …` / `key errored: … (in SOURCE)` reason, with what the
    expression met for `event`; the reason as it was when it cannot be read back."""
    head, sep, tail = reason.rpartition(" (in ")
    prefix = next((p for p in ERRORED if head.startswith(p)), None)
    if not sep or prefix is None or not tail.endswith(")"):
        return reason
    try:
        described = explain_error(tail[:-1], event)
    except expr.ExprError:
        return reason  # " (in " was inside the source itself
    return prefix + described if described is not None else reason


@functools.lru_cache(maxsize=4096)
def _fields_read(source: str) -> tuple[expr.Expr, ...]:
    """The field paths a `where` reads (`data.a.b`, `subject`), compiled: what its words depend on."""
    found: list[expr.Expr] = []
    for m in _FIELD.finditer(_mask(source)):
        with contextlib.suppress(expr.ExprError):
            found.append(expr.compile_expr(source[m.start() : m.end()]))
    return tuple(found)


# Why a `where` was false depends only on the values of the fields it reads, and events repeat
# them (the same few hosts and levels): the words are kept by (source, those values).
_DESCRIBED: dict[tuple[str, str], str] = {}
_DESCRIBED_MAX = 4096


_READ_CHARS_KEPT = 512  # values read beyond this (a `where` over all of `data`) are worded each time


def _explain_false_cached(source: str, event: Event, ctx: Any) -> str:
    read = repr([expr.evaluate(e, ctx) for e in _fields_read(source)])
    if len(read) > _READ_CHARS_KEPT:
        return explain_false(source, event, ctx)
    found = _DESCRIBED.get((source, read))
    if found is None:
        found = explain_false(source, event, ctx)
        if len(_DESCRIBED) >= _DESCRIBED_MAX:
            _DESCRIBED.clear()
        _DESCRIBED[(source, read)] = found
    return found


def describe_misses(decisions: list[Decision], events: dict[int, Event]) -> None:
    """Rewrite each kept miss's reason to say what the event met: for a `where_false` (the
    engine's `where false: <source>`) the failing clause and its field values; for an error, the
    failing part and the values and types it met. `events` are the batch's events by sequence."""
    contexts: dict[int, Any] = {}  # by sequence: the CEL conversion is the dear part
    for d in decisions:
        event = events.get(d.seq) if d.seq is not None else None
        if event is None:
            continue
        if d.verdict == Verdict.WHERE_FALSE and d.reason.startswith(WHERE_FALSE):
            assert d.seq is not None
            ctx = contexts.get(d.seq)
            if ctx is None:
                ctx = contexts[d.seq] = expr.event_context(event)
            d.reason = _explain_false_cached(d.reason[len(WHERE_FALSE) :], event, ctx)
        elif d.verdict in (Verdict.WHERE_ERROR, Verdict.KEY_ERROR):
            d.reason = explain_errored(d.reason, event)
