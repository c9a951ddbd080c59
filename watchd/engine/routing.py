"""What an event on one subject is judged by, worked out once per subject: its candidate watches
in order, each `where` and `key` they share numbered once, and the equality index.

Watches on one subject often share a `where` or a `key` (`data.host`): the engine evaluates each
distinct one once per event, in a slot, and every candidate reads its slot. The equality index
rules `where`s out without evaluating them: a top-level conjunct `data.x == "lit"` (a string,
bool or integer literal) is false for an event whose `data.x` is there and is not that literal,
and in CEL a false conjunct makes the whole `&&` false, whatever the others give (an error
included). Only the evaluation is saved: a watch ruled out records its miss as any other does.
"""

from __future__ import annotations

import functools
from typing import Any

from watchd import expr
from watchd.celparse import Node, Outside, parse
from watchd.engine.base import WHERE_FALSE, CompiledPattern, Handler, WatchLogic

UNSET: Any = object()  # a slot not evaluated yet for this event
_ABSENT: Any = object()  # a path the event does not have
_NEVER: Any = object()  # an event value no literal equals

Candidate = tuple[WatchLogic, CompiledPattern, Handler]
# A candidate as the engine's loop reads it: (logic, pattern, handler, where slot or -1, key slot
# or -1, the reason of a false `where`).
Route = tuple[WatchLogic, CompiledPattern, Handler, int, int, str]
# One indexed path: the values its literals take, with the `where` slots each lets pass, and every
# slot with a literal on that path.
Equality = tuple[tuple[str, ...], dict[Any, frozenset[int]], frozenset[int]]


# A stretch of consecutive routes: (ruled out, items, key slots). Routes the engine goes through one
# by one; or, ruled out by the equality index, the misses of those routes as (watch id, key slot,
# reason), recorded together (with the key slots they need evaluated first).
Stretch = tuple[bool, list[Any], tuple[int, ...]]
STRETCHES_KEPT = 1_000  # per plan: the sets of `where`s ruled out together (one per value combination)
_NONE: frozenset[int] = frozenset()


class Plan:
    __slots__ = ("_stretches", "blank_keys", "blank_wheres", "equalities", "key_exprs", "routes", "variables")

    def __init__(self, candidates: list[Candidate], *, share: bool = True) -> None:
        """`share` False gives every candidate slots of its own and no equality index: the engine
        then judges each watch on its own (what the index is tested against)."""
        wheres: dict[Any, int] = {}
        keys: dict[Any, int] = {}
        key_exprs: list[expr.Expr] = []
        routes: list[Route] = []
        variables: set[str] = set()
        by_path: dict[tuple[str, ...], tuple[dict[Any, set[int]], set[int]]] = {}
        for n, (logic, pattern, handle) in enumerate(candidates):
            variables |= pattern.variables
            w = k = -1
            reason = ""
            if pattern.where is not None:
                name: Any = pattern.where if share else n
                if name not in wheres:
                    wheres[name] = w = len(wheres)
                    if share:
                        for path, literal in equality_conjuncts(pattern.where):
                            passing, slots = by_path.setdefault(path, ({}, set()))
                            passing.setdefault(literal, set()).add(w)
                            slots.add(w)
                w = wheres[name]
                reason = WHERE_FALSE + pattern.where.source
            if pattern.key is not None:
                name = pattern.key if share else n
                if name not in keys:
                    keys[name] = len(keys)
                    key_exprs.append(pattern.key)
                k = keys[name]
            routes.append((logic, pattern, handle, w, k, reason))
        self.routes = routes
        self.variables = frozenset(variables)
        self.key_exprs = key_exprs  # by key slot
        self.blank_wheres: list[Any] = [UNSET] * len(wheres)
        self.blank_keys: list[Any] = [UNSET] * len(keys)
        self.equalities: list[Equality] = [
            (path, {lit: frozenset(s) for lit, s in passing.items()}, frozenset(slots))
            for path, (passing, slots) in by_path.items()
        ]
        self._stretches: dict[frozenset[int], list[Stretch]] = {_NONE: [(False, routes, ())]}

    def ruled_out(self, data: Any) -> frozenset[int]:
        """The `where` slots that an equality conjunct makes false for `data`."""
        out = _NONE
        for path, passing, slots in self.equalities:
            value = data
            for name in path:
                if type(value) is not dict:
                    value = _ABSENT
                    break
                value = value.get(name, _ABSENT)
            if value is _ABSENT:
                continue  # the conjunct errors: whether the `where` is false is for it to say
            gone = slots.difference(passing.get(_value_key(value), _NONE))
            if gone:
                out = out | gone
        return out

    def stretches(self, ruled: frozenset[int]) -> list[Stretch]:
        """The routes in order, cut into stretches gone through one by one and stretches of
        routes `ruled` out, whose misses are recorded together (worked out once per set)."""
        found = self._stretches.get(ruled)
        if found is None:
            if len(self._stretches) >= STRETCHES_KEPT:
                self._stretches = {_NONE: self._stretches[_NONE]}
            found = []
            for route in self.routes:
                out = route[3] in ruled
                if not found or found[-1][0] != out:
                    found.append((out, [], ()))
                found[-1][1].append((route[0].id, route[4], route[5]) if out else route)
            found = [
                (out, items, tuple(sorted({k for _, k, _ in items if k >= 0})) if out else ())
                for out, items, _ in found
            ]
            self._stretches[ruled] = found
        return found


def _value_key(value: Any) -> Any:
    """An event value as the literal keys are written (`_literal_key`): equal to one exactly when
    CEL's `==` holds between them (no coercion, but an int and a double compare by value)."""
    t = type(value)
    if t is str:
        return value
    if t is bool:
        return (bool, value)
    if t is int:
        return (int, value)
    if t is float and value.is_integer():
        return (int, int(value))
    return _NEVER


def _literal_key(value: Any) -> Any:
    t = type(value)
    if t is str:
        return value
    if t is bool:
        return (bool, value)
    if t is int and -(2**53) <= value <= 2**53:  # a double holds it exactly, so `==` with one is exact
        return (int, value)
    return None


def equality_conjuncts(where: expr.Expr) -> list[tuple[tuple[str, ...], Any]]:
    """The top-level `data.a.b == literal` conjuncts of a `where` in the compiled subset, as
    (path, literal key)."""
    return list(_equality_conjuncts(where.source)) if where.fast is not None else []


@functools.lru_cache(maxsize=4096)
def _equality_conjuncts(source: str) -> tuple[tuple[tuple[str, ...], Any], ...]:
    """Parsed once per source: plans are made again as subjects come and go."""
    try:
        tree = parse(source)
    except Outside:
        return ()
    found = []
    for node in _conjuncts(tree):
        if node[0] == "cmp" and node[1] == "==":
            a, b = node[2], node[3]
            if a[0] == "lit":
                a, b = b, a
            path = _data_path(a)
            if path and b[0] == "lit" and (literal := _literal_key(b[1])) is not None:
                found.append((path, literal))
    return tuple(found)


def _conjuncts(node: Node) -> list[Node]:
    if node[0] == "and":
        return _conjuncts(node[1]) + _conjuncts(node[2])
    return [node]


def _data_path(node: Node) -> tuple[str, ...]:
    """`data.a.b` as ("a", "b"); () for anything else."""
    names: list[str] = []
    while node[0] == "sel":
        names.append(node[2])
        node = node[1]
    if node[0] != "var" or node[1] != "data" or not names:
        return ()
    return tuple(reversed(names))
