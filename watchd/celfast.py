"""The common subset of CEL compiled to Python closures, with the semantics of the CEL binding.

Judging an event through the binding first converts the event to CEL values (≈6 µs for a small
`data`, more than the predicates cost); a compiled predicate reads the event's own Python values.
What it must agree with, value for value and error for error (tests/test_celfast.py checks it
on random expressions and events):

- types are not coerced: `1 == "1"` is false, `1 < "1"` and `!1` are errors; bool is not a
  number; int and double compare by value (as doubles), NaN is unordered (an error);
- a missing field is an error (`KeyError`, worded "no such field"), `has()` tests presence;
- `a && b` is false when either side is false, whatever the other (an error included); else the
  error of the right side, then of the left; `||` likewise with true;
- `exists`/`all` go through a list in order and stop at the first true (false) or error;
- `size` of a string counts its UTF-8 bytes, as the binding does; bytes order as unsigned bytes.

A compiled function raises `Unsupported` for a value it does not model (an integer beyond 64
bits, a macro over a map, whose order the binding does not keep): the caller asks the binding.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from watchd.celparse import Node, Outside, free_variables, parse

Fn = Callable[[Any, Any], Any]  # (the values: an event or alike, the macro binders) -> value

NO_OVERLOAD = "No such overload: the operation is not defined for the given operand types"
ROOTS = frozenset({"data", "subject", "source", "id"})  # `time` is a timestamp: left to the binding
_LOW, _HIGH = -(2**63), 2**64  # the binding holds int64 and uint64; beyond them a double
_SAFE = 2**53  # an int constant a double holds exactly: exact and double comparison agree


class Unsupported(Exception):
    """A value the compiled function does not model: evaluate with the binding instead."""


# Selecting a field of a list is indexing it with a string, to the binding.
_LIST_FIELD = "Unexpected type: got 'string', want 'int|uint'."


def _not_a_map(o: Any) -> TypeError:
    return TypeError(_LIST_FIELD if type(o) is list else NO_OVERLOAD)


def _undefined(name: str) -> RuntimeError:
    return RuntimeError(f"Undefined variable or function: '{name}'")


class Compiled:
    """A compiled expression: `fn(values, None)`, and the root variables it reads."""

    __slots__ = ("fn", "variables")

    def __init__(self, fn: Fn, variables: frozenset[str]) -> None:
        self.fn = fn
        self.variables = variables


def compile_fast(source: str) -> Compiled | None:
    """The compiled form of `source`, or None when it is outside the subset."""
    try:
        tree = parse(source)
        variables = free_variables(tree)
        if not variables <= ROOTS:
            return None
        return Compiled(_compile(tree, frozenset()), frozenset(variables))
    except Outside:
        return None


def wide(value: Any) -> bool:
    """Whether a value holds an int beyond 64 bits, which the binding gives back as a double:
    the compiled form's value is then not the binding's (callers ask the binding)."""
    t = type(value)
    return (t is int and not _LOW <= value < _HIGH) or ((t is list or t is dict) and _has_wide_int(value))


def _has_wide_int(value: Any) -> bool:
    t = type(value)
    if t is int:
        return not _LOW <= value < _HIGH
    if t is list:
        return any(_has_wide_int(x) for x in value)
    if t is dict:
        return any(_has_wide_int(x) for x in value.values())
    return False


# ---- values ----------------------------------------------------------------------------------


def _number(x: Any) -> float:
    """An int or double as the double the binding compares it as."""
    if type(x) is int and not _LOW <= x < _HIGH:
        raise Unsupported("int beyond 64 bits")
    return float(x)


def equal(a: Any, b: Any) -> bool:
    ta, tb = type(a), type(b)
    if ta is tb:
        if ta is int:
            if _LOW <= a < _HIGH and _LOW <= b < _HIGH:
                return bool(a == b)
            return _number(a) == _number(b)
        if ta is list:
            return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
        if ta is dict:
            return bool(a.keys() == b.keys()) and all(equal(x, b[k]) for k, x in a.items())
        if ta in (str, float, bool, bytes) or a is None:
            return bool(a == b)
        raise Unsupported(f"a value of type {ta.__name__}")
    if (ta is int or ta is float) and (tb is int or tb is float):
        return _number(a) == _number(b)
    return False


def compare(a: Any, b: Any) -> int:
    """-1, 0 or 1; an error where CEL has no ordering for the two."""
    ta, tb = type(a), type(b)
    if ta is int and tb is int and _LOW <= a < _HIGH and _LOW <= b < _HIGH:
        return int(a > b) - int(a < b)
    if (ta is int or ta is float) and (tb is int or tb is float):
        x, y = _number(a), _number(b)
        if x != x or y != y:
            raise TypeError(NO_OVERLOAD)
        return (x > y) - (x < y)
    if ta is tb and (ta is str or ta is bool or ta is bytes):
        return int(a > b) - int(a < b)
    raise TypeError(NO_OVERLOAD)


def contains(item: Any, container: Any) -> bool:
    tc = type(container)
    if tc is list:
        return any(equal(item, x) for x in container)
    if tc is dict:
        ti = type(item)
        if ti is str:
            return item in container
        if ti is bool or (ti is int and _LOW <= item < _HIGH):  # keys the binding can hold, never a JSON key's
            return False
        raise Unsupported("a map key of that type")
    raise TypeError(NO_OVERLOAD)


_ORDER_TESTS: dict[str, Callable[[int], bool]] = {
    "<": lambda c: c < 0,
    "<=": lambda c: c <= 0,
    ">": lambda c: c > 0,
    ">=": lambda c: c >= 0,
}


# ---- compiling -------------------------------------------------------------------------------


def _compile(node: Node, bound: frozenset[str]) -> Fn:
    tag = node[0]
    if tag == "lit":
        value = node[1]
        return lambda v, sc: value
    if tag in ("var", "sel"):
        return _path(node, bound)
    if tag == "idx":
        return _index(_compile(node[1], bound), _compile(node[2], bound))
    if tag == "list":
        items = [_compile(n, bound) for n in node[1]]
        return lambda v, sc: [f(v, sc) for f in items]
    if tag == "not":
        return _not(_compile(node[1], bound))
    if tag == "cmp":
        return _cmp(node[1], node[2], node[3], bound)
    if tag == "and":
        return _and(_compile(node[1], bound), _compile(node[2], bound))
    if tag == "or":
        return _or(_compile(node[1], bound), _compile(node[2], bound))
    if tag == "has":
        return _has(_compile(node[1], bound), node[2])
    if tag == "call":
        return _call(node[1], _compile(node[2], bound), [_compile(a, bound) for a in node[3]], node[3])
    if tag == "macro":
        return _macro(node[1], _compile(node[2], bound), node[3], _compile(node[4], bound | {node[3]}))
    raise Outside(tag)


def _path(node: Node, bound: frozenset[str]) -> Fn:
    """A variable and the fields selected from it, in one function: `data.a.b`."""
    fields: list[str] = []
    while node[0] == "sel":
        fields.append(node[2])
        node = node[1]
    fields.reverse()
    names = tuple(fields)
    if node[0] == "var" and node[1] == "data" and "data" not in bound and names:
        return _data_path(names)  # `data.…`: most paths, one call
    root = _var(node[1], bound) if node[0] == "var" else _compile(node, bound)
    if not names:
        return root
    if len(names) == 1:
        (name,) = names

        def select1(v: Any, sc: Any) -> Any:
            o = root(v, sc)
            if type(o) is dict:
                return o[name]
            raise _not_a_map(o)

        return select1

    def select(v: Any, sc: Any) -> Any:
        o = root(v, sc)
        for name in names:
            if type(o) is not dict:
                raise _not_a_map(o)
            o = o[name]
        return o

    return select


def _data_path(names: tuple[str, ...]) -> Fn:
    if len(names) == 1:
        (name,) = names

        def data1(v: Any, sc: Any) -> Any:
            o = v.data
            if type(o) is dict:
                return o[name]
            raise _not_a_map(o)

        return data1

    def data(v: Any, sc: Any) -> Any:
        o = v.data
        for name in names:
            if type(o) is not dict:
                raise _not_a_map(o)
            o = o[name]
        return o

    return data


def _var(name: str, bound: frozenset[str]) -> Fn:
    if name in bound:
        return lambda v, sc: sc[name]
    if name == "data":
        return lambda v, sc: v.data
    if name == "subject":
        return lambda v, sc: v.subject
    if name == "source":
        return lambda v, sc: v.source
    if name == "id":
        return lambda v, sc: v.id
    raise Outside(name)


def _index(obj: Fn, index: Fn) -> Fn:
    def idx(v: Any, sc: Any) -> Any:
        o, i = obj(v, sc), index(v, sc)
        to, ti = type(o), type(i)
        if to is list:
            if ti is not int:
                raise Unsupported("a list index that is not an int")
            if 0 <= i < len(o):
                return o[i]
            raise IndexError(f"index out of bounds: {i}")
        if to is dict:
            if ti is str:
                return o[i]
            raise Unsupported("a map index that is not a string")
        raise TypeError(NO_OVERLOAD)

    return idx


def _not(x: Fn) -> Fn:
    def not_(v: Any, sc: Any) -> bool:
        value = x(v, sc)
        if value is True:
            return False
        if value is False:
            return True
        raise TypeError(NO_OVERLOAD)

    return not_


_ERRORS = (KeyError, TypeError, RuntimeError, IndexError)  # what a compiled function raises for CEL


def _and(a: Fn, b: Fn) -> Fn:
    def and_(v: Any, sc: Any) -> bool:
        try:
            left = a(v, sc)
        except _ERRORS as exc:
            left = exc
        if left is False:
            return False
        right = b(v, sc)  # its error, if any, is the one CEL reports
        if right is False:
            return False
        if isinstance(left, BaseException):
            raise left
        if left is True and right is True:
            return True
        raise TypeError(NO_OVERLOAD)

    return and_


def _or(a: Fn, b: Fn) -> Fn:
    def or_(v: Any, sc: Any) -> bool:
        try:
            left = a(v, sc)
        except _ERRORS as exc:
            left = exc
        if left is True:
            return True
        right = b(v, sc)
        if right is True:
            return True
        if isinstance(left, BaseException):
            raise left
        if left is False and right is False:
            return False
        raise TypeError(NO_OVERLOAD)

    return or_


def _cmp(op: str, left: Node, right: Node, bound: frozenset[str]) -> Fn:
    a = _compile(left, bound)
    if right[0] == "lit" and op != "in":
        fast = _cmp_const(op, a, right[1])
        if fast is not None:
            return fast
    b = _compile(right, bound)
    if op == "in":
        if right[0] == "list" and all(n[0] == "lit" and type(n[1]) is str for n in right[1]):
            strings = frozenset(n[1] for n in right[1])
            return lambda v, sc: (x in strings) if type(x := a(v, sc)) is str else contains(x, b(v, sc))
        return lambda v, sc: contains(a(v, sc), b(v, sc))
    if op == "==":
        return lambda v, sc: equal(a(v, sc), b(v, sc))
    if op == "!=":
        return lambda v, sc: not equal(a(v, sc), b(v, sc))
    test = _ORDER_TESTS[op]
    return lambda v, sc: test(compare(a(v, sc), b(v, sc)))


def _cmp_const(op: str, a: Fn, const: Any) -> Fn | None:
    """`x OP constant`, specialised by the constant's type: the shape of most `where`s."""
    tc = type(const)
    if tc is str or tc is bool or const is None:
        if op == "==":
            return lambda v, sc: type(x := a(v, sc)) is tc and x == const
        if op == "!=":
            return lambda v, sc: not (type(x := a(v, sc)) is tc and x == const)
        return None
    if tc is int and -_SAFE <= const <= _SAFE:
        return _cmp_int(op, a, const)
    if tc is float:
        return _cmp_double(op, a, const)
    return None


