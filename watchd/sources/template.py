"""Webhook subject and id templates: `github.{header:X-GitHub-Event}`, `{json:pull_request.number}`,
`{query:kind}`.

A template is compiled once, when the config is loaded, so a misspelt field kind or an unbalanced
brace is a `validate` error with its line, never a surprise on the first delivery. Rendering
against one request fills each field from the request's headers (case-insensitive, as HTTP has
them), its parsed JSON body or its query string; a field the request lacks is a `TemplateMissing`
that the webhook answers with 400 and the field's name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

FieldKind = Literal["header", "json", "query"]
_KINDS: dict[str, FieldKind] = {"header": "header", "json": "json", "query": "query"}

_FIELD = re.compile(r"\{([^{}]*)\}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110)


class TemplateError(ValueError):
    """A template that cannot be compiled; the message says what to write instead."""


class TemplateMissing(Exception):
    """A request that lacks a field its template needs."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class Field:
    kind: FieldKind
    name: str  # a header or query name, or a dotted JSON path
    path: tuple[str, ...]  # the JSON path's parts (empty for header and query)

    def __str__(self) -> str:
        return f"{{{self.kind}:{self.name}}}"


@dataclass(frozen=True, slots=True)
class RequestFields:
    """What a template can read from one request."""

    headers: Mapping[str, str]  # case-insensitive (aiohttp's CIMultiDictProxy)
    query: Mapping[str, str]
    json: Mapping[str, Any] | None  # the parsed body, None when it is not a JSON object


@dataclass(frozen=True, slots=True)
class Template:
    text: str
    parts: tuple[str | Field, ...]

    @property
    def fields(self) -> tuple[Field, ...]:
        return tuple(p for p in self.parts if isinstance(p, Field))

    def render(self, request: RequestFields) -> str:
        if len(self.parts) == 1 and isinstance(self.parts[0], str):
            return self.parts[0]
        return "".join(p if isinstance(p, str) else _value(p, request) for p in self.parts)

    def sample(self, value: str = "x") -> str:
        """The template with every field as `value`: what its literal parts allow, checked at load."""
        return "".join(p if isinstance(p, str) else value for p in self.parts)


def compile_template(text: str) -> Template:
    """Parse a template; TemplateError names the first problem."""
    parts: list[str | Field] = []
    pos = 0
    for m in _FIELD.finditer(text):
        parts.append(text[pos : m.start()])
        parts.append(_field(m.group(1)))
        pos = m.end()
    parts.append(text[pos:])
    for literal in parts:
        if isinstance(literal, str) and ("{" in literal or "}" in literal):
            raise TemplateError(
                f"template {text!r} has an unbalanced brace: fields are written {{header:NAME}}, "
                "{json:a.b} or {query:NAME}"
            )
    return Template(text, tuple(p for p in parts if p != ""))


def _field(inside: str) -> Field:
    word, sep, name = inside.partition(":")
    kind, name = _KINDS.get(word.strip()), name.strip()
    if not sep or kind is None:
        raise TemplateError(f"unknown template field {{{inside}}}: use {{header:NAME}}, {{json:a.b}} or {{query:NAME}}")
    if not name:
        raise TemplateError(f"template field {{{inside}}} names nothing: e.g. {{{kind}:{_EXAMPLE[kind]}}}")
    if kind == "header" and not _HEADER_NAME.fullmatch(name):
        raise TemplateError(f"template field {{{inside}}}: {name!r} is not a header name")
    path: tuple[str, ...] = ()
    if kind == "json":
        path = tuple(name.split("."))
        if not all(path):
            raise TemplateError(f"template field {{{inside}}}: a JSON path is names joined by dots, e.g. a.b.c")
    return Field(kind, name, path)


_EXAMPLE = {"header": "X-GitHub-Event", "json": "action", "query": "kind"}


def _value(field: Field, request: RequestFields) -> str:
    if field.kind == "header":
        found: Any = request.headers.get(field.name)
        if found is None:
            raise TemplateMissing(f"the request has no {field.name} header, which {field} needs")
        return str(found)
    if field.kind == "query":
        found = request.query.get(field.name)
        if found is None:
            raise TemplateMissing(f"the request has no ?{field.name}= parameter, which {field} needs")
        return str(found)
    node: Any = request.json
    if node is None:
        raise TemplateMissing(f"the body is not a JSON object, which {field} needs")
    for depth, part in enumerate(field.path):
        node = _step(node, part)
        if node is _ABSENT:
            at = ".".join(field.path[: depth + 1])
            raise TemplateMissing(f"the body has no {at}, which {field} needs")
    if node is None or isinstance(node, dict | list):
        what = "null" if node is None else "an object" if isinstance(node, dict) else "an array"
        raise TemplateMissing(f"{field} is {what} in the body, not a string or number")
    if isinstance(node, str):
        return node
    return msgspec.json.encode(node).decode()  # true, 42, 1.5: as JSON writes them


_ABSENT: Any = object()


def _step(node: Any, part: str) -> Any:
    if isinstance(node, Mapping):
        return node.get(part, _ABSENT)
    if isinstance(node, list) and part.isdigit() and int(part) < len(node):
        return node[int(part)]
    return _ABSENT
