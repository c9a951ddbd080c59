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
# Per plan, the stretches of the sets of `where`s ruled out together (one set per combination of
# values), kept up to this many candidates in all (references to shared tuples: ~8 bytes each).
STRETCH_ROUTES_KEPT = 100_000
_NONE: frozenset[int] = frozenset()


class Plan:
    __slots__ = (
        "_misses",
        "_stretched",
        "_stretches",
        "blank_keys",
        "blank_wheres",
        "equalities",
        "key_exprs",
        "routes",
        "variables",
    )

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
        self._misses = [(logic.id, k, reason) for logic, _, _, _, k, reason in routes]  # each route's, ruled out
        self._stretches: dict[tuple[Any, ...], list[Stretch]] = {(): [(False, routes, ())]}
        self._stretched = 0  # candidates in the stretches kept

    def values(self, data: Any) -> tuple[Any, ...]:
        """What the equality index needs of `data`: at each indexed path, the literal the value
        equals, or that it equals none, or that it is not there. Set operations wait for a new
        combination (`stretches`), so an event costs one lookup per path, however many watches."""
        found = []
        for path, passing, _ in self.equalities:
            value = data
            for name in path:
                if type(value) is not dict:
                    value = _ABSENT
                    break
                value = value.get(name, _ABSENT)
            if value is not _ABSENT:
                value = _value_key(value)
                if value not in passing:
                    value = _NEVER
            found.append(value)
        return tuple(found)

    def ruled_out(self, values: tuple[Any, ...]) -> frozenset[int]:
        """The `where` slots that an equality conjunct makes false, given `values`."""
        out = _NONE
        for (_, passing, slots), value in zip(self.equalities, values, strict=True):
            if value is not _ABSENT:  # else the conjunct errors: whether the `where` is false is for it to say
                out = out | slots.difference(passing.get(value, _NONE))
        return out

    def stretches(self, values: tuple[Any, ...]) -> list[Stretch]:
        """The routes in order, cut into stretches gone through one by one and stretches of
        routes ruled out, whose misses are recorded together (worked out once per `values`)."""
        found = self._stretches.get(values)
        if found is None:
            ruled = self.ruled_out(values)
            if self._stretched >= STRETCH_ROUTES_KEPT:
                self._stretches, self._stretched = {(): self._stretches[()]}, 0
            found = []
            for route, miss in zip(self.routes, self._misses, strict=True):
                out = route[3] in ruled
                if not found or found[-1][0] != out:
                    found.append((out, [], ()))
                found[-1][1].append(miss if out else route)
            found = [
                (out, items, tuple(sorted({k for _, k, _ in items if k >= 0})) if out else ())
                for out, items, _ in found
            ]
            self._stretched += len(self.routes)
            self._stretches[values] = found
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
