"""Check plain data (parsed TOML) against msgspec Struct definitions, reporting every problem at once.

msgspec.convert stops at the first problem and words it for programmers, so a file with three
mistakes would take three runs. This walks the data alongside msgspec.inspect's description of the
types and collects each problem with the data path where it is (tomlpos turns that into a line).
It still builds the Struct: a wrong optional field is left at its default and any other wrong value
is replaced by a stand-in ("", 0, [] …), so the checks that follow still see the rest of the file
(and skip what was replaced: see `Issue.replaced`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any, TypeVar, cast

import msgspec
import msgspec.inspect as mi

from watchd.tomlpos import PathPart

T = TypeVar("T")
DataPath = tuple[PathPart, ...]

_INVALID: Any = object()  # a value that cannot be used; its problem is already recorded


@dataclass(frozen=True)
class Issue:
    path: DataPath
    message: str
    replaced: bool = True  # the value at `path` was replaced by a default or stand-in (not: an unknown key)


def convert(value: Any, typ: type[T] | Any, path: DataPath = ()) -> tuple[T | None, list[Issue]]:
    """`value` as `typ`, and every problem found on the way. With problems, the result has
    defaults and stand-ins in place of the wrong values; None when `value` itself is unusable (not
    a table, or an unknown `kind`)."""
    issues: list[Issue] = []
    cleaned = _check(value, _type_info(cast(Any, typ)), path, issues)
    if cleaned is _INVALID:
        return None, issues
    try:
        return msgspec.convert(cleaned, typ), issues
    except msgspec.ValidationError as exc:  # a constraint the walk above does not model
        return None, [*issues, Issue(path, str(exc))]


@functools.lru_cache(maxsize=64)
def _type_info(typ: Any) -> mi.Type:
    """msgspec's description of a type, built once: it walks every annotation of every Struct the
    type reaches, which cost ~12 ms a watch when done per watch (12 s for 1,000 watches)."""
    return mi.type_info(typ)


def did_you_mean(word: str, choices: Sequence[str]) -> str | None:
    """The choice closest to a misspelt word, if one is close enough to be meant."""
    import difflib  # only a config with a mistake needs it: not loaded by every start

    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return close[0] if close else None


def unknown_key(key: str, known: Sequence[str], what: str = "field") -> str:
    guess = did_you_mean(key, known)
    if guess:
        return f"unknown {what} `{key}`: did you mean `{guess}`?"
    return f"unknown {what} `{key}`: valid ones are {', '.join(known)}" if known else f"unknown {what} `{key}`"


def _check(value: Any, t: mi.Type, path: DataPath, issues: list[Issue]) -> Any:
    if isinstance(t, mi.AnyType):
        return value
    if isinstance(t, mi.UnionType):
        return _union(value, t, path, issues)
    if isinstance(t, mi.StructType):
        return _struct(value, t, path, issues)
    if isinstance(t, mi.ListType):
        if not isinstance(value, list):
            return _wrong_type(value, t, path, issues)
        return [_usable(v, t.item_type, (*path, i), issues) for i, v in enumerate(value)]
    if isinstance(t, mi.DictType):
        if not isinstance(value, dict):
            return _wrong_type(value, t, path, issues)
        return {k: _usable(v, t.value_type, (*path, k), issues) for k, v in value.items()}
    if isinstance(t, mi.LiteralType):
        if isinstance(value, str | int) and not isinstance(value, bool) and value in t.values:
            return value
        issues.append(Issue(path, _not_a_choice(path, value, [str(v) for v in t.values])))
        return _INVALID
    if _fits(value, t):
        out_of_range = _out_of_range(value, t)
        if out_of_range is None:
            return value
        issues.append(Issue(path, f"{_label(path)} {out_of_range}, not {_describe_value(value)}"))
        return _INVALID
    return _wrong_type(value, t, path, issues)


def _out_of_range(value: Any, t: mi.Type) -> str | None:
    """What a number breaks of its type's bounds (msgspec.Meta ge/gt/le/lt), in words; None if fine.
    TOML's nan and inf are never a setting's value: a bounded number must be finite."""
    if not isinstance(t, mi.IntType | mi.FloatType):
        return None
    low = t.ge if t.ge is not None else t.gt
    high = t.le if t.le is not None else t.lt
    if low is None and high is None:
        return None
    if value != value or value in (float("inf"), float("-inf")):
        return "must be a finite number"
    too_low = low is not None and (value < low if t.ge is not None else value <= low)
    too_high = high is not None and (value > high if t.le is not None else value >= high)
    if not (too_low or too_high):
        return None
    words = []
    if low is not None:
        words.append(f"at least {low:,}" if t.ge is not None else f"more than {low:,}")
    if high is not None:
        words.append(f"at most {high:,}" if t.le is not None else f"less than {high:,}")
    return "must be " + " and ".join(words)


def _usable(value: Any, t: mi.Type, path: DataPath, issues: list[Issue]) -> Any:
    """The checked value, or a stand-in of the right type (its problem is recorded)."""
    checked = _check(value, t, path, issues)
    return _stand_in(t) if checked is _INVALID else checked


def _stand_in(t: mi.Type) -> Any:
    """The plainest value of type `t`: "" for a string, a table of stand-ins for a Struct…"""
    if isinstance(t, mi.UnionType):
        return None if t.includes_none else _stand_in(t.types[0])
    if isinstance(t, mi.StructType):
        out = {f.encode_name: _stand_in(f.type) for f in t.fields if f.required}
        return {t.tag_field: t.tag, **out} if t.tag_field else out
    if isinstance(t, mi.LiteralType):
        return t.values[0]
    empty: dict[type[mi.Type], Any] = {
        mi.ListType: [],
        mi.DictType: {},
        mi.StrType: "",
        mi.IntType: 0,
        mi.FloatType: 0.0,
    }
    return empty.get(type(t), False)


def _fits(value: Any, t: mi.Type) -> bool:
    if isinstance(t, mi.StrType):
        return isinstance(value, str)
    if isinstance(t, mi.BoolType):
        return isinstance(value, bool)
    if isinstance(t, mi.IntType):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(t, mi.FloatType):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(t, mi.NoneType):
        return value is None
    return True  # a type no config uses: msgspec.convert has the last word


def _struct(
    value: Any, t: mi.StructType, path: DataPath, issues: list[Issue], siblings: Sequence[mi.StructType] = ()
) -> Any:
    """`siblings`: the other members of a tagged union, so a key of another `type` is named as such."""
    if not isinstance(value, dict):
        return _wrong_type(value, t, path, issues)
    fields = {f.encode_name: f for f in t.fields}
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key == t.tag_field:
            out[key] = item
            continue
        f = fields.get(key)
        if f is None:
            if t.forbid_unknown_fields:
                issues.append(Issue((*path, key), _unknown_field(key, t, siblings), replaced=False))
            continue
        checked = _check(item, f.type, (*path, key), issues)
        if checked is not _INVALID:
            out[key] = checked
        elif f.required:
            out[key] = _stand_in(f.type)
        # else left out: its default stands in
    for name, f in fields.items():
        if f.required and name not in value:
            # The path names the field, so checks of it are skipped; its position is the table's.
            issues.append(Issue((*path, name), f"missing required field `{name}`"))
            out[name] = _stand_in(f.type)
    return out


def _union(value: Any, t: mi.UnionType, path: DataPath, issues: list[Issue]) -> Any:
    if value is None and t.includes_none:
        return None
    members = [m for m in t.types if not isinstance(m, mi.NoneType)]
    tagged = [m for m in members if isinstance(m, mi.StructType) and m.tag_field]
    if tagged:
        return _tagged(value, tagged, path, issues)
    closest: tuple[Any, list[Issue]] | None = None
    for member in members:
        trial: list[Issue] = []
        checked = _check(value, member, path, trial)
        if not trial:
            return checked
        if closest is None and _same_kind(value, member):
            closest = checked, trial  # e.g. a list with one bad item, for `str | list[str]`
    if closest is not None:
        issues.extend(closest[1])
        return closest[0]
    return _wrong_type(value, t, path, issues)


def _tagged(value: Any, structs: list[mi.StructType], path: DataPath, issues: list[Issue]) -> Any:
    """A table whose `kind` or `type` says which Struct it is."""
    if not isinstance(value, dict):
        return _wrong_type(value, structs[0], path, issues)
    field = str(structs[0].tag_field)
    by_tag = {str(s.tag): s for s in structs}
    tag = value.get(field)
    if tag is None:
        issues.append(Issue(path, f"missing required field `{field}`: one of {', '.join(by_tag)}"))
        return _INVALID
    if tag not in by_tag:
        issues.append(Issue((*path, field), _not_a_choice((*path, field), tag, list(by_tag))))
        return _INVALID
    return _struct(value, by_tag[tag], path, issues, [s for s in structs if s.tag != tag])


def _unknown_field(key: str, t: mi.StructType, siblings: Sequence[mi.StructType]) -> str:
    """A misspelt key gets a guess; a key of another member of the union (`every` on a webhook
    source) says whose key it is and which keys this one takes."""
    known = [f.encode_name for f in t.fields]
    owners = [str(s.tag) for s in siblings if any(f.encode_name == key for f in s.fields)]
    if not owners:  # an exact key of another type outranks a guess (`every` is not a misspelt `verify`)
        return unknown_key(key, known)
    here = f'{t.tag_field} = "{t.tag}"'
    return (
        f"`{key}` is not a key of {here}: it belongs to {t.tag_field} {' and '.join(owners)}; "
        f"{here} takes {', '.join(known)}"
    )


def _same_kind(value: Any, t: mi.Type) -> bool:
    if isinstance(t, mi.ListType):
        return isinstance(value, list)
    if isinstance(t, mi.StructType | mi.DictType):
        return isinstance(value, dict)
    if isinstance(t, mi.LiteralType):
        return isinstance(value, str)
    if isinstance(t, mi.IntType | mi.FloatType):
        return _fits(value, t)  # a number out of bounds: say so, not "must be an integer"
    return False


def _wrong_type(value: Any, t: mi.Type, path: DataPath, issues: list[Issue]) -> Any:
    message = f"{_label(path)} must be {_describe(t)}, not {_describe_value(value)}"
    if isinstance(value, datetime | date | time) and _accepts_str(t):
        message += ': put it in quotes, e.g. "2026-12-01T09:00"'
    issues.append(Issue(path, message))
    return _INVALID


def _not_a_choice(path: DataPath, value: Any, choices: list[str]) -> str:
    message = f"{_label(path)} must be one of {', '.join(choices)}, not {_describe_value(value)}"
    guess = did_you_mean(value, choices) if isinstance(value, str) else None
    return f"{message}: did you mean {guess!r}?" if guess else message


def _label(path: DataPath) -> str:
    """`for`, `then[1]`, `watch[0]`: the key a problem is about, as the user wrote it."""
    names = [i for i, part in enumerate(path) if isinstance(part, str)]
    if not names:
        return "the value"
    last = names[-1]
    return "`" + str(path[last]) + "".join(f"[{i}]" for i in path[last + 1 :]) + "`"


def _accepts_str(t: mi.Type) -> bool:
    if isinstance(t, mi.UnionType):
        return any(_accepts_str(m) for m in t.types)
    return isinstance(t, mi.StrType)


def _describe(t: mi.Type) -> str:
    if isinstance(t, mi.UnionType):
        return " or ".join(_describe(m) for m in t.types if not isinstance(m, mi.NoneType))
    if isinstance(t, mi.ListType):
        return f"an array of {_plural(t.item_type)}"
    if isinstance(t, mi.LiteralType):
        return "one of " + ", ".join(str(v) for v in t.values)
    return {
        mi.StrType: "a string",
        mi.IntType: "an integer",
        mi.FloatType: "a number",
        mi.BoolType: "true or false",
        mi.StructType: "a table",
        mi.DictType: "a table",
    }.get(type(t), "a value of another type")


def _plural(t: mi.Type) -> str:
    return {mi.StrType: "strings", mi.IntType: "integers", mi.FloatType: "numbers"}.get(type(t), "values")


def _describe_value(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:39] + "…"
        return f"the string {shown!r}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime):
        return "a date-time"
    if isinstance(value, date):
        return "a date"
    if isinstance(value, time):
        return "a time of day"
    return type(value).__name__