def _cmp_int(op: str, a: Fn, c: int) -> Fn:
    """Against an int a double holds exactly: Python's exact comparison is the binding's, for an
    int (an int beyond 64 bits, a double there, is on the same side of `c`) and for a double."""
    if op == "==":
        return lambda v, sc: (type(x := a(v, sc)) is int or type(x) is float) and x == c
    if op == "!=":
        return lambda v, sc: not ((type(x := a(v, sc)) is int or type(x) is float) and x == c)
    check = _ORDER_CHECKS[op](c)

    def order(v: Any, sc: Any) -> bool:
        x = a(v, sc)
        t = type(x)
        if t is int or (t is float and x == x):
            return check(x)
        raise TypeError(NO_OVERLOAD)

    return order


def _cmp_double(op: str, a: Fn, c: float) -> Fn:
    """Against a double: an int is compared as the double it converts to, as the binding does."""
    if op in ("==", "!="):
        same = op == "=="
        return lambda v, sc: (_number(x) == c) is same if (type(x := a(v, sc)) is int or type(x) is float) else not same
    check = _ORDER_CHECKS[op](c)

    def order(v: Any, sc: Any) -> bool:
        x = a(v, sc)
        t = type(x)
        if t is float:
            if x == x and c == c:
                return check(x)
        elif t is int and c == c:
            return check(_number(x))
        raise TypeError(NO_OVERLOAD)

    return order


