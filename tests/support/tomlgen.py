"""Plain data to TOML text, for generated configs and watch files (the standard library reads TOML
but does not write it). Covers what the generators make: tables of tables, arrays of tables,
strings, integers of any size, floats including nan and inf, booleans, arrays, inline tables."""

from __future__ import annotations

import json
import math
import re
from typing import Any

_BARE = re.compile(r"[A-Za-z0-9_-]+")


def key(name: str) -> str:
    return name if _BARE.fullmatch(name) else json.dumps(name)


def value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        # JSON escapes are TOML basic-string escapes, except that TOML has no "\/" (json never
        # writes it) and refuses a lone surrogate (json writes "\ud800": a TOML error, as it should be).
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def dumps(doc: dict[str, Any]) -> str:
    """A document: plain keys first, then `[table]`s (nested ones as `[a.b]`), then `[[array]]`s."""
    lines: list[str] = []
    _table(doc, (), lines)
    return "\n".join(lines) + "\n"


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def _table(doc: dict[str, Any], path: tuple[str, ...], lines: list[str]) -> None:
    for k, v in doc.items():
        if not isinstance(v, dict) and not _is_table_array(v):
            lines.append(f"{key(k)} = {value(v)}")
    for k, v in doc.items():
        if isinstance(v, dict):
            here = (*path, k)
            lines.append(f"\n[{'.'.join(key(p) for p in here)}]")
            _table(v, here, lines)
    for k, v in doc.items():
        if _is_table_array(v):
            here = (*path, k)
            for item in v:
                lines.append(f"\n[[{'.'.join(key(p) for p in here)}]]")
                _table(item, here, lines)
