"""A parser for the part of CEL that `celfast` compiles: literals, variables, field selection,
indexing, lists, `!`, comparisons, `in`, `&&`, `||`, and the calls `has`, `size`, `startsWith`,
`endsWith`, `contains`, `matches`, `exists`, `all`.

Anything else (arithmetic, `?:`, maps, raw or bytes literals, other functions and macros, a
reserved word) raises `Outside`: the expression then goes to the CEL binding, which parses all
of CEL. The tree is plain tuples so the compiler can match on their shapes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

I64_MIN, I64_MAX = -(2**63), 2**63 - 1


class Outside(Exception):
    """The expression uses something outside the subset (or is not CEL at all)."""


# Names CEL reserves, and the language's own words: none is a plain identifier here.
_RESERVED = frozenset(
    {
        *("as", "break", "const", "continue", "else", "for", "function", "if", "import", "let", "loop"),
        *("package", "namespace", "return", "var", "void", "while", "in", "true", "false", "null"),
    }
)
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t", "r": "\r"}

_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r\n\f]+)
   |(?P<float>\d+\.\d+(?:[eE][+-]?\d+)?(?![\w.])|\d+[eE][+-]?\d+(?![\w.]))
   |(?P<int>(?:0[xX][0-9a-fA-F]+|\d+)(?![\w.]))
   |(?P<str>"(?:[^"\\\n\r]|\\.)*"|'(?:[^'\\\n\r]|\\.)*')
   |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)
   |(?P<op>&&|\|\||==|!=|<=|>=|[<>!()\[\],.\-])
    """,
    re.VERBOSE,
)

# The tree: (tag, ...) tuples.
#   ("lit", value)            ("var", name)             ("sel", obj, field)
#   ("idx", obj, index)       ("list", items)           ("not", x)
#   ("cmp", op, a, b)         ("and", a, b)             ("or", a, b)
#   ("has", obj, field)       ("call", name, target, args)
#   ("macro", name, target, binder, body)
Node = tuple[Any, ...]

_METHODS = {"size": 0, "startsWith": 1, "endsWith": 1, "contains": 1, "matches": 1}
_MACROS = ("exists", "all")
_RELATIONS = ("==", "!=", "<", "<=", ">", ">=", "in")


@dataclass
class _Tok:
    kind: str
    text: str


