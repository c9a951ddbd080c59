"""The one interface every source type implements, and what a running source is given.

A source is a publisher and nothing more: it reads the world, hands `Emit`s to its context with
the position they bring it to, and the context publishes them (publish.py) and persists the
position only after JetStream acknowledged them. It never sees the engine or the store, so the same
class runs inside the daemon, standalone (`watchd source run`) and dry (`watchd source test`).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from watchd.sources.health import SourceHealth
from watchd.sources.settings import SourceSettings

Position = dict[str, Any]  # what a source needs to resume: a cursor, an offset, last values (JSON)


@dataclass(frozen=True, slots=True)
class Emit:
    """One event a source wants published. `id` is deterministic (SPEC 8), so a re-send after a
    crash lands once; `time_s` defaults to when it is published. `flat`: the data holds strings,
    integers, booleans and None a few levels deep, nothing to walk for depth or NaN (the journal's)."""

    subject: str
    data: dict[str, Any]
    id: str
    time_s: float | None = None
    flat: bool = False


class Outlet(abc.ABC):
    """Where a source's output goes: JetStream then the position file (publish.Publisher), or the
    terminal (`watchd source test`)."""

    # True when nothing is stored: a source whose service forgets what it handed over once told
    # (a Telegram offset sent, a Slack envelope acknowledged) must then tell it nothing.
    dry: ClassVar[bool] = False

    @abc.abstractmethod
    async def emit(self, emits: Sequence[Emit], position: Position | None) -> None: ...

    @abc.abstractmethod
    async def save(self, position: Position) -> None: ...


@dataclass
class SourceContext:
    name: str
    base_dir: Path  # relative paths in the settings start here (the config's folder)
    position: Position  # as last persisted; {} the first time
    outlet: Outlet
    health: SourceHealth
    clock: Callable[[], float]
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("watchd.sources"))
    # The longest one wait lasts before the clock is read again: a clock that jumps (a test's
    # virtual clock, a laptop's resume) is noticed within it.
    max_wait_s: float = 60.0

    async def emit(self, emits: Sequence[Emit], position: Position | None = None) -> None:
        """Publish `emits`, then persist `position` (when given): the position never runs ahead of
        what the stream holds. Raises NatsUnavailable when NATS did not store them."""
        await self.outlet.emit(emits, position)
        if position is not None:
            self.position = position

    async def save(self, position: Position) -> None:
        """Persist a position that published nothing (an ETag learnt, a snapshot refreshed)."""
        await self.outlet.save(position)
        self.position = position

    async def sleep_until(self, at: float) -> bool:
        """Wait until the clock reads `at`, or until stopped; True when stopped."""
        while not self.stop.is_set():
            left = at - self.clock()
            if left <= 0:
                return False
            await self.sleep(min(left, self.max_wait_s))
        return True

    async def sleep(self, seconds: float) -> bool:
        """Wait `seconds` or until stopped; True when stopped."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), max(0.0, seconds))
        return self.stop.is_set()


class Source(abc.ABC):
    """One configured source. Subclasses own their state and set `type_name`."""

    type_name: ClassVar[str]
    # Served by the daemon's HTTP listener rather than a task of its own (webhook).
    on_listener: ClassVar[bool] = False
    # Keeps a position; False for a source whose service holds what it has not acknowledged (slack).
    positional: ClassVar[bool] = True

    def __init__(self, name: str, settings: SourceSettings) -> None:
        self.name = name
        self.settings = settings

    @abc.abstractmethod
    async def run(self, ctx: SourceContext) -> None:
        """Produce events until `ctx.stop` is set. An exception ends this run; the supervisor logs
        it, counts it and starts the source again after a backoff."""

    async def once(self, ctx: SourceContext) -> None:
        """One round of work, for `watchd source test` (one poll, one scan). Default: none; the
        test then runs `run` for its `--for`."""
        raise NotImplementedError
