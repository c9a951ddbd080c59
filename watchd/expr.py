"""CEL predicates and keys over events.

Most expressions are in the subset `celfast` compiles to Python: those read the event's own
values. The rest go to the CEL binding, loaded on first use, through a CEL context built at most
once per event and shared by every expression that needs it.
"""

from __future__ import annotations

import functools
import re
from types import ModuleType, SimpleNamespace
from typing import Any

from watchd import celfast
from watchd.errors import WatchdError
from watchd.model import Event

VARIABLES = frozenset({"data", "subject", "time", "source", "id"})
# Macro binders (`tags.exists(t, t == "x")`) are listed among a program's references; they are
# local to the macro, not variables the event must provide.
_BINDER = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,")


@functools.cache
def _cel() -> ModuleType:
    """The CEL binding, loaded on first use: commands that compile no expression never pay for it."""
    import cel

    return cel


class ExprError(WatchdError):
    """A CEL expression that does not compile or names something an event does not have."""


class Expr:
    """A compiled CEL expression, with its source kept for messages and `explain`.

    `fast` is the expression compiled to Python (None outside the subset); the binding's program
    is compiled only when something needs it, so a config whose expressions are all in the subset
    never loads the binding.
    """

    __slots__ = ("_program", "fast", "source", "variables")

    def __init__(self, source: str, program: Any, variables: frozenset[str], fast: celfast.Fn | None = None) -> None:
        self.source = source
        self._program = program
        self.variables = variables  # which event fields it reads: the context holds only those
        self.fast = fast

    @property
    def program(self) -> Any:
        if self._program is None:
            self._program = _cel().compile(self.source)
        return self._program

    def __repr__(self) -> str:
        return f"Expr({self.source!r})"


@functools.lru_cache(maxsize=4096)
def compile_expr(source: str) -> Expr:
    """Compile once; identical sources across watches share one program."""
    fast = celfast.compile_fast(source)
    if fast is not None:
        return Expr(source, None, fast.variables, fast.fn)
    try:
        program = _cel().compile(source)
    except (ValueError, RuntimeError) as exc:
        first = str(exc).split("\n", 1)[0].replace("Failed to parse expression", "syntax error in")
        raise ExprError(first) from None
    unknown = set(program.references().get("variables", [])) - VARIABLES - set(_BINDER.findall(source))
    if unknown:
        names = ", ".join(sorted(unknown))
        raise ExprError(f"unknown variable {names}: an event has {', '.join(sorted(VARIABLES))}")
    return Expr(source, program, frozenset(program.references().get("variables", [])) & VARIABLES)


class Activation:
    """The values expressions read (an event, or alike), and the CEL context built from them
    the first time an expression outside the compiled subset needs one."""

    __slots__ = ("_ctx", "_plain", "values", "variables")

    def __init__(self, values: Any, variables: frozenset[str], plain: dict[str, Any] | None = None) -> None:
        self.values = values
        self.variables = variables
        self._plain = plain
        self._ctx: Any = None

    def cel(self) -> Any:
        """The binding's context. Converting Python values to CEL costs far more than evaluating
        (≈6 µs for a small `data` against ≈0.3 µs per predicate), so only the variables some
        expression reads are converted, once."""
        if self._ctx is None:
            plain = self._plain
            if plain is None:
                plain = {name: getattr(self.values, name) for name in self.variables}
            self._ctx = _cel().Context(plain)
        return self._ctx


def event_context(event: Event, variables: frozenset[str] = VARIABLES) -> Activation:
    """What expressions over one event read, shared by every candidate watch."""
    return Activation(event, variables)


def context(values: dict[str, Any]) -> Activation:
    """Expressions over plain values (a poll's parsed body as `data`)."""
    return Activation(SimpleNamespace(**values), frozenset(values), values)


def describe_error(exc: Exception) -> str:
    """CEL runtime errors in a line: a missing field is a KeyError whose text is the field name."""
    if isinstance(exc, KeyError):
        return f"no such field {exc.args[0]!r}" if exc.args else "no such field"
    text = str(exc).split(". ", 1)[0]
    return text or type(exc).__name__


def evaluate(expression: Expr, ctx: Activation) -> tuple[Any, str | None]:
    """(value, None) or (None, reason) — an error is data for `explain`, never an exception."""
    fast = expression.fast
    if fast is not None and expression.variables <= ctx.variables:
        try:
            value = fast(ctx.values, None)
            if not celfast.wide(value):
                return value, None
        except celfast.Unsupported:
            pass  # a value the compiled form does not model: the binding judges it
        except Exception as exc:  # worded like the binding's errors: see celfast
            return None, describe_error(exc)
    return evaluate_cel(expression, ctx)


def evaluate_cel(expression: Expr, ctx: Activation) -> tuple[Any, str | None]:
    """`evaluate` through the CEL binding, whatever the expression."""
    try:
        return expression.program.execute(ctx.cel()), None
    except Exception as exc:  # the CEL binding raises KeyError/TypeError/RuntimeError/ValueError
        return None, describe_error(exc)


def test_where(expression: Expr, ctx: Activation) -> tuple[bool, str | None]:
    """A `where` that errors, or is not a boolean, is false for that event; the reason is kept."""
    value, err = evaluate(expression, ctx)
    if err is not None:
        return False, f"where errored: {err}"
    if value is True:
        return True, None
    if value is False:
        return False, None
    return False, f"where gave {value!r}, not a boolean"


def key_of(expression: Expr, ctx: Activation) -> tuple[str | None, str | None]:
    """The per-key split value as a string, or (None, reason)."""
    fast = expression.fast
    if fast is not None and expression.variables <= ctx.variables:
        # `evaluate` inlined for the common case, a string: the engine asks this of most events.
        try:
            value = fast(ctx.values, None)
        except Exception:  # worded by `evaluate`, which also takes Unsupported to the binding
            value = None
        else:
            if type(value) is str:
                return value, None
    value, err = evaluate(expression, ctx)
    if err is not None:
        return None, f"key errored: {err}"
    if value is None:
        return None, "key is null"
    if isinstance(value, bool):
        return ("true" if value else "false"), None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value), None
