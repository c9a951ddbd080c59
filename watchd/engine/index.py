"""NATS-style subject patterns (`*` one token, `>` the rest) and an index from subject to watches."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")

_CACHE_LIMIT = 20_000


def subject_matches(pattern: str, subject: str) -> bool:
    return _tokens_match(tuple(pattern.split(".")), tuple(subject.split(".")))


def _tokens_match(pattern: tuple[str, ...], subject: tuple[str, ...]) -> bool:
    for i, token in enumerate(pattern):
        if token == ">":
            return len(subject) > i
        if i >= len(subject) or (token != "*" and token != subject[i]):
            return False
    return len(pattern) == len(subject)


class SubjectIndex(Generic[T]):
    """Literal patterns by dict lookup, wildcard patterns tested once per distinct subject.

    Subjects repeat (a home server sees a few hundred distinct ones), so the candidate list of
    each subject is computed once and cached; nothing scans every watch per event.
    """

    def __init__(self) -> None:
        self._exact: dict[str, list[T]] = {}
        self._wild: list[tuple[tuple[str, ...], T]] = []
        self._cache: dict[str, list[T]] = {}

    def add(self, pattern: str, item: T) -> None:
        tokens = tuple(pattern.split("."))
        if "*" in tokens or ">" in tokens:
            self._wild.append((tokens, item))
        else:
            self._exact.setdefault(pattern, []).append(item)
        self._cache.clear()

    def candidates(self, subject: str) -> list[T]:
        found = self._cache.get(subject)
        if found is None:
            found = list(self._exact.get(subject, ()))
            if self._wild:
                tokens = tuple(subject.split("."))
                found.extend(item for pattern, item in self._wild if _tokens_match(pattern, tokens))
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[subject] = found
        return found
