"""The pure engine on a virtual clock, for tests: emit events, answer incidents, let time pass
(with watchd running, or down), and collect every decision and fire."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from typing import Any

import msgspec

from watchd.config import Watch, WatchDef
from watchd.engine import Engine, EventInput, Fire, Outputs, Tick
from watchd.engine.answers import ANSWER_SUBJECT
from watchd.model import make_event, own_event

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC).timestamp()


def defs(text: str) -> list[tuple[WatchDef, int]]:
    raw = tomllib.loads(text)
    return [(WatchDef(msgspec.convert(w, Watch), "t.toml", 1, str(i)), 1) for i, w in enumerate(raw["watch"])]


class Sim:
    """A virtual clock around one engine: emit events and advance time, collect outputs."""

    def __init__(self, text: str, now: float = T0, zone: str = "UTC") -> None:
        self.engine = Engine(zone)
        self.now = now
        self.seq = 0
        self.engine.load(defs(text), now)
        self.fires: list[Fire] = []
        self.decisions: list[Any] = []

    def _take(self, out: Outputs) -> list[Fire]:
        self.fires.extend(out.fires)
        self.decisions.extend(out.decisions)
        return out.fires

    def emit(
        self, subject: str, data: dict[str, Any] | None = None, *, after: float = 0.0, id: str | None = None
    ) -> list[Fire]:
        self.now += after
        self.seq += 1
        event = make_event(subject, data or {}, id=id or f"e{self.seq}", time_s=self.now)
        return self._take(self.engine.step(EventInput(event, self.now, self.seq)))

    def advance(self, seconds: float) -> list[Fire]:
        """Let time pass with watchd running: it wakes at each due timer, as the daemon does."""
        target = self.now + seconds
        fires: list[Fire] = []
        while (due := self.engine.next_due()) is not None and due <= target:
            self.now = max(self.now, due)
            fires += self._take(self.engine.step(Tick(self.now)))
        self.now = target
        return fires + self._take(self.engine.step(Tick(self.now)))

    def jump(self, seconds: float) -> list[Fire]:
        """Time passes with watchd down: one tick at the end."""
        self.now += seconds
        return self._take(self.engine.step(Tick(self.now)))

    def verdicts(self, watch: str) -> list[str]:
        return [d.verdict for d in self.decisions if d.watch == watch]

    def answer(self, action: str, watch: str, *, after: float = 0.0, by: str = "cli:tester", **data: Any) -> list[Fire]:
        """An answer (ack, snooze, mute, unmute) as the daemon steps it: a `watchd.answer` event."""
        self.now += after
        self.seq += 1
        fields = {"action": action, "watch": watch, "by": by, **data}
        event = own_event(ANSWER_SUBJECT, {k: v for k, v in fields.items() if v is not None}, time_s=self.now)
        return self._take(self.engine.step(EventInput(event, self.now, self.seq)))

    def tick(self, seconds: float = 0.0) -> list[Fire]:
        """Time passes by `seconds`, then the engine looks at the clock once (timers due fire)."""
        return self.jump(seconds)

    def set_back(self, seconds: float) -> None:
        """The wall clock is set back: the daemon takes the engine's clock back with it."""
        self.now -= seconds
        self.engine.rewind(self.now)

    def fired(self, watch: str) -> list[Fire]:
        return [f for f in self.fires if f.watch == watch]
