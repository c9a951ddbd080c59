"""`kind = "deadline"`: once a window opens — on a schedule (`opens.cron`) or by an event per key
(`opens.subject`) — `expect` must arrive within `within`, or the watch fires for that window."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from watchd.config import DeadlineWatch, Watch
from watchd.cron.schedule import format_duration, next_tick, parse_cron, parse_duration
from watchd.engine import answers
from watchd.engine.base import (
    EVIDENCE_KEEP,
    NO_EVIDENCE,
    CompiledPattern,
    EngineState,
    EventInput,
    Handler,
    KeyState,
    Situation,
    WatchLogic,
    WatchMeta,
    for_key,
)
from watchd.engine.verdict import Verdict
from watchd.model import iso

# A pure clock gap (watchd was down) longer than this many windows is summarised, not walked
# window by window: a year-long gap on a minutely schedule must not take minutes.
MAX_CATCH_UP_WINDOWS = 10_000


class DeadlineLogic(WatchLogic):
    kind = "deadline"

    def __init__(self, watch: DeadlineWatch, version: int, default_zone: str) -> None:
        zone = watch.opens.timezone or default_zone
        super().__init__(watch, version, zone, CompiledPattern.of(watch.expect))
        opens = watch.opens.pattern()
        self.opens = CompiledPattern.of(opens) if opens else None  # opened by an event
        self.opens_cron = parse_cron(watch.opens.cron, zone) if watch.opens.cron else None  # on a schedule
        self.within = watch.within
        self.within_s = parse_duration(watch.within)

    @classmethod
    def of(cls, watch: Watch, version: int, default_zone: str) -> WatchLogic | None:
        return cls(watch, version, default_zone) if isinstance(watch, DeadlineWatch) else None

    def routes(self) -> Sequence[tuple[CompiledPattern, Handler]]:
        routes: list[tuple[CompiledPattern, Handler]] = [(self.pattern, self.on_event)]
        return [*routes, (self.opens, self.on_open)] if self.opens else routes

    def on_load(self, s: EngineState, meta: WatchMeta, now: float) -> None:
        if self.opens_cron is None:
            return
        nxt = next_tick(self.opens_cron, datetime.fromtimestamp(now - 1e-6, UTC))
        if meta.next_open is None or meta.next_open > now:
            meta.next_open = nxt.timestamp() if nxt else None
            s.changed_meta(self.id)

    def on_rewind(self, s: EngineState, now: float) -> None:
        for _, st in s.states(self.id):
            # A window opened on the clock that ran ahead opens now, for as long as it was to last.
            st.windows = tuple((start, end) if start <= now else (now, now + end - start) for start, end in st.windows)
        meta = s.meta.get(self.id)
        if self.opens_cron is not None and meta is not None and meta.next_open is not None and meta.next_open > now:
            nxt = next_tick(self.opens_cron, datetime.fromtimestamp(now - 1e-6, UTC))
            meta.next_open = nxt.timestamp() if nxt else None
            s.changed_meta(self.id)

    # -- windows opening --

    def watch_due(self, meta: WatchMeta) -> float | None:
        return meta.next_open if self.opens_cron is not None else None

    def on_watch_timer(self, s: EngineState) -> None:
        """Open every scheduled window whose start has come; summarise a long downtime gap."""
        assert self.opens_cron is not None  # only a scheduled deadline has a timer of its own
        now, meta = s.clock, s.meta[self.id]
        st = s.state(self.id, None)
        opened: list[float] = []
        start = meta.next_open
        while start is not None and start <= now and len(opened) < MAX_CATCH_UP_WINDOWS:
            opened.append(start)
            nxt = next_tick(self.opens_cron, datetime.fromtimestamp(start, UTC))
            start = nxt.timestamp() if nxt else None
        if start is not None and start <= now:  # still behind after the cap: jump to the present
            nxt = next_tick(self.opens_cron, datetime.fromtimestamp(now - self.within_s, UTC))
            start = nxt.timestamp() if nxt else None
        meta.next_open = start
        s.changed_meta(self.id)
        # Windows that opened and closed entirely while watchd was down: all but the last are
        # recorded, and only the last fires (late), so a restart never sends a burst of stale alerts.
        expired = [o for o in opened if o + self.within_s <= now]
        passed = set(expired[:-1])
        for o in expired[:-1]:
            begin, end = self._local(o, o + self.within_s)
            s.decide(self.id, None, Verdict.MISSED_WHILE_DOWN, f"window {begin}–{end} passed while watchd was down")
        for o in opened:
            if o in passed:
                continue
            st.windows += ((o, o + self.within_s),)
            (end,) = self._local(o + self.within_s)
            s.decide(self.id, None, Verdict.WINDOW_OPENED, f"window opened until {end}")
        s.arm_watch(self)
        s.arm(self, None)
        if expired:
            self.on_timer(s, None, now)

    def on_open(self, s: EngineState, key: str | None, event: EventInput) -> None:
        """The opening event passed `opens`: a window for its key, from now."""
        now = s.clock
        st = s.state(self.id, key)
        st.windows += ((now, now + self.within_s),)
        st.evidence = s.keep(st.evidence, event.event, EVIDENCE_KEEP)
        reason = f"{event.event.subject} opened a window until {iso(now + self.within_s)}"
        s.decide(self.id, key, Verdict.WINDOW_OPENED, reason, event)
        s.arm(self, key)

    # -- windows closing --

    def on_event(self, s: EngineState, key: str | None, event: EventInput) -> None:
        """`expect` arrived: it closes the windows of its key that are open now."""
        known = s.peek(self.id, key)
        if known is not None and known.incident is not None:
            # The expected event came late: the missed deadline's incident is over (no more repeats).
            # Without `repeat` a missed deadline keeps no incident, so its keys do not pile up.
            answers.resolve(s, self, key, f"{event.event.subject} arrived late", event)
            known = s.peek(self.id, key)
        if known is None or not known.windows:
            s.decide(self.id, key, Verdict.MATCHED, "no window open: does not count", event)
            if known is not None and known == KeyState():
                s.drop(self.id, key)  # kept only for the incident that is now over
            return
        now = s.clock
        st = s.state(self.id, key)
        closed = [w for w in st.windows if w[0] <= now <= w[1]]
        st.windows = tuple(w for w in st.windows if w not in closed)
        if closed:
            s.decide(self.id, key, Verdict.WINDOW_CLOSED, f"met in time; closed {len(closed)} window(s)", event)
        else:
            s.decide(self.id, key, Verdict.MATCHED, "no window open: does not count", event)
        if not st.windows and self.opens is not None:
            st.evidence = NO_EVIDENCE
            if closed:
                s.drop(self.id, key)  # an event-opened key lives only while a window is open
        s.arm(self, key)

    def key_due(self, st: KeyState) -> float | None:
        return min(end for _, end in st.windows) if st.windows else None

    def on_timer(self, s: EngineState, key: str | None, due: float) -> None:
        """Fire for every window of this key that ended with no `expect`."""
        now = s.clock
        st = s.state(self.id, key)
        expired = sorted(w for w in st.windows if w[1] <= now)
        st.windows = tuple(w for w in st.windows if w not in expired)
        for start, end in expired:
            late = now - end
            if self.opens_cron is not None:
                begin, finish = self._local(start, end)
                span = f"between {begin} and {finish} {self.zone}"
            else:
                span = f"within {self.within} of {self.opens.subject if self.opens else 'opening'}"
            reason = f"no {self.pattern.describe()}{for_key(key)} {span}"
            if late >= 1:
                reason += f"; noticed {format_duration(late)} late (watchd was not running)"
            logical = f"{iso(start)}/{iso(end)}"
            s.fire(
                self,
                key,
                logical,
                reason,
                evidence=s.shown(st.evidence, self.id, key),
                window=(start, end),
                late_s=late,
            )
        if not st.windows and self.opens is not None:
            s.drop(self.id, key)
        else:
            s.arm(self, key)

    def _local(self, *instants: float) -> list[str]:
        """Instants as wall times in the watch's zone, told apart: to the second when one of them
        is not on a whole minute (a window under a minute would read "06:24 and 06:24"), and with
        the zone's abbreviation inside a fall-back fold, where a wall time happens twice
        ("02:30 CEST and 02:30 CET")."""
        tz = ZoneInfo(self.zone)
        times = [datetime.fromtimestamp(t, tz) for t in instants]
        layout = "%Y-%m-%d %H:%M:%S" if any(dt.second for dt in times) else "%Y-%m-%d %H:%M"
        return [f"{dt:{layout}}" + (f" {dt.tzname()}" if _in_fold(dt) else "") for dt in times]

    # -- words --

    @property
    def waits_for(self) -> str:
        return self.opens.subject if self.opens else self.pattern.subject

    def status(self, keys: Mapping[str | None, KeyState]) -> str:
        return "window_open" if any(st.windows for st in keys.values()) else "ok"

    def explain_pending(self, sit: Situation) -> str | None:
        windows = sorted((end, k) for k, st in sit.keys.items() for _, end in st.windows)
        if not windows:
            return None
        end, k = windows[0]
        more = f" ({len(windows)} windows open)" if len(windows) > 1 else ""
        return f"waiting: deadline {sit.at(end)}{for_key(k)}, {sit.until(end)}{more}"

    def explain_settled(self, sit: Situation) -> str | None:
        opens = self.watch_due(sit.meta) if sit.meta is not None else None
        nxt = f"next window opens {sit.at(opens)}, {sit.until(opens)}" if opens else None
        met = sit.latest(Verdict.WINDOW_CLOSED, Verdict.MATCHED)
        if met is None:
            return f"waiting: {nxt}" if nxt else None
        if met.verdict == Verdict.WINDOW_CLOSED:
            text = f"did not fire: met in time at {sit.at(met.at)}{for_key(met.key)}"
        else:
            text = f"did not fire: no window was open — {self.pattern.subject} at {sit.at(met.at)} did not count"
        return text + (f"; {nxt}" if nxt else "")


def _in_fold(dt: datetime) -> bool:
    """Whether the wall time `dt` shows happens twice (a fall-back hour)."""
    return dt.replace(fold=1 - dt.fold).utcoffset() != dt.utcoffset()
