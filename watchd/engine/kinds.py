"""The registry of watch kinds: a new kind is one module and one entry here."""

from __future__ import annotations

from watchd.config import Watch
from watchd.engine.absent import AbsentLogic
from watchd.engine.base import WatchLogic
from watchd.engine.count import CountLogic
from watchd.engine.deadline import DeadlineLogic
from watchd.engine.match import MatchLogic

KINDS: tuple[type[WatchLogic], ...] = (MatchLogic, CountLogic, AbsentLogic, DeadlineLogic)


def compile_watch(watch: Watch, version: int, default_zone: str) -> WatchLogic:
    """The definition compiled by the kind that takes it (its CEL compiled, durations parsed)."""
    for kind in KINDS:
        logic = kind.of(watch, version, default_zone)
        if logic is not None:
            return logic
    raise TypeError(f"no watch kind takes {type(watch).__name__}")  # the config's tagged union is closed
