"""`kind = "absent"`: fire when `expect` has not arrived (per key) for `for`; once per silence,
and once more on its return when `recover` is set. A watch without a key, and each listed
`keys` entry, counts its silence from when the watch started."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from watchd.config import AbsentWatch, Watch
from watchd.cron.schedule import format_duration, parse_duration
from watchd.engine import answers
from watchd.engine.base import (
    NO_EVIDENCE,
    CompiledPattern,
    Decision,
    EngineState,
    EventInput,
    KeyState,
    Situation,
    WatchLogic,
    WatchMeta,
    for_key,
)
from watchd.engine.verdict import Verdict
from watchd.model import iso

_MATCHED = Verdict.MATCHED  # bound once: see verdict.py
_SEEN = "seen: timer re-armed"  # the reason of a `matched` decision: the key's silence counts from now


class AbsentLogic(WatchLogic):
    kind = "absent"
    resolves = True  # a silence ends when the events resume
    evidence_read_on_fire = True  # a key's last event is shown only when its silence fires

    def __init__(self, watch: AbsentWatch, version: int, default_zone: str) -> None:
        super().__init__(watch, version, default_zone, CompiledPattern.of(watch.expect))
        self.for_ = watch.for_
        self.for_s = parse_duration(watch.for_)
        self.recover = watch.recover
        self.listed_keys = watch.keys

    @classmethod
    def of(cls, watch: Watch, version: int, default_zone: str) -> WatchLogic | None:
        return cls(watch, version, default_zone) if isinstance(watch, AbsentWatch) else None

    def on_load(self, s: EngineState, meta: WatchMeta, now: float) -> None:
        # Keys known in advance are silent from the start, not only once first heard.
        for k in self.listed_keys if self.pattern.key else [None]:
            if s.peek(self.id, k) is None:
                s.state(self.id, k).last_seen = meta.activated_at

    def on_event(self, s: EngineState, key: str | None, event: EventInput) -> None:
        st = s.state(self.id, key)
        now, ev = s.clock, event.event
        s.out.decisions.append(Decision(now, self.id, key, _MATCHED, _SEEN, ev.id, event.seq))
        if not st.silent and st.last_seen is not None:
            # The common case, a key heard again while its timer runs: its due only moves later
            # (its incident's repeat, if any, stays), so the timer entry it has is left where it
            # is and moved on when found early (timers.py). Nothing is armed or allocated.
            st.last_seen = now
            st.evidence = s.keep(st.evidence, ev)
            return
        was = self.timer_due(st)
        if st.silent and st.last_seen is not None:
            silence = format_duration(now - st.last_seen)
            reason = f"{self.pattern.subject}{for_key(key)} resumed after {silence} of silence"
            answers.resolve(s, self, key, reason, event)
            if self.recover:
                s.decide(self.id, key, Verdict.RECOVERED, reason, event)
                evidence = [s.evidence(ev)]
                s.fire(self, key, "recover:" + ev.id, reason, evidence=evidence, event=event, opens_incident=False)
        st.silent = False
        st.last_seen = now
        st.evidence = s.keep(st.evidence, ev)
        s.arm(self, key, was)

    def on_rewind(self, s: EngineState, now: float) -> None:
        for _, st in s.states(self.id):
            if st.last_seen is not None and st.last_seen > now:
                st.last_seen = now  # the silence counts from the return

    def key_due(self, st: KeyState) -> float | None:
        return None if st.silent or st.last_seen is None else st.last_seen + self.for_s

    def on_timer(self, s: EngineState, key: str | None, due: float) -> None:
        st = s.state(self.id, key)
        assert st.last_seen is not None  # only a key with a running timer comes due
        st.silent = True
        heard = self._heard(st, s.meta.get(self.id), iso)
        reason = f"no {self.pattern.describe()}{for_key(key)} for {self.for_} ({heard})"
        late = s.clock - due
        if late >= 1:
            reason += f"; noticed {format_duration(late)} late (watchd was not running)"
        window = (st.last_seen, due)
        s.fire(
            self, key, iso(due) or "", reason, evidence=s.shown(st.evidence, self.id, key), window=window, late_s=late
        )

    @staticmethod
    def _heard(st: KeyState, meta: WatchMeta | None, at: Callable[[float], str | None]) -> str:
        if meta is not None and st.last_seen == meta.activated_at and st.evidence == NO_EVIDENCE:
            return "never seen since the watch started"
        return f"last seen {at(st.last_seen or 0.0)}"

    # -- words --

    def status(self, keys: Mapping[str | None, KeyState]) -> str:
        return "silent" if any(st.silent for st in keys.values()) else "ok"

    def explain_state(self, sit: Situation) -> str | None:
        silent = sorted((st.last_seen or 0.0, k) for k, st in sit.keys.items() if st.silent)
        if not silent:
            return None
        since, k = silent[0]
        text = f"silent since {sit.at(since)}{for_key(k)}"
        fire = sit.latest_for(k, Verdict.FIRED, Verdict.WOULD_FIRE)
        if fire is not None:
            if fire.verdict == Verdict.WOULD_FIRE:
                text += f" (would have fired at {sit.at(fire.at)}; shadow mode)"
            else:
                text += f" (fired at {sit.at(fire.at)})"
        if len(silent) > 1:
            text += f"; {len(silent)} keys silent"
        return text

    def explain_pending(self, sit: Situation) -> str | None:
        running = sorted((due, k) for k, st in sit.keys.items() if (due := self.key_due(st)) is not None)
        if not running:
            return None
        due, k = running[0]
        heard = self._heard(sit.keys[k], sit.meta, sit.at)
        unless = f"unless {self.pattern.subject} arrives, {sit.until(due)}"
        return f"waiting: fires at {sit.at(due)}{for_key(k)} {unless} ({heard})"