def tokenize(source: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(source):
        m = _TOKEN.match(source, pos)
        if m is None:
            raise Outside(f"unexpected {source[pos]!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind != "ws":
            out.append(_Tok(kind, m.group()))
    return out


def _string(text: str) -> str:
    body, out, i = text[1:-1], [], 0
    while i < len(body):
        ch = body[i]
        if ch == "\\":
            esc = body[i + 1]
            if esc not in _ESCAPES:
                raise Outside(f"escape \\{esc}")
            out.append(_ESCAPES[esc])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


class _Parser:
    def __init__(self, tokens: list[_Tok]) -> None:
        self.toks = tokens
        self.i = 0

    def peek(self, text: str) -> bool:
        return self.i < len(self.toks) and self.toks[self.i].text == text and self.toks[self.i].kind in ("op", "ident")

    def take(self, text: str) -> None:
        if not self.peek(text):
            raise Outside(f"expected {text!r}")
        self.i += 1

    def next(self) -> _Tok:
        if self.i >= len(self.toks):
            raise Outside("unexpected end")
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def ident(self) -> str:
        tok = self.next()
        if tok.kind != "ident" or tok.text in _RESERVED:
            raise Outside(f"expected a name, not {tok.text!r}")
        return tok.text

    def parse(self) -> Node:
        node = self.or_()
        if self.i != len(self.toks):
            raise Outside(f"unexpected {self.toks[self.i].text!r}")
        return node

    def or_(self) -> Node:
        node = self.and_()
        while self.peek("||"):
            self.i += 1
            node = ("or", node, self.and_())
        return node

    def and_(self) -> Node:
        node = self.relation()
        while self.peek("&&"):
            self.i += 1
            node = ("and", node, self.relation())
        return node

    def relation(self) -> Node:
        node = self.unary()
        while self.i < len(self.toks) and self.toks[self.i].text in _RELATIONS:
            op = self.next().text
            node = ("cmp", op, node, self.unary())
        return node

    def unary(self) -> Node:
        if self.peek("!"):
            nots = 0
            while self.peek("!"):
                self.i += 1
                nots += 1
            # CEL's parser drops `!!` written together (not `!(!x)`): `!!x` is `x` itself.
            inner = self.member(self.primary())
            return ("not", inner) if nots % 2 else inner
        if self.peek("-"):  # only a negative number: arithmetic is outside the subset
            self.i += 1
            tok = self.next()
            if tok.kind == "int":
                value = -_int(tok.text)
                if value < I64_MIN:
                    raise Outside("int literal out of range")
                return self.member(("lit", value))
            if tok.kind == "float":
                return self.member(("lit", -float(tok.text)))
            raise Outside("negation")
        return self.member(self.primary())

    def primary(self) -> Node:
        tok = self.next()
        if tok.kind == "int":
            value = _int(tok.text)
            if value > I64_MAX:
                raise Outside("int literal out of range")
            return ("lit", value)
        if tok.kind == "float":
            return ("lit", float(tok.text))
        if tok.kind == "str":
            return ("lit", _string(tok.text))
        if tok.kind == "ident":
            words: dict[str, Any] = {"true": True, "false": False, "null": None}
            if tok.text in words:
                return ("lit", words[tok.text])
            self.i -= 1
            name = self.ident()
            if self.peek("("):
                return self.global_call(name)
            return ("var", name)
        if tok.text == "(":
            node = self.or_()
            self.take(")")
            return node
        if tok.text == "[":
            return ("list", self.args("]"))
        raise Outside(f"unexpected {tok.text!r}")

    def args(self, close: str) -> list[Node]:
        items: list[Node] = []
        if self.peek(close):
            self.i += 1
            return items
        while True:
            items.append(self.or_())
            if self.peek(close):
                self.i += 1
                return items
            self.take(",")

    def global_call(self, name: str) -> Node:
        self.take("(")
        if name == "has":
            arg = self.or_()
            self.take(")")
            if arg[0] != "sel":
                raise Outside("has() takes a field selection")
            return ("has", arg[1], arg[2])
        args = self.args(")")
        if name == "size" and len(args) == 1:
            return ("call", "size", args[0], [])
        raise Outside(f"function {name}")

    def member(self, node: Node) -> Node:
        while True:
            if self.peek("."):
                self.i += 1
                name = self.ident()
                node = self.method(node, name) if self.peek("(") else ("sel", node, name)
            elif self.peek("["):
                self.i += 1
                index = self.or_()
                self.take("]")
                node = ("idx", node, index)
            else:
                return node

    def method(self, target: Node, name: str) -> Node:
        self.take("(")
        if name in _MACROS:
            binder = self.ident()
            self.take(",")
            body = self.or_()
            self.take(")")
            return ("macro", name, target, binder, body)
        args = self.args(")")
        if _METHODS.get(name) != len(args):
            raise Outside(f"method {name}")
        return ("call", name, target, args)


def _int(text: str) -> int:
    return int(text, 16) if text[:2] in ("0x", "0X") else int(text)


def parse(source: str) -> Node:
    """The tree of `source`, or `Outside` when it is not in the subset."""
    try:
        return _Parser(tokenize(source)).parse()
    except (IndexError, ValueError) as exc:
        raise Outside(str(exc)) from None


def free_variables(node: Node, bound: frozenset[str] = frozenset()) -> set[str]:
    """The variables `node` reads from outside (macro binders are local to their macro)."""
    tag = node[0]
    if tag == "var":
        return set() if node[1] in bound else {node[1]}
    if tag == "macro":
        return free_variables(node[2], bound) | free_variables(node[4], bound | {node[3]})
    found: set[str] = set()
    for part in node[1:]:
        if isinstance(part, tuple):
            found |= free_variables(part, bound)
        elif isinstance(part, list):
            for item in part:
                found |= free_variables(item, bound)
    return found
