"""NATS-style subject patterns (`*` one token, `>` the rest) and an index from subject to watches."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


def subject_matches(pattern: str, subject: str) -> bool:
    return _tokens_match(tuple(pattern.split(".")), tuple(subject.split(".")))


def _tokens_match(pattern: tuple[str, ...], subject: tuple[str, ...]) -> bool:
    for i, token in enumerate(pattern):
        if token == ">":
            return len(subject) > i
        if i >= len(subject) or (token != "*" and token != subject[i]):
            return False
    return len(pattern) == len(subject)


class _Node(Generic[T]):
    """One token of the wildcard patterns: what continues from here, and what ends here."""

    __slots__ = ("children", "ends", "rest")

    def __init__(self) -> None:
        self.children: dict[str, _Node[T]] = {}  # by literal token, and by "*"
        self.ends: list[tuple[int, T]] = []  # patterns ending at this token
        self.rest: list[tuple[int, T]] = []  # patterns with ">" after this token


class SubjectIndex(Generic[T]):
    """Literal patterns by dict lookup, wildcard patterns in a token trie.

    A subject walks the trie along its tokens (with the `*` branch beside each), so nothing scans
    every pattern, even where subjects are many and the engine's per-subject plans turn over.
    Candidates come in the order they were added, whichever way they matched.
    """

    def __init__(self) -> None:
        self._exact: dict[str, list[tuple[int, T]]] = {}
        self._wild: _Node[T] = _Node()
        self._has_wild = False
        self._added = 0

    def add(self, pattern: str, item: T) -> None:
        entry = (self._added, item)
        self._added += 1
        tokens = pattern.split(".")
        if "*" in tokens or ">" in tokens:
            self._has_wild = True
            node = self._wild
            for token in tokens:
                if token == ">":  # takes the rest, whatever follows it (as `subject_matches` does)
                    node.rest.append(entry)
                    break
                node = node.children.setdefault(token, _Node())
            else:
                node.ends.append(entry)
        else:
            self._exact.setdefault(pattern, []).append(entry)

    def candidates(self, subject: str) -> list[T]:
        """The items whose pattern `subject` matches, in the order added (not cached: the engine
        keeps what it makes of them, per subject)."""
        entries = list(self._exact.get(subject, ()))
        if self._has_wild:
            wild: list[tuple[int, T]] = []
            self._walk(self._wild, subject.split("."), 0, wild)
            if wild:
                entries = sorted(entries + wild, key=lambda e: e[0])
        return [item for _, item in entries]

    def _walk(self, node: _Node[T], tokens: list[str], i: int, out: list[tuple[int, T]]) -> None:
        if i == len(tokens):
            out += node.ends
            return
        out += node.rest  # `>` after this point takes one token or more: there is at least one
        token = tokens[i]
        child = node.children.get(token)
        if child is not None:
            self._walk(child, tokens, i + 1, out)
        star = node.children.get("*") if token != "*" else None
        if star is not None:
            self._walk(star, tokens, i + 1, out)
