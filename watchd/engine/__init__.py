"""The pure core: watches × (event | clock tick) → decisions and fires.

No I/O and no clock reads: every input carries its instant (`at`, epoch seconds; for events the
stream's timestamp), so the same inputs always give the same outputs. That one property buys
crash-safe replay, `explain`, backtesting (`watchd test`) and virtual-clock tests.

The engine object owns its state, but that state is plain data (`KeyState`, `WatchMeta`) that the
shell persists after each step from `take_changes()`: it is `step(state, input) -> (state,
outputs)` with the state kept in place so a step costs what the event touches, not a copy.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import msgspec

from watchd import expr
from watchd.config import AbsentWatch, DeadlineWatch, MatchWatch, Pattern, Watch, WatchDef
from watchd.cron.schedule import CronSpec, format_duration, next_tick, parse_cron, parse_duration
from watchd.engine.index import SubjectIndex
from watchd.model import Event, iso, stable_hash

EVIDENCE_KEEP = 5
# A pure clock gap (watchd was down) longer than this many deadline windows is summarised, not
# walked window by window: a year-long gap on a minutely schedule must not take minutes.
MAX_CATCH_UP_WINDOWS = 10_000


# ---- inputs and outputs ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventInput:
    event: Event
    at: float  # when the stream stored it; the engine's clock for this event
    seq: int = 0


@dataclass(frozen=True, slots=True)
class Tick:
    at: float


class Decision(msgspec.Struct, array_like=True):
    """One thing the engine decided, kept for `explain`. `verdict` is a short stable word."""

    at: float
    watch: str
    key: str | None
    verdict: str  # matched | where_false | where_error | key_error | counted | suppressed | fired |
    #               would_fire | window_opened | window_closed | recovered | missed_while_down
    reason: str
    event_id: str | None = None
    seq: int | None = None
    n: int = 1  # how many decisions this row stands for: thinned misses are counted, not stored


class Fire(msgspec.Struct, kw_only=True):
    """A watch fired: one handoff per target follows (unless shadow)."""

    watch: str
    version: int
    kind: str
    key: str | None
    logical: str  # the logical fire instant or triggering event: identity of this fire
    fired_at: float
    reason: str
    targets: list[str]
    window: tuple[float, float] | None = None
    evidence: list[dict[str, Any]] = msgspec.field(default_factory=list)
    late_s: float = 0.0
    trigger: str = "watch"

    def handoff_id(self, target: str) -> str:
        return "h_" + stable_hash(self.watch, self.version, self.key, self.logical, target)


@dataclass
class Outputs:
    decisions: list[Decision] = field(default_factory=list)
    fires: list[Fire] = field(default_factory=list)


# ---- state -----------------------------------------------------------------------------------


class KeyState(msgspec.Struct, omit_defaults=True):
    """Everything the engine remembers for one (watch, key)."""

    hits: list[float] = msgspec.field(default_factory=list)  # match: times inside the count window
    last_fire: float | None = None  # match: for cooldown
    last_seen: float | None = None  # absent
    silent: bool = False  # absent: already fired for the current silence
    windows: list[tuple[float, float]] = msgspec.field(default_factory=list)  # deadline: open windows
    evidence: list[dict[str, Any]] = msgspec.field(default_factory=list)


class WatchMeta(msgspec.Struct, omit_defaults=True):
    activated_at: float
    next_open: float | None = None  # deadline opened by cron: the next window start


def _event_summary(event: Event) -> dict[str, Any]:
    time = event.time.isoformat().replace("+00:00", "Z")
    return {"id": event.id, "subject": event.subject, "time": time, "data": event.data}


# ---- compiled watches ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompiledPattern:
    subject: str
    where: expr.Expr | None
    key: expr.Expr | None

    @property
    def variables(self) -> frozenset[str]:
        found: frozenset[str] = frozenset()
        for e in (self.where, self.key):
            if e is not None:
                found |= e.variables
        return found

    @staticmethod
    def of(p: Pattern) -> CompiledPattern:
        return CompiledPattern(
            p.subject,
            expr.compile_expr(p.where) if p.where else None,
            expr.compile_expr(p.key) if p.key else None,
        )

    def describe(self) -> str:
        return self.subject + (f" with {self.where.source}" if self.where else "")


@dataclass(slots=True)
class CompiledWatch:
    id: str
    version: int
    watch: Watch
    zone: str
    pattern: CompiledPattern  # `on` for match, `expect` otherwise
    opens: CompiledPattern | None = None
    opens_cron: CronSpec | None = None
    for_s: float = 0.0
    within_s: float = 0.0
    window_s: float = 0.0
    cooldown_s: float = 0.0
    count: int = 0

    @property
    def kind(self) -> str:
        return str(self.watch.__struct_config__.tag)

    @property
    def shadow(self) -> bool:
        return self.watch.mode == "shadow"


def compile_watch(w: Watch, version: int, default_zone: str) -> CompiledWatch:
    if isinstance(w, MatchWatch):
        return CompiledWatch(
            w.id,
            version,
            w,
            default_zone,
            CompiledPattern.of(w.on),
            window_s=parse_duration(w.window) if w.window else 0.0,
            cooldown_s=parse_duration(w.cooldown) if w.cooldown else 0.0,
            count=w.count or 0,
        )
    if isinstance(w, AbsentWatch):
        return CompiledWatch(w.id, version, w, default_zone, CompiledPattern.of(w.expect), for_s=parse_duration(w.for_))
    zone = w.opens.timezone or default_zone
    opens_pattern = w.opens.pattern()
    return CompiledWatch(
        w.id,
        version,
        w,
        zone,
        CompiledPattern.of(w.expect),
        opens=CompiledPattern.of(opens_pattern) if opens_pattern else None,
        opens_cron=parse_cron(w.opens.cron, zone) if w.opens.cron else None,
        within_s=parse_duration(w.within),
    )


# ---- the engine ------------------------------------------------------------------------------

ROLE_MAIN = 0
ROLE_OPENS = 1


class Engine:
    def __init__(self, default_zone: str = "UTC") -> None:
        self.default_zone = default_zone
        self.watches: dict[str, CompiledWatch] = {}
        self.index: SubjectIndex[tuple[CompiledWatch, int]] = SubjectIndex()
        self.keys: dict[str, dict[str | None, KeyState]] = {}
        self.meta: dict[str, WatchMeta] = {}
        self.clock = 0.0
        self._timers: list[tuple[float, str, str | None]] = []  # (due, watch, key); stale entries skipped
        self._dirty: set[tuple[str, str | None]] = set()
        self._dirty_meta: set[str] = set()
        self._deleted_watches: set[str] = set()
        self._variables: dict[str, frozenset[str]] = {}
        self._summary: dict[str, Any] | None = None

    # -- definitions and restored state --

    def restore(self, keys: dict[str, dict[str | None, KeyState]], meta: dict[str, WatchMeta], clock: float) -> None:
        """Adopt persisted state (before `load`): the shell read it from SQLite at start."""
        self.keys, self.meta, self.clock = keys, meta, clock

    def load(self, defs: list[tuple[WatchDef, int]], now: float) -> None:
        """Install (new) definitions with their versions, keeping the state of watches that remain."""
        now = max(now, self.clock)
        new: dict[str, CompiledWatch] = {}
        for d, version in defs:
            cw = compile_watch(d.watch, version, self.default_zone)
            old = self.watches.get(cw.id)
            if old is not None and old.kind != cw.kind:
                self._forget(cw.id)
            new[cw.id] = cw
        for gone in set(self.keys) | set(self.meta):
            if gone not in new:
                self._forget(gone)
        self.watches = new
        self.index = SubjectIndex()
        self._variables = {}
        for cw in new.values():
            if not cw.watch.enabled:
                continue
            self.index.add(cw.pattern.subject, (cw, ROLE_MAIN))
            if cw.opens is not None:
                self.index.add(cw.opens.subject, (cw, ROLE_OPENS))
            meta = self.meta.get(cw.id)
            if meta is None:
                meta = self.meta[cw.id] = WatchMeta(activated_at=now)
                self._dirty_meta.add(cw.id)
            if cw.opens_cron is not None:
                nxt = next_tick(cw.opens_cron, datetime.fromtimestamp(now - 1e-6, ZoneInfo("UTC")))
                if meta.next_open is None or meta.next_open > now:
                    meta.next_open = nxt.timestamp() if nxt else None
                    self._dirty_meta.add(cw.id)
            if isinstance(cw.watch, AbsentWatch):
                keyed = self.keys.setdefault(cw.id, {})
                wanted = cw.watch.keys if cw.pattern.key else [None]
                for k in wanted:
                    if k not in keyed:
                        keyed[k] = KeyState(last_seen=meta.activated_at)
                        self._dirty.add((cw.id, k))
        self._rebuild_timers()

    def _forget(self, watch_id: str) -> None:
        self.keys.pop(watch_id, None)
        self.meta.pop(watch_id, None)
        self._deleted_watches.add(watch_id)

    def _rebuild_timers(self) -> None:
        self._timers = []
        for wid, keyed in self.keys.items():
            for k in keyed:
                self._arm(wid, k)
        for wid, meta in self.meta.items():
            if meta.next_open is not None and wid in self.watches:
                self._timers.append((meta.next_open, wid, "\0open"))
        heapq.heapify(self._timers)

    def _due(self, cw: CompiledWatch, st: KeyState) -> float | None:
        if isinstance(cw.watch, AbsentWatch):
            return None if st.silent or st.last_seen is None else st.last_seen + cw.for_s
        if isinstance(cw.watch, DeadlineWatch) and st.windows:
            return min(end for _, end in st.windows)
        return None

    def _arm(self, wid: str, key: str | None) -> None:
        cw = self.watches.get(wid)
        st = self.keys.get(wid, {}).get(key)
        if cw is None or st is None or not cw.watch.enabled:
            return
        due = self._due(cw, st)
        if due is not None:
            heapq.heappush(self._timers, (due, wid, key))

    def next_due(self) -> float | None:
        """The earliest timer: the shell sleeps until then (nothing polls)."""
        while self._timers:
            due, wid, key = self._timers[0]
            if self._timer_live(due, wid, key):
                return due
            heapq.heappop(self._timers)
        return None

    def watch_next_due(self, wid: str) -> float | None:
        """When this watch next needs the clock: a silence, a window's end, or a scheduled opening."""
        cw = self.watches.get(wid)
        if cw is None or not cw.watch.enabled:
            return None
        dues = [d for st in self.keys.get(wid, {}).values() if (d := self._due(cw, st)) is not None]
        meta = self.meta.get(wid)
        if meta is not None and meta.next_open is not None:
            dues.append(meta.next_open)
        return min(dues, default=None)

    def _timer_live(self, due: float, wid: str, key: str | None) -> bool:
        cw = self.watches.get(wid)
        if cw is None or not cw.watch.enabled:
            return False
        if key == "\0open":
            meta = self.meta.get(wid)
            return meta is not None and meta.next_open == due
        st = self.keys.get(wid, {}).get(key)
        return st is not None and self._due(cw, st) == due

    def take_changes(
        self,
    ) -> tuple[list[tuple[str, str | None, KeyState | None]], list[tuple[str, WatchMeta]], set[str]]:
        """What changed since the last call, for the shell to persist in the same transaction."""
        rows = [(w, k, self.keys.get(w, {}).get(k)) for w, k in self._dirty]
        metas = [(w, self.meta[w]) for w in self._dirty_meta if w in self.meta]
        deleted = self._deleted_watches
        self._dirty, self._dirty_meta, self._deleted_watches = set(), set(), set()
        return rows, metas, deleted

    # -- stepping --

    def step(self, inp: EventInput | Tick) -> Outputs:
        out = Outputs()
        now = max(inp.at, self.clock)
        self._advance(now, out)
        self.clock = now
        if isinstance(inp, EventInput):
            self._on_event(inp, now, out)
        return out

    def _advance(self, now: float, out: Outputs) -> None:
        """Fire every timer due at or before `now`, in time order."""
        while True:
            due = self.next_due()
            if due is None or due > now:
                return
            _, wid, key = heapq.heappop(self._timers)
            cw = self.watches[wid]
            if key == "\0open":
                self._open_scheduled(cw, now, out)
            elif isinstance(cw.watch, AbsentWatch):
                self._absent_due(cw, key, due, now, out)
            else:
                self._deadline_due(cw, key, now, out)

    def _on_event(self, inp: EventInput, now: float, out: Outputs) -> None:
        event = inp.event
        candidates = self.index.candidates(event.subject)
        if not candidates:
            return
        ctx = None
        self._summary = None
        for cw, role in candidates:
            pattern = cw.opens if role == ROLE_OPENS else cw.pattern
            assert pattern is not None
            if pattern.where is not None or pattern.key is not None:
                if ctx is None:
                    ctx = expr.event_context(event, self._variables_for(event.subject, candidates))
                if pattern.where is not None:
                    ok, why = expr.test_where(pattern.where, ctx)
                    if not ok:
                        verdict = "where_error" if why else "where_false"
                        reason = why or f"where false: {pattern.where.source}"
                        out.decisions.append(Decision(now, cw.id, None, verdict, reason, event.id, inp.seq))
                        continue
            key: str | None = None
            if pattern.key is not None:
                key, why = expr.key_of(pattern.key, ctx)
                if key is None:
                    out.decisions.append(Decision(now, cw.id, None, "key_error", why or "", event.id, inp.seq))
                    continue
            if role == ROLE_OPENS:
                self._open_by_event(cw, key, inp, now, out)
            elif isinstance(cw.watch, MatchWatch):
                self._match(cw, key, inp, now, out)
            elif isinstance(cw.watch, AbsentWatch):
                self._absent_seen(cw, key, inp, now, out)
            else:
                self._deadline_expect(cw, key, inp, now, out)

    def _variables_for(self, subject: str, candidates: list[tuple[CompiledWatch, int]]) -> frozenset[str]:
        found = self._variables.get(subject)
        if found is None:
            found = frozenset().union(
                *(
                    (cw.opens if r == ROLE_OPENS else cw.pattern).variables  # type: ignore[union-attr]
                    for cw, r in candidates
                )
            )
            self._variables[subject] = found
        return found

    def _evidence(self, event: Event) -> dict[str, Any]:
        """The event as evidence, built once per event however many watches keep it."""
        if self._summary is None:
            self._summary = _event_summary(event)
        return self._summary

    def _state(self, cw: CompiledWatch, key: str | None) -> KeyState:
        keyed = self.keys.setdefault(cw.id, {})
        st = keyed.get(key)
        if st is None:
            st = keyed[key] = KeyState()
        self._dirty.add((cw.id, key))
        return st

    def _fire(
        self,
        cw: CompiledWatch,
        key: str | None,
        logical: str,
        now: float,
        reason: str,
        out: Outputs,
        *,
        evidence: list[dict[str, Any]],
        window: tuple[float, float] | None = None,
        late_s: float = 0.0,
        seq: int | None = None,
        event_id: str | None = None,
    ) -> None:
        if cw.shadow:
            out.decisions.append(Decision(now, cw.id, key, "would_fire", reason, event_id, seq))
            return
        out.decisions.append(Decision(now, cw.id, key, "fired", reason, event_id, seq))
        out.fires.append(
            Fire(
                watch=cw.id,
                version=cw.version,
                kind=cw.kind,
                key=key,
                logical=logical,
                fired_at=now,
                reason=reason,
                targets=list(cw.watch.then),
                window=window,
                evidence=evidence,
                late_s=late_s,
            )
        )

    # -- match --

    def _match(self, cw: CompiledWatch, key: str | None, inp: EventInput, now: float, out: Outputs) -> None:
        ev = inp.event
        if not cw.count and not cw.cooldown_s:  # stateless: the common case stays cheap
            reason = f"{ev.subject} matched" + (f" where {cw.pattern.where.source}" if cw.pattern.where else "")
            self._fire(cw, key, ev.id, now, reason, out, evidence=[self._evidence(ev)], seq=inp.seq, event_id=ev.id)
            return
        st = self._state(cw, key)
        if cw.count:
            st.hits = [t for t in st.hits if t > now - cw.window_s]
            st.hits.append(now)
            st.evidence = [*st.evidence[-(EVIDENCE_KEEP - 1) :], self._evidence(ev)]
            window = cw.watch.window if isinstance(cw.watch, MatchWatch) else ""
            if len(st.hits) < cw.count:
                reason = f"{len(st.hits)} of {cw.count} in {window}"
                out.decisions.append(Decision(now, cw.id, key, "counted", reason, ev.id, inp.seq))
                return
            reason = f"{len(st.hits)} × {cw.pattern.describe()} within {window}"
            evidence = st.evidence
            st.hits, st.evidence = [], []
        else:
            reason = f"{ev.subject} matched" + (f" where {cw.pattern.where.source}" if cw.pattern.where else "")
            evidence = [self._evidence(ev)]
        if cw.cooldown_s and st.last_fire is not None and now < st.last_fire + cw.cooldown_s:
            until = iso(st.last_fire + cw.cooldown_s)
            out.decisions.append(Decision(now, cw.id, key, "suppressed", f"cooldown until {until}", ev.id, inp.seq))
            return
        if not cw.shadow:
            st.last_fire = now
        self._fire(cw, key, ev.id, now, reason, out, evidence=evidence, seq=inp.seq, event_id=ev.id)

    # -- absent --

    def _absent_seen(self, cw: CompiledWatch, key: str | None, inp: EventInput, now: float, out: Outputs) -> None:
        st = self._state(cw, key)
        ev = inp.event
        out.decisions.append(Decision(now, cw.id, key, "matched", "seen: timer re-armed", ev.id, inp.seq))
        assert isinstance(cw.watch, AbsentWatch)
        if st.silent and cw.watch.recover and st.last_seen is not None:
            silence = format_duration(now - st.last_seen)
            reason = f"{cw.pattern.subject}{_for_key(key)} resumed after {silence} of silence"
            out.decisions.append(Decision(now, cw.id, key, "recovered", reason, ev.id, inp.seq))
            self._fire(
                cw,
                key,
                "recover:" + ev.id,
                now,
                reason,
                out,
                evidence=[self._evidence(ev)],
                seq=inp.seq,
                event_id=ev.id,
            )
        st.silent = False
        st.last_seen = now
        st.evidence = [self._evidence(ev)]
        self._arm(cw.id, key)

    def _absent_due(self, cw: CompiledWatch, key: str | None, due: float, now: float, out: Outputs) -> None:
        st = self._state(cw, key)
        assert st.last_seen is not None
        st.silent = True
        meta = self.meta.get(cw.id)
        heard = (
            "never seen since the watch started"
            if (meta is not None and st.last_seen == meta.activated_at and not st.evidence)
            else f"last seen {iso(st.last_seen)}"
        )
        assert isinstance(cw.watch, AbsentWatch)
        reason = f"no {cw.pattern.describe()}{_for_key(key)} for {cw.watch.for_} ({heard})"
        late = now - due
        if late >= 1:
            reason += f"; noticed {format_duration(late)} late (watchd was not running)"
        self._fire(
            cw,
            key,
            iso(due) or "",
            now,
            reason,
            out,
            evidence=list(st.evidence),
            window=(st.last_seen, due),
            late_s=late,
        )

    # -- deadline --

    def _open_scheduled(self, cw: CompiledWatch, now: float, out: Outputs) -> None:
        """Open every scheduled window whose start has come; summarise a long downtime gap."""
        meta = self.meta[cw.id]
        assert cw.opens_cron is not None
        st = self._state(cw, None)
        utc = ZoneInfo("UTC")
        opened: list[float] = []
        start = meta.next_open
        while start is not None and start <= now and len(opened) < MAX_CATCH_UP_WINDOWS:
            opened.append(start)
            nxt = next_tick(cw.opens_cron, datetime.fromtimestamp(start, utc))
            start = nxt.timestamp() if nxt else None
        if start is not None and start <= now:  # still behind after the cap: jump to the present
            nxt = next_tick(cw.opens_cron, datetime.fromtimestamp(now - cw.within_s, utc))
            start = nxt.timestamp() if nxt else None
        meta.next_open = start
        self._dirty_meta.add(cw.id)
        # Windows that opened and closed entirely while watchd was down: all but the last are
        # recorded, and only the last fires (late), so a restart never sends a burst of stale alerts.
        expired = [s for s in opened if s + cw.within_s <= now]
        for s in expired[:-1]:
            reason = f"window {self._local(s, cw)}–{self._local(s + cw.within_s, cw)} passed while watchd was down"
            out.decisions.append(Decision(now, cw.id, None, "missed_while_down", reason))
        for s in opened:
            if s in expired[:-1]:
                continue
            st.windows.append((s, s + cw.within_s))
            reason = f"window opened until {self._local(s + cw.within_s, cw)}"
            out.decisions.append(Decision(now, cw.id, None, "window_opened", reason))
        if start is not None:
            heapq.heappush(self._timers, (start, cw.id, "\0open"))
        self._arm(cw.id, None)
        if expired:
            self._deadline_due(cw, None, now, out)

    def _open_by_event(self, cw: CompiledWatch, key: str | None, inp: EventInput, now: float, out: Outputs) -> None:
        st = self._state(cw, key)
        st.windows.append((now, now + cw.within_s))
        st.evidence = [*st.evidence[-(EVIDENCE_KEEP - 1) :], self._evidence(inp.event)]
        reason = f"{inp.event.subject} opened a window until {iso(now + cw.within_s)}"
        out.decisions.append(Decision(now, cw.id, key, "window_opened", reason, inp.event.id, inp.seq))
        self._arm(cw.id, key)

    def _deadline_expect(self, cw: CompiledWatch, key: str | None, inp: EventInput, now: float, out: Outputs) -> None:
        keyed = self.keys.get(cw.id, {})
        st = keyed.get(key)
        ev = inp.event
        if st is None or not st.windows:
            out.decisions.append(Decision(now, cw.id, key, "matched", "no window open: does not count", ev.id, inp.seq))
            return
        st = self._state(cw, key)
        closed = [w for w in st.windows if w[0] <= now <= w[1]]
        st.windows = [w for w in st.windows if w not in closed]
        verdict = "window_closed" if closed else "matched"
        reason = f"met in time; closed {len(closed)} window(s)" if closed else "no window open: does not count"
        out.decisions.append(Decision(now, cw.id, key, verdict, reason, ev.id, inp.seq))
        if not st.windows and cw.opens is not None:
            st.evidence = []
            if closed:
                del keyed[key]
        self._arm(cw.id, key)

    def _deadline_due(self, cw: CompiledWatch, key: str | None, now: float, out: Outputs) -> None:
        st = self._state(cw, key)
        expired = sorted(w for w in st.windows if w[1] < now or (w[1] == now))
        st.windows = [w for w in st.windows if w not in expired]
        assert isinstance(cw.watch, DeadlineWatch)
        for start, end in expired:
            late = now - end
            if cw.opens_cron is not None:
                span = f"between {self._local(start, cw)} and {self._local(end, cw)} {cw.zone}"
            else:
                span = f"within {cw.watch.within} of {cw.opens.subject if cw.opens else 'opening'}"
            reason = f"no {cw.pattern.describe()}{_for_key(key)} {span}"
            if late >= 1:
                reason += f"; noticed {format_duration(late)} late (watchd was not running)"
            logical = f"{iso(start)}/{iso(end)}"
            self._fire(cw, key, logical, now, reason, out, evidence=list(st.evidence), window=(start, end), late_s=late)
        if not st.windows and cw.opens is not None:
            self.keys.get(cw.id, {}).pop(key, None)
        else:
            self._arm(cw.id, key)

    def _local(self, ts: float, cw: CompiledWatch) -> str:
        dt = datetime.fromtimestamp(ts, ZoneInfo(cw.zone))
        text = dt.strftime("%Y-%m-%d %H:%M")
        # In a fall-back fold the wall time happens twice: name the offset so "02:30 and 02:30" reads
        # as "02:30 CEST and 02:30 CET".
        return f"{text} {dt.tzname()}" if dt.replace(fold=1 - dt.fold).utcoffset() != dt.utcoffset() else text


def _for_key(key: str | None) -> str:
    return "" if key is None else f" for key {key}"
