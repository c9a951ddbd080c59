"""The one place a source's output becomes envelopes (SPEC section 2) and reaches the stream.

`Publisher` builds each event (subject and data checked at the edge, the source's deterministic id,
`source` = the source's name), publishes it on `watchd.events.<subject>` with `Nats-Msg-Id` = its
id, waits for JetStream's acknowledgement, and only then persists the source's position. A crash
between the two re-sends what was already stored; the stream's duplicate window drops it, so kill -9
loses nothing and publishes nothing twice. `DryOutlet` builds the same envelopes and prints them
(`watchd source test`): nothing is published or persisted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import ClassVar, TextIO

from watchd.errors import EventRejected
from watchd.jspublish import PublishEvents
from watchd.limits import MAX_EVENT_BYTES
from watchd.model import Event, make_encoded_event
from watchd.sources.base import Emit, Outlet, Position
from watchd.sources.health import SourceHealth
from watchd.sources.state import PositionStore

log = logging.getLogger("watchd.sources")

PUBLISH_WINDOW = 512  # sent before their acks are awaited: as many as one journal batch


def envelope(name: str, emit: Emit, now: float, max_bytes: int = MAX_EVENT_BYTES) -> tuple[Event, bytes]:
    """The event for one emit and its encoding (measured, then published as it is); EventRejected
    (with its reason word) when it cannot enter the stream."""
    event, body = make_encoded_event(
        emit.subject, emit.data, id=emit.id, time_s=emit.time_s or now, source=name, flat=emit.flat
    )
    if len(body) > max_bytes:
        raise EventRejected(
            f"event on {emit.subject} is {len(body)} bytes, over the {max_bytes}-byte limit", reason="size"
        )
    return event, body


class Publisher(Outlet):
    def __init__(
        self,
        name: str,
        publish: PublishEvents,
        positions: PositionStore,
        health: SourceHealth,
        clock: Callable[[], float],
        *,
        max_bytes: int = MAX_EVENT_BYTES,
        on_published: Callable[[Event], None] | None = None,
    ) -> None:
        self.name = name
        # In the daemon, its publish: a failure to store then shows in its health (watchd/storage.py);
        # standalone, a JetStreamPublisher's.
        self.publish = publish
        self.positions = positions
        self.health = health
        self.clock = clock
        self.max_bytes = max_bytes
        self.on_published = on_published

    async def emit(self, emits: Sequence[Emit], position: Position | None) -> None:
        events: list[tuple[Event, bytes]] = []
        for item in emits:
            now = self.clock()
            try:
                events.append(envelope(self.name, item, now, self.max_bytes))
            except EventRejected as exc:
                # Not publishable as it stands (a subject a template rendered badly, data too big):
                # counted and logged, and passed over, or the source would stall on it forever.
                log.warning("source %s: event dropped: %s", self.name, exc.message)
                self.health.rejected(exc.reason, exc.message, now)
        # A window of publishes in flight on the one connection (they leave in order), each acked:
        # a burst (10,000 files) is not bound by one round trip per event.
        for start in range(0, len(events), PUBLISH_WINDOW):
            window = events[start : start + PUBLISH_WINDOW]
            acks = await self.publish(window)  # NatsUnavailable: no save
            now = self.clock()
            for (event, _body), ack in zip(window, acks, strict=True):
                self.health.published(now, ack.duplicate)
                if self.on_published is not None:
                    self.on_published(event)
        if position is not None:
            await self.save(position)

    async def save(self, position: Position) -> None:
        await asyncio.to_thread(self.positions.save, self.name, position)


class DryOutlet(Outlet):
    """Prints the envelopes one JSON line each; publishes and persists nothing."""

    dry: ClassVar[bool] = True

    def __init__(self, name: str, out: TextIO, health: SourceHealth, clock: Callable[[], float]) -> None:
        self.name = name
        self.out = out
        self.health = health
        self.clock = clock
        self.events: list[Event] = []
        self.dropped: list[str] = []  # why each event that could not be published was dropped

    async def emit(self, emits: Sequence[Emit], position: Position | None) -> None:
        for item in emits:
            now = self.clock()
            try:
                event, body = envelope(self.name, item, now)
            except EventRejected as exc:
                self.health.rejected(exc.reason, exc.message, now)
                self.dropped.append(exc.message)
                self.out.write(f"# dropped: {exc.message}\n")
                continue
            self.health.published(now, False)
            self.events.append(event)
            self.out.write(body.decode() + "\n")
        self.out.flush()

    async def save(self, position: Position) -> None:
        pass
