"""Which part of a `where` was false, and the field values involved — for `explain`.

A `where` is usually a conjunction ("subject matched but `data.exit_code == 0` was false") or a
list of alternatives. Splitting it at the top level, outside parentheses and string literals,
and evaluating each part against the event names the clause that failed. It runs only for the
misses that are kept for `explain`, never on the engine's hot path.
"""

from __future__ import annotations

import json
import re
from typing import Any

from watchd import expr
from watchd.model import Event

WHERE_FALSE = "where false: "  # how the engine words a false `where`; kept as the reason's start
VALUE_CHARS = 60  # a field value is shown up to this many characters
_STRING = re.compile(r"""[rRbB]{0,2}(\"\"\"[\s\S]*?\"\"\"|'''[\s\S]*?'''|"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')""")
_FIELD = re.compile(
    r"(?<![\w.])(data(?:\.[A-Za-z_]\w*|\[\s*(?:\"[^\"]*\"|'[^']*'|\d+)\s*\])*|subject|source|time|id)\b"
)


def split_top(source: str, op: str) -> list[str]:
    """`a && (b || c) && "x&&y"` split at `op` outside brackets and strings; one part if none."""
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
            return [source.strip()]  # a top-level conditional is one clause: splitting would change it
        elif depth == 0 and masked.startswith(op, i):
            parts.append(source[start:i].strip())
            start = i + len(op)
            i = start
            continue
        i += 1
    parts.append(source[start:].strip())
    return [_unwrap(p) for p in parts if p]


def _unwrap(part: str) -> str:
    """`(a && b)` → `a && b` when one pair of brackets encloses the whole part."""
    while part.startswith("(") and part.endswith(")"):
        depth, closes_at = 0, 0
        for closes_at, ch in enumerate(_mask(part)):  # noqa: B007 (used after the loop)
            depth += (ch == "(") - (ch == ")")
            if depth == 0:
                break
        if closes_at != len(part) - 1:
            return part  # `(a) && (b)`: the first bracket closes before the end
        part = part[1:-1].strip()
    return part


def _mask(text: str) -> str:
    """String literals blanked out, so brackets and operators inside them are not seen."""
    return _STRING.sub(lambda m: "_" * len(m.group(0)), text)


def _show(value: Any) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= VALUE_CHARS else text[: VALUE_CHARS - 1] + "…"


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
    values = field_values(clause, ctx)
    if err.startswith("no such field") and "missing" in values:
        err = ""  # the values already say which field is missing
    detail = "; ".join(x for x in (err, values) if x)
    return f"{clause}" + (f" ({detail})" if detail else "")


def explain_false(source: str, event: Event) -> str:
    """Why a `where` was false for `event`: the whole expression first (as the engine records it),
    then the failing clause(s) with their field values."""
    ctx = expr.event_context(event)
    head = f"{WHERE_FALSE}{source}"
    whole = _unwrap(source.strip())
    alternatives = split_top(whole, "||")
    if len(alternatives) > 1:
        return f"{head} — no alternative held: " + " | ".join(_described(a, ctx) for a in alternatives)
    clauses = split_top(whole, "&&")
    failing = []
    if len(clauses) > 1:
        for n, clause in enumerate(clauses, 1):
            ok, err = _outcome(clause, ctx)
            if ok is not True:
                failing.append(f"clause {n} of {len(clauses)} false: {_described(clause, ctx, err)}")
    if failing:
        return f"{head} — " + "; ".join(failing)
    values = field_values(whole, ctx)
    return f"{head} ({values})" if values else head


def describe_misses(decisions: list[Any], events: dict[int, Event]) -> None:
    """Rewrite each kept `where_false` reason (the engine's `where false: <source>`) to name the
    failing clause and its field values. `events` are the batch's events by stream sequence."""
    for d in decisions:
        if d.verdict == "where_false" and d.seq in events and d.reason.startswith(WHERE_FALSE):
            d.reason = explain_false(d.reason[len(WHERE_FALSE) :], events[d.seq])
