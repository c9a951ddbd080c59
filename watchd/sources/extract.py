"""What a poll compares: the whole body, a CEL `select` over its JSON, a `css` selector over its
HTML (selectolax's Lexbor engine), or a `regex` over its text."""

from __future__ import annotations

import functools
import re
from typing import Any

import msgspec

from watchd.model import data_problem


class CssError(ValueError):
    """A selector the parser cannot read."""


class ExtractError(Exception):
    """A body the setting cannot be applied to (not JSON, nothing matched): the poll failed."""


@functools.lru_cache(maxsize=256)
def compile_css(selector: str) -> str:
    """The selector, once checked against an empty document (selectolax parses it on use)."""
    from selectolax.lexbor import LexborHTMLParser, SelectolaxError

    try:
        LexborHTMLParser("<html></html>").css(selector)
    except (SelectolaxError, ValueError):
        raise CssError(f"css selector {selector!r} cannot be parsed: e.g. span.price or #stock > b") from None
    return selector


def _text(body: bytes) -> str:
    return body.decode("utf-8", errors="replace")


def by_css(body: bytes, selector: str) -> str:
    """The text of every matching element, one per line (a page listing two prices shows both)."""
    from selectolax.lexbor import LexborHTMLParser

    nodes = LexborHTMLParser(_text(body)).css(compile_css(selector))
    if not nodes:
        raise ExtractError(f"css {selector!r} matched nothing in the page")
    return "\n".join((n.text(separator=" ", strip=True) or "") for n in nodes)


def by_regex(body: bytes, pattern: str) -> str:
    found = re.search(pattern, _text(body))
    if found is None:
        raise ExtractError(f"regex {pattern!r} matched nothing in the body")
    return found.group(1) if found.re.groups else found.group(0)


def by_select(body: bytes, source: str) -> Any:
    """The value of the CEL expression with the parsed body as `data`, as plain JSON values."""
    from watchd import expr

    try:
        parsed = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise ExtractError(f"the body is not JSON ({exc}), which select needs") from None
    compiled = expr.compile_expr(source)
    value, error = expr.evaluate(compiled, expr.context({"data": parsed}))
    if error is not None:
        raise ExtractError(f"select {source!r} failed: {error}")
    return plain(value)


def plain(value: Any) -> Any:
    """CEL's result as JSON values (its maps and lists are Python's already; timestamps are not)."""
    try:
        out = msgspec.json.decode(msgspec.json.encode(value))
    except (TypeError, msgspec.EncodeError):
        return str(value)
    if isinstance(out, dict | list) and data_problem({"v": out}) is not None:
        return str(value)
    return out


def extract(body: bytes, *, select: str | None, css: str | None, regex: str | None) -> Any:
    """The value a poll compares and reports: JSON for select, text otherwise."""
    if select is not None:
        return by_select(body, select)
    if css is not None:
        return by_css(body, css)
    if regex is not None:
        return by_regex(body, regex)
    return _text(body)