_ORDER_CHECKS: dict[str, Callable[[float], Callable[[float], bool]]] = {
    "<": lambda c: lambda x: x < c,
    "<=": lambda c: lambda x: x <= c,
    ">": lambda c: lambda x: x > c,
    ">=": lambda c: lambda x: x >= c,
}


def _has(obj: Fn, name: str) -> Fn:
    def has(v: Any, sc: Any) -> bool:
        o = obj(v, sc)
        if type(o) is dict:
            return name in o
        raise _not_a_map(o)

    return has


def _size(x: Any) -> int:
    t = type(x)
    if t is str:
        return len(x.encode("utf-8", "surrogatepass"))
    if t is list or t is dict or t is bytes:
        return len(x)
    raise _undefined("size")


_STRING_TESTS: dict[str, Callable[[str, str], bool]] = {
    "startsWith": str.startswith,
    "endsWith": str.endswith,
    "contains": str.__contains__,
}


def _call(name: str, target: Fn, args: list[Fn], arg_nodes: list[Node]) -> Fn:
    if name == "size":
        return lambda v, sc: _size(target(v, sc))
    if name == "matches":
        if arg_nodes[0][0] != "lit" or type(arg_nodes[0][1]) is not str:
            raise Outside("matches with a pattern that is not a literal")
        search = regex(arg_nodes[0][1]).search

        def matches(v: Any, sc: Any) -> bool:
            s = target(v, sc)
            if type(s) is str:
                return search(s) is not None
            raise _undefined("matches")

        return matches
    test = _STRING_TESTS[name]
    (arg,) = args
    if arg_nodes[0][0] == "lit" and type(arg_nodes[0][1]) is str:
        const = arg_nodes[0][1]

        def string_const(v: Any, sc: Any) -> bool:
            s = target(v, sc)
            if type(s) is str:
                return test(s, const)
            raise _undefined(name)

        return string_const

    def string_test(v: Any, sc: Any) -> bool:
        x = arg(v, sc)  # the binding evaluates the argument before the target
        s = target(v, sc)
        if type(s) is str and type(x) is str:
            return test(s, x)
        raise _undefined(name)

    return string_test


