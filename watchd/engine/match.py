"""`kind = "match"`: fire on every event that passes `on` (its `where`), per key at most once a
`cooldown` when one is set. Without a cooldown it keeps no state: the common case stays cheap."""

from __future__ import annotations

from typing import Any

from watchd.config import MatchWatch, Watch
from watchd.cron.schedule import parse_duration
from watchd.engine.base import CompiledPattern, EngineState, EventInput, KeyState, WatchLogic
from watchd.engine.verdict import Verdict
from watchd.model import iso


class MatchLogic(WatchLogic):
    kind = "match"

    def __init__(self, watch: MatchWatch, version: int, default_zone: str) -> None:
        super().__init__(watch, version, default_zone, CompiledPattern.of(watch.on))
        self.cooldown_s = parse_duration(watch.cooldown) if watch.cooldown else 0.0
        where = self.pattern.where
        self._matched = " matched" + (f" where {where.source}" if where else "")  # the reason, after the subject

    @classmethod
    def of(cls, watch: Watch, version: int, default_zone: str) -> WatchLogic | None:
        return cls(watch, version, default_zone) if isinstance(watch, MatchWatch) and not watch.count else None

    def on_event(self, s: EngineState, key: str | None, event: EventInput) -> None:
        reason = event.event.subject + self._matched
        if not self.cooldown_s:
            s.fire(self, key, event.event.id, reason, evidence=[s.evidence(event.event)], event=event)
            return
        self.fire_unless_cooling(s, key, s.state(self.id, key), reason, [s.evidence(event.event)], event)

    def on_rewind(self, s: EngineState, now: float) -> None:
        for _, st in s.states(self.id):
            if st.last_fire is not None and st.last_fire > now:
                st.last_fire = now  # the cooldown runs from the return, not from a future instant

    def fire_unless_cooling(
        self,
        s: EngineState,
        key: str | None,
        st: KeyState,
        reason: str,
        evidence: list[dict[str, Any]],
        event: EventInput,
    ) -> None:
        """Fire for `event`, unless this key fired less than `cooldown` ago."""
        if self.cooldown_s and st.last_fire is not None and s.clock < st.last_fire + self.cooldown_s:
            s.decide(self.id, key, Verdict.SUPPRESSED, f"cooldown until {iso(st.last_fire + self.cooldown_s)}", event)
            return
        if not self.shadow:  # shadow mode never fires, so it never starts a cooldown either
            st.last_fire = s.clock
        s.fire(self, key, event.event.id, reason, evidence=evidence, event=event)
