"""A `match` with `count` and `window`: fire when `count` events of one key fall inside a sliding
`window` (then count afresh), at most once a `cooldown` when one is set."""

from __future__ import annotations

from watchd.config import MatchWatch, Watch
from watchd.cron.schedule import parse_duration
from watchd.engine.base import EVIDENCE_KEEP, NO_EVIDENCE, Decision, EngineState, EventInput, Situation, WatchLogic
from watchd.engine.match import MatchLogic
from watchd.engine.verdict import Verdict

_COUNTED = Verdict.COUNTED  # bound once: see verdict.py


class CountLogic(MatchLogic):
    def __init__(self, watch: MatchWatch, version: int, default_zone: str) -> None:
        super().__init__(watch, version, default_zone)
        self.count = watch.count or 0
        self.window = watch.window or ""
        self.window_s = parse_duration(self.window)
        # The reason of a `counted` decision, by how many are counted: worded once, not per event.
        self._counted = tuple(f"{n} of {self.count} in {self.window}" for n in range(self.count))
        self._reached = f" × {self.pattern.describe()} within {self.window}"  # after the count, when it fires

    @classmethod
    def of(cls, watch: Watch, version: int, default_zone: str) -> WatchLogic | None:
        return cls(watch, version, default_zone) if isinstance(watch, MatchWatch) and watch.count else None

    def on_event(self, s: EngineState, key: str | None, event: EventInput) -> None:
        now = s.clock
        st = s.state(self.id, key)
        hits, since = st.hits, now - self.window_s
        if hits and hits[0] <= since:  # in time order: most counted events find none to drop
            hits = tuple([t for t in hits if t > since])
        st.hits = (*hits, now)
        st.evidence = s.keep(st.evidence, event.event, EVIDENCE_KEEP)
        if len(st.hits) < self.count:
            reason = self._counted[len(st.hits)]
            s.out.decisions.append(Decision(now, self.id, key, _COUNTED, reason, event.event.id, event.seq))
            return
        reason = f"{len(st.hits)}{self._reached}"
        evidence = s.shown(st.evidence, self.id, key)
        st.hits, st.evidence = (), NO_EVIDENCE
        self.fire_unless_cooling(s, key, st, reason, evidence, event)

    def on_rewind(self, s: EngineState, now: float) -> None:
        super().on_rewind(s, now)
        for _, st in s.states(self.id):
            # Events counted on the clock that ran ahead happened, and just now as far as the
            # clock that came back can tell: they stay counted, inside the window ending now.
            st.hits = tuple(min(t, now) for t in st.hits)

    def explain_pending(self, sit: Situation) -> str | None:
        counted = sit.latest(Verdict.COUNTED)
        if counted is None:
            return None
        return f"did not fire: count not reached — {counted.reason}" + (
            f" (key {counted.key})" if counted.key is not None else ""
        )