def _macro(name: str, target: Fn, binder: str, body: Fn) -> Fn:
    want = name == "exists"  # the value that ends the walk: true for exists, false for all

    def macro(v: Any, sc: Any) -> bool:
        items = target(v, sc)
        if type(items) is not list:
            if type(items) is dict:
                raise Unsupported("a macro over a map")
            raise TypeError(NO_OVERLOAD)
        scope = dict(sc) if sc else {}
        for item in items:
            scope[binder] = item
            got = body(v, scope)
            if got is want:
                return want is True
            if got is not (not want):
                raise TypeError(NO_OVERLOAD)
        return not want

    return macro


# ---- regular expressions ---------------------------------------------------------------------

# The RE2-like syntax the binding uses and Python's `re` agree on these, and only these: letters,
# digits, the usual operators, classes without POSIX names or set operations, `\d`, and escaped
# punctuation. `$` is the end of the text there (Python: `\Z`). Anything else goes to the binding.
_REGEX_PLAIN = re.compile(
    r"""(?:[\w \-#%&'",/:;<=>@`~!]|\\[dD.\\+*?()\[\]{}|^$\-]|[.^$*+?()|]|\[|\]|\{\d{1,3}(?:,\d{0,3})?\})*"""
)


def regex(pattern: str) -> re.Pattern[str]:
    """The pattern compiled for Python with the binding's meaning, or `Outside`."""
    if not _REGEX_PLAIN.fullmatch(pattern) or not pattern.isascii():
        raise Outside("regex syntax")
    if re.search(r"\(\?|\[:|&&|--|~~|\[\]|\[\^\]|[*+?}][+*]|\\[dD][-\]]|\[[^\]]*\\[dD]", pattern):
        raise Outside("regex syntax")
    translated = re.sub(r"(\\.)|\$", lambda m: m.group(1) or r"\Z", pattern)
    try:
        return re.compile(translated)
    except re.error:
        raise Outside("regex syntax") from None
