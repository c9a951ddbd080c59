"""Map a data path such as ("watch", 1, "within") back to a line and column of the TOML text.

Checks find problems at data paths; users need `watches/a.toml:14:1`. tomllib keeps no positions,
so this walks the text once, tracking table headers, arrays of tables and keys
(inline tables too), and records where each path is defined. It is a locator, not a parser:
the text has already been parsed, so it only has to be right for valid TOML. `FileProblems`
collects a file's problems at the positions it finds.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PathPart = str | int
Position = tuple[int, int]

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=""")


def _split_key(dotted: str) -> list[str]:
    parts = re.findall(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""", dotted)
    return [p[1:-1] if p[:1] in "\"'" else p for p in parts]


def _scan_inline(
    line: str, start: int, prefix: tuple[PathPart, ...], lineno: int, out: dict[tuple[PathPart, ...], Position]
) -> None:
    """Record keys inside `{ a = 1, b = { c = 2 } }` starting at `start` (just after `{`)."""
    stack = [prefix]
    i = start
    in_str: str | None = None
    expect_key = True
    while i < len(line):
        ch = line[i]
        if in_str:
            if ch == "\\" and in_str == '"':
                i += 2
                continue
            if ch == in_str:
                in_str = None
            i += 1
            continue
        if ch in "\"'" and not expect_key:
            in_str = ch
        elif ch == "{":
            expect_key = True
        elif ch == "}":
            stack.pop()
            if not stack:
                return
        elif ch == ",":
            expect_key = True
        elif ch == "#":
            return
        elif expect_key and not ch.isspace():
            m = _KEY.match(line, i)
            if m:
                key = tuple(_split_key(m.group(1)))
                path = stack[-1] + key
                out.setdefault(path, (lineno, i + 1))
                i = m.end()
                expect_key = False
                rest = line[i:].lstrip()
                if rest.startswith("{"):
                    i = line.index("{", i) + 1
                    stack.append(path)
                    expect_key = True
                continue
            expect_key = False
        i += 1


def index_positions(text: str) -> dict[tuple[PathPart, ...], Position]:
    """Every table, array element and key path in `text`, with its 1-based line and column."""
    out: dict[tuple[PathPart, ...], Position] = {}
    table: tuple[PathPart, ...] = ()
    array_counts: dict[tuple[PathPart, ...], int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        header = _HEADER.match(line)
        if header and not _KEY.match(line):
            names = tuple(_split_key(header.group(2)))
            if header.group(1) == "[[":
                count = array_counts.get(names, 0)
                array_counts[names] = count + 1
                out.setdefault(names, (lineno, 1))
                table = (*names, count)
            else:
                table = names
            out.setdefault(table, (lineno, 1))
            continue
        m = _KEY.match(line)
        if not m:
            continue
        path = table + tuple(_split_key(m.group(1)))
        out.setdefault(path, (lineno, m.start(1) + 1))
        value = line[m.end() :].lstrip()
        if value.startswith("{"):
            _scan_inline(line, line.index("{", m.end()) + 1, path, lineno, out)
    return out


def locate(positions: dict[tuple[PathPart, ...], Position], path: tuple[PathPart, ...]) -> Position:
    """The position of the longest prefix of `path` that the text defines; (1, 1) when none."""
    for end in range(len(path), 0, -1):
        pos = positions.get(path[:end])
        if pos is not None:
            return pos
    return (1, 1)


@dataclass(frozen=True, order=True)
class Problem:
    """One problem (or warning) at `file:line:col`; problems sort by file, then position."""

    file: str
    line: int
    col: int
    message: str
    warning: bool = False

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {'warning: ' if self.warning else ''}{self.message}"


class FileProblems:
    """Collects the problems of one file, located by their data path."""

    def __init__(self, display: str, text: str, found: list[Problem]) -> None:
        self.display = display
        self.positions = index_positions(text)
        self.found = found
        self.replaced: list[tuple[PathPart, ...]] = []  # wrong values, checked no further

    def at(self, path: tuple[PathPart, ...], message: str) -> None:
        # A check of (or over) a value that was wrong and replaced would only report a consequence.
        if not any(path and (r[: len(path)] == path or path[: len(r)] == r) for r in self.replaced):
            self.found.append(Problem(self.display, *locate(self.positions, path), message))

    def warn(self, path: tuple[PathPart, ...], message: str) -> None:
        self.found.append(Problem(self.display, *locate(self.positions, path), message, warning=True))

    def line_of(self, path: tuple[PathPart, ...]) -> int:
        return locate(self.positions, path)[0]


def read_toml(path: Path, display: str, found: list[Problem]) -> tuple[str, dict[str, Any]] | None:
    """The text and data of a TOML file; None, with its problem in `found`, when it has none."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        found.append(Problem(display, 1, 1, f"cannot read file: {exc}"))
        return None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib has no structured position: its message ends "(at line L, column C)"
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        line, col = (int(m.group(1)), int(m.group(2))) if m else (1, 1)
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        found.append(Problem(display, line, col, f"TOML syntax error: {msg}"))
        return None
