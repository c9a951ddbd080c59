"""What every watch kind shares: the engine's inputs and outputs, the state it persists, and the
base class of a kind's logic with the few operations a kind may perform on the engine's state.

A kind (`match.py`, `count.py`, `absent.py`, `deadline.py`) is one class, modelled on bytewax's
`StatefulLogic`: it reacts to an event (`on_event`, bytewax's `on_item`) and to its timers
(`on_timer`, `on_notify`), says when it next needs the clock (`key_due`), and owns the words
`explain` uses for it. Its per-key state is a plain `KeyState` the shell persists after each step
(bytewax's `snapshot`), so a kind keeps nothing between steps but its compiled definition.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import msgspec

from watchd import expr
from watchd.config import Pattern, Watch
from watchd.cron.schedule import parse_duration
from watchd.engine.timers import Timers
from watchd.engine.verdict import Verdict
from watchd.model import Event, stable_hash

_FIRED, _WOULD_FIRE = Verdict.FIRED, Verdict.WOULD_FIRE  # bound once: see verdict.py
WHERE_FALSE = "where false: "  # how a false `where` is worded: the reason starts so, then the source
EVIDENCE_KEEP = 5  # events kept as evidence for a fire that several events lead to
WATCH_TIMER = "\0watch"  # the timer key of a watch's own timer (a scheduled opening), beside its keys' ones


# ---- inputs and outputs ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventInput:
    event: Event
    at: float  # when the stream stored it; the engine's clock for this event
    seq: int = 0


@dataclass(frozen=True, slots=True)
class Tick:
    at: float


class Decision(msgspec.Struct, array_like=True, gc=False):
    """One thing the engine decided, kept for `explain`. Untracked by the cyclic collector
    (`gc=False`): it holds only strings and numbers, so it cannot be part of a cycle, and ten of
    them a busy event would otherwise bring the collector round sooner."""

    at: float
    watch: str
    key: str | None
    verdict: Verdict
    reason: str
    event_id: str | None = None
    seq: int | None = None
    n: int = 1  # how many decisions this row stands for: thinned misses are counted, not stored


class Fire(msgspec.Struct, gc=False):
    """A watch fired: one handoff per target follows (unless shadow). Built with keywords, but
    the engine's own `fire` passes them in order: ~2.75 fires per event in a busy deployment.
    Untracked by the cyclic collector, as `Decision`: nothing it holds (targets, the events'
    summaries) refers back to it."""

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


@dataclass(slots=True)
class Outputs:
    decisions: list[Decision] = field(default_factory=list)
    fires: list[Fire] = field(default_factory=list)
    # Each `failed` decision with the exception behind it: the shell logs the traceback.
    errors: list[tuple[Decision, Exception]] = field(default_factory=list)


FAILED_REASON_CHARS = 500  # an exception's words kept in a `failed` decision


def failed_reason(exc: Exception) -> str:
    return f"processing failed: {type(exc).__name__}: {exc}"[:FAILED_REASON_CHARS]


def failure(at: float, watch: str, key: str | None, exc: Exception, event: EventInput | None = None) -> Decision:
    """The `failed` decision for an input whose handling raised `exc` (for `watch`, or "" when
    no one watch is to blame)."""
    reason = failed_reason(exc)
    if event is None:
        return Decision(at, watch, key, Verdict.FAILED, reason)
    return Decision(at, watch, key, Verdict.FAILED, reason, event.event.id, event.seq)


# ---- persisted state -------------------------------------------------------------------------


# A key's kept evidence: each event's JSON as it was encoded once for all the keys keeping it,
# oldest first. Stored as the JSON array of them, the shape stored before (old state loads as is).
Kept = tuple[msgspec.Raw, ...]
NO_EVIDENCE: Kept = ()  # a key's kept evidence when it keeps none (shared, and omitted when stored)
# A key's evidence left in the state database when the state was read (`load_engine_state`'s
# `lazy_evidence`): an absent key reads it only when it fires, so 100,000 waiting keys hold none of
# it in memory. Told by identity; read through `EngineState.stored_evidence`, and kept as it is
# stored when the key's row is written again (`commit_step`). Never stored itself.
STORED: Kept = (msgspec.Raw(b"null"),)
EvidenceLoader = Callable[[str, "str | None"], Kept]


class KeyState(msgspec.Struct, omit_defaults=True, gc=False):
    """Everything the engine remembers for one (watch, key). Each kind uses its own fields; the
    shape is what the state database holds, so it stays one struct.

    A daemon may hold one per key for 100,000 keys, so it is kept small: the sequences are tuples
    (an empty one is shared, where each empty list was an object of its own), the evidence is one
    JSON array, and the cyclic collector does not track it (`gc=False`: nothing it holds refers
    back to it, so it cannot be part of a cycle)."""

    hits: tuple[float, ...] = ()  # count: times inside the window
    last_fire: float | None = None  # match, count: for cooldown
    last_seen: float | None = None  # absent
    silent: bool = False  # absent: already fired for the current silence
    windows: tuple[tuple[float, float], ...] = ()  # deadline: open windows
    # The events a fire of this key will show, each as its JSON (`EngineState.keep`): many keys
    # hold one event each and wait, and the JSON is a fraction of the dicts it decodes to; a
    # counted event is appended without decoding the others. Decoded only when it is shown
    # (`EngineState.shown`).
    evidence: Kept = NO_EVIDENCE
    # The open incident (answers.py): the fire that opened it, until it is acked or over.
    incident: str | None = None  # the opening fire's logical instant: the incident's identity
    incident_at: float | None = None
    incident_reason: str = ""
    incident_evidence: tuple[dict[str, Any], ...] = ()
    repeats: int = 0  # repeats handed off so far
    next_repeat: float | None = None  # when `repeat` hands it off again
    held: bool = False  # a snooze held back a fire or repeat of it: judged again when the snooze ends


class Hold(msgspec.Struct, omit_defaults=True):
    """A snooze or mute someone set on a watch (one key, or every key when `key` is None)."""

    action: str  # "snooze" | "mute"
    until: float
    by: str  # who: "telegram:42", "slack:U1", "cli:alice"
    at: float
    key: str | None = None  # None: every key of the watch


class WatchMeta(msgspec.Struct, omit_defaults=True):
    activated_at: float
    next_open: float | None = None  # deadline opened by cron: the next window start
    holds: list[Hold] = msgspec.field(default_factory=list)  # snoozes and mutes, until they end


_shown = msgspec.json.Decoder(dict[str, Any])
_shown_all = msgspec.json.Decoder(list[dict[str, Any]])


def event_summary(event: Event) -> dict[str, Any]:
    time = event.time.isoformat().replace("+00:00", "Z")
    return {"id": event.id, "subject": event.subject, "time": time, "data": event.data}


def for_key(key: str | None) -> str:
    return "" if key is None else f" for key {key}"


# ---- compiled patterns -----------------------------------------------------------------------


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


# ---- what explain hands a kind ---------------------------------------------------------------


@dataclass(frozen=True)
class Situation:
    """One watch as `explain` sees it, for the kind to put in its own words: the decisions in
    range (narrowed to `--key`), oldest first; the state now; and how to say an instant."""

    rows: Sequence[Decision]
    keys: Mapping[str | None, KeyState]  # narrowed to `key` when given
    meta: WatchMeta | None
    key: str | None
    now: float
    at: Callable[[float], str]  # an instant in the watch's zone (and UTC)
    until: Callable[[float], str]  # "in 1h12m", or "overdue by …"

    def latest(self, *verdicts: Verdict) -> Decision | None:
        """The newest row with one of `verdicts`."""
        return next((d for d in reversed(self.rows) if d.verdict in verdicts), None)

    def latest_for(self, key: str | None, *verdicts: Verdict) -> Decision | None:
        """The newest row of that key with one of `verdicts`."""
        return next((d for d in reversed(self.rows) if d.verdict in verdicts and d.key == key), None)


# ---- a kind's logic --------------------------------------------------------------------------

Handler = Callable[["EngineState", "str | None", EventInput], None]


class WatchLogic(ABC):
    """One watch definition, compiled, with its kind's behaviour. Subclasses set `kind`, compile
    the definitions they take (`of`) and override what their kind does."""

    kind: ClassVar[str]  # the definition's `kind` (a count is a `match` with `count` and `window`)
    # Its keys' evidence is read only when they fire, so once written it may be left in the state
    # database (`EngineState.written`): an absent key's, which waits, most often for ever.
    evidence_read_on_fire: ClassVar[bool] = False
    resolves: ClassVar[bool] = False  # its incidents end by themselves, seen in state it keeps anyway

    def __init__(self, watch: Watch, version: int, zone: str, pattern: CompiledPattern) -> None:
        self.id = watch.id
        self.version = version
        self.watch = watch
        self.zone = zone  # the zone its times are told in
        self.pattern = pattern  # `on` for a match, `expect` otherwise
        self.shadow = watch.mode == "shadow"
        self.repeat_s = parse_duration(watch.repeat) if watch.repeat else 0.0
        # Whether a fire opens an incident kept in the key's state: needed to repeat it, or to judge
        # it again when a snooze ends. An absent watch keeps its keys anyway, so it always does;
        # the others only with `repeat` (or while a snooze holds one), so a match stays stateless
        # and a missed deadline's key is still forgotten.
        self.tracks_incidents = bool(self.repeat_s) or self.resolves

    @classmethod
    @abstractmethod
    def of(cls, watch: Watch, version: int, default_zone: str) -> WatchLogic | None:
        """The definition compiled, when it is of this kind."""

    # -- the engine's side --

    def routes(self) -> Sequence[tuple[CompiledPattern, Handler]]:
        """The patterns the watch listens to, each with what handles an event that passes it."""
        return [(self.pattern, self.on_event)]

    @abstractmethod
    def on_event(self, s: EngineState, key: str | None, event: EventInput) -> None:
        """An event passed the main pattern (its `where`, and its `key` evaluated)."""

    def on_load(self, s: EngineState, meta: WatchMeta, now: float) -> None:
        """The definition was (re)installed at `now`: set up what must exist before any event."""
        return None  # most kinds have nothing to do here

    def on_timer(self, s: EngineState, key: str | None, due: float) -> None:
        """A key's timer (`key_due`) came due; `s.clock` is now, `due` may be earlier (downtime)."""
        return None  # most kinds have nothing to do here

    def on_watch_timer(self, s: EngineState) -> None:
        """The watch's own timer (`watch_due`) came due."""
        return None  # most kinds have nothing to do here

    def on_rewind(self, s: EngineState, now: float) -> None:
        """The clock was set back to `now`: bring the instants this watch's state holds past `now`
        back to it (they were taken on a clock that ran ahead). What fired stays fired."""
        return None  # a kind without state has nothing to bring back

    def key_due(self, st: KeyState) -> float | None:
        """When this key next needs the clock, if it does."""
        return None

    def watch_due(self, meta: WatchMeta) -> float | None:
        """When the watch itself next needs the clock, apart from its keys (a scheduled opening)."""
        return None

    def timer_due(self, st: KeyState) -> float | None:
        """When this key next needs the clock: its kind's timer, or its incident's next repeat."""
        due = self.key_due(st)
        if st.next_repeat is None:
            return due
        return st.next_repeat if due is None else min(due, st.next_repeat)

    def watch_timer_due(self, meta: WatchMeta) -> float | None:
        """When the watch itself next needs the clock: its kind's timer, or the end of a hold."""
        due = self.watch_due(meta)
        if not meta.holds:
            return due
        ends = min(h.until for h in meta.holds)
        return ends if due is None else min(due, ends)

    def next_due(
        self, keys: Mapping[str | None, KeyState], meta: WatchMeta | None, key: str | None = None
    ) -> float | None:
        """The earliest instant the watch (or one key of it) needs the clock."""
        if not self.watch.enabled:
            return None
        dues = [d for k, st in keys.items() if (key is None or k == key) and (d := self.timer_due(st)) is not None]
        if key is None and meta is not None and (d := self.watch_timer_due(meta)) is not None:
            dues.append(d)
        return min(dues, default=None)

    # -- the words `status` and `explain` use for it --

    def status(self, keys: Mapping[str | None, KeyState]) -> str:
        """One word for `watchd status`."""
        return "ok"

    @property
    def waits_for(self) -> str:
        """The subject that has to arrive for anything to happen."""
        return self.pattern.subject

    def miss_subject(self, reason: str) -> str:
        """The subject of the pattern a `where false` reason is about (a deadline has two)."""
        about = [p for p, _ in self.routes() if p.where and reason.startswith(WHERE_FALSE + p.where.source)]
        return (
            max(about, key=lambda p: len(p.where.source if p.where else "")).subject if about else self.pattern.subject
        )

    def explain_state(self, sit: Situation) -> str | None:
        """A verdict the state now gives, outranking the latest fire (an absent watch's silence)."""
        return None

    def explain_pending(self, sit: Situation) -> str | None:
        """What the watch is waiting for, when nothing decisive happened (a window, a timer, a count)."""
        return None

    def explain_settled(self, sit: Situation) -> str | None:
        """What its last non-miss decision means, when there were no misses to report."""
        return None


# ---- the engine's state, and what a kind may do with it --------------------------------------


class EngineState:
    """The engine's plain-data state (`keys`, `meta`, `clock`) and timers, with the operations a
    kind performs during a step: read and change a key's state, arm timers, decide, fire.

    `clock` is the instant of the step under way: kinds read the time from it, never from a clock.
    """

    def __init__(self) -> None:
        self.watches: dict[str, WatchLogic] = {}
        self.keys: dict[str, dict[str | None, KeyState]] = {}
        self.meta: dict[str, WatchMeta] = {}
        self.clock = 0.0
        self.out = Outputs()  # the step under way's outputs
        self._timers = Timers(self._due_now)
        self._dirty: set[tuple[str, str | None]] = set()
        self._dirty_meta: set[str] = set()
        self._summary: dict[str, Any] | None = None
        self._summary_json: msgspec.Raw | None = None  # the event as evidence, JSON
        self._kept_one: Kept = NO_EVIDENCE  # the same as a key's evidence: it alone
        # Reads a key's evidence the state database holds (`STORED`): set by the shell that read
        # the state lazily; None where the state is all in memory.
        self.stored_evidence: EvidenceLoader | None = None

    # -- state --

    def state(self, wid: str, key: str | None) -> KeyState:
        """A key's state for changing it (created when new): it is persisted with the step."""
        keyed = self.keys.get(wid)
        if keyed is None:  # not `setdefault(wid, {})`: that makes a dict on every call
            keyed = self.keys[wid] = {}
        st = keyed.get(key)
        if st is None:
            st = keyed[key] = KeyState()
        self._dirty.add((wid, key))
        return st

    def states(self, wid: str) -> list[tuple[str | None, KeyState]]:
        """Every key's state of a watch, for changing them all (each is persisted with the step)."""
        keyed = self.keys.get(wid, {})
        self._dirty.update((wid, k) for k in keyed)
        return list(keyed.items())

    def peek(self, wid: str, key: str | None) -> KeyState | None:
        """A key's state for reading only."""
        return self.keys.get(wid, {}).get(key)

    def drop(self, wid: str, key: str | None) -> None:
        """Forget a key (its row is deleted with the step), unless an incident of it is still open:
        then only its kind's fields go, so the incident can repeat, be acked or be judged again."""
        st = self.keys.get(wid, {}).get(key)
        if st is not None and st.incident is not None:
            self.keys[wid][key] = KeyState(
                incident=st.incident,
                incident_at=st.incident_at,
                incident_reason=st.incident_reason,
                incident_evidence=st.incident_evidence,
                repeats=st.repeats,
                next_repeat=st.next_repeat,
                held=st.held,
            )
        else:
            self.keys.get(wid, {}).pop(key, None)
        self._dirty.add((wid, key))

    def written(self, rows: Sequence[tuple[str, str | None, KeyState | None]]) -> None:
        """These rows of `take_changes` are committed to the state database: the evidence of keys
        that read it only when they fire is left there (`STORED`), where `stored_evidence` reads
        it, so a waiting key holds none of it in memory. Only a state still the one written."""
        if self.stored_evidence is None:
            return
        watches, keys = self.watches, self.keys  # each row of a batch passes here: kept lean
        for wid, key, st in rows:
            if st is None or st.evidence is STORED or not st.evidence:
                continue
            logic = watches.get(wid)
            if logic is None or not logic.evidence_read_on_fire:
                continue
            keyed = keys.get(wid)
            if keyed is not None and keyed.get(key) is st:
                st.evidence = STORED

    def changed_meta(self, wid: str) -> None:
        self._dirty_meta.add(wid)

    def evidence(self, event: Event) -> dict[str, Any]:
        """The event as evidence, built once per event however many watches keep it."""
        if self._summary is None:
            self._summary = event_summary(event)
        return self._summary

    def keep(self, kept: Kept, event: Event, most: int = 1) -> Kept:
        """A key's kept evidence with `event` added, the newest `most` kept. The event's JSON is
        encoded once per event, shared by every key that keeps it; the others are not decoded."""
        if self._summary_json is None:
            self._summary_json = msgspec.Raw(msgspec.json.encode(self.evidence(event)))
            self._kept_one = (self._summary_json,)
        if most <= 1 or not kept:
            return self._kept_one
        if len(kept) < most:
            return (*kept, self._summary_json)
        return (*kept[len(kept) - most + 1 :], self._summary_json)

    def shown(self, kept: Kept, wid: str, key: str | None) -> list[dict[str, Any]]:
        """A key's kept evidence as a fire carries it (read from the state database when left there)."""
        if kept is STORED:
            if self.stored_evidence is None:
                raise RuntimeError(f"the evidence of {wid}{for_key(key)} was left in a state database not given")
            kept = self.stored_evidence(wid, key)
        if len(kept) == 1:
            return [_shown.decode(kept[0])]
        return _shown_all.decode(b"[" + b",".join(kept) + b"]")  # one decode, not one per event

    # -- timers --

    def _due_now(self, wid: str, key: str | None) -> float | None:
        """When a key (or, for `WATCH_TIMER`, the watch itself) needs the clock now: what tells a
        live timer entry from a stale one."""
        logic = self.watches.get(wid)
        if logic is None or not logic.watch.enabled:
            return None
        if key == WATCH_TIMER:
            meta = self.meta.get(wid)
            return None if meta is None else logic.watch_timer_due(meta)
        st = self.peek(wid, key)
        return None if st is None else logic.timer_due(st)

    def arm(self, logic: WatchLogic, key: str | None, was: float | None = None) -> None:
        """(Re)arm a key's timer after its state changed; an older entry for it goes stale. `was`:
        the key's due before the change, when the caller knows it. A due that did not move earlier
        than it needs no new entry: the one armed for `was` (or before) is filed again when found."""
        st = self.peek(logic.id, key)
        due = logic.timer_due(st) if st is not None and logic.watch.enabled else None
        if due is not None and (was is None or due < was):
            self._timers.push(due, logic.id, key)

    def arm_watch(self, logic: WatchLogic) -> None:
        meta = self.meta.get(logic.id)
        if meta is not None and logic.watch.enabled and (due := logic.watch_timer_due(meta)) is not None:
            self._timers.push(due, logic.id, WATCH_TIMER)

    # -- holds (snooze, mute) --

    def hold_on(self, wid: str, key: str | None) -> Hold | None:
        """The snooze or mute covering this key now, if any: a mute outranks a snooze."""
        meta = self.meta.get(wid)
        if meta is None or not meta.holds:
            return None
        found: Hold | None = None
        for h in meta.holds:
            if (h.key is None or h.key == key) and h.until > self.clock and (found is None or h.action == "mute"):
                found = h
        return found

    # -- outputs --

    def failed(self, wid: str, key: str | None, exc: Exception, event: EventInput | None = None) -> None:
        """A kind's handling of this input raised: recorded for that watch, and the step goes on."""
        d = failure(self.clock, wid, key, exc, event)
        self.out.decisions.append(d)
        self.out.errors.append((d, exc))

    def decide(self, wid: str, key: str | None, verdict: Verdict, reason: str, event: EventInput | None = None) -> None:
        if event is None:
            self.out.decisions.append(Decision(self.clock, wid, key, verdict, reason))
        else:
            self.out.decisions.append(Decision(self.clock, wid, key, verdict, reason, event.event.id, event.seq))

    def fire(
        self,
        logic: WatchLogic,
        key: str | None,
        logical: str,
        reason: str,
        *,
        evidence: list[dict[str, Any]],
        window: tuple[float, float] | None = None,
        late_s: float = 0.0,
        event: EventInput | None = None,
        opens_incident: bool = True,
    ) -> None:
        """Fire (or, in shadow mode, record that it would have fired). A mute swallows the fire (kept
        as `muted`); a snooze holds it, to be judged again when the snooze ends. `opens_incident`
        is false for a fire that reports an incident's end (an absent watch's recovery)."""
        event_id, seq = (event.event.id, event.seq) if event is not None else (None, None)
        meta = self.meta.get(logic.id)
        hold = self.hold_on(logic.id, key) if meta is not None and meta.holds else None  # most have none
        if hold is not None:
            verdict = Verdict.MUTED if hold.action == "mute" else Verdict.HELD
            said = f"{reason} ({hold_words(hold, logic.zone)})"
            self.out.decisions.append(Decision(self.clock, logic.id, key, verdict, said, event_id, seq))
            if hold.action == "snooze" and opens_incident:
                self.open_incident(logic, key, logical, reason, evidence, held=True)
            return
        verdict = _WOULD_FIRE if logic.shadow else _FIRED
        self.out.decisions.append(Decision(self.clock, logic.id, key, verdict, reason, event_id, seq))
        if opens_incident and logic.tracks_incidents:
            self.open_incident(logic, key, logical, reason, evidence, held=False)
        if logic.shadow:
            return
        # In the order of its fields: watch, version, kind, key, logical, fired_at, reason, targets, ...
        targets, at = list(logic.watch.then), self.clock
        fire = Fire(logic.id, logic.version, logic.kind, key, logical, at, reason, targets, window, evidence, late_s)
        self.out.fires.append(fire)

    def open_incident(
        self,
        logic: WatchLogic,
        key: str | None,
        logical: str,
        reason: str,
        evidence: list[dict[str, Any]],
        *,
        held: bool,
    ) -> None:
        """A fire opens an incident (a newer one replaces the one before): it repeats every
        `repeat` until acked or over; a held one waits for its snooze to end."""
        st = self.state(logic.id, key)
        st.incident, st.incident_at, st.incident_reason = logical, self.clock, reason
        st.incident_evidence = tuple(evidence[-EVIDENCE_KEEP:])
        st.repeats, st.held = 0, held
        st.next_repeat = self.clock + logic.repeat_s if logic.repeat_s and not held else None
        self.arm(logic, key)

    def close_incident(self, st: KeyState) -> None:
        """The incident is acked or over: no more repeats, nothing held for it."""
        st.incident = st.incident_at = st.next_repeat = None
        st.incident_reason, st.incident_evidence, st.repeats, st.held = "", (), 0, False


# ---- words for answers -------------------------------------------------------------------------


def who(by: str) -> str:
    """Who answered, in words: "telegram:42" → "telegram user 42", "cli:alice" → "alice (command line)"."""
    via, _, name = by.partition(":")
    if via in ("telegram", "slack") and name:
        return f"{via} user {name}"
    if via == "cli" and name:
        return f"{name} (command line)"
    if via == "http" and name:
        return f"{name} (HTTP API)"
    if by == "web":  # only the dashboard's own forms answer so: the API prefixes its callers with "http:"
        return "the dashboard"
    return by or "someone"


def local_time(ts: float, zone: str) -> str:
    """An instant as a wall time in the watch's zone, with the zone: "2026-11-22 14:00 Europe/Berlin"."""
    dt = datetime.fromtimestamp(ts, ZoneInfo(zone))
    return f"{dt:%Y-%m-%d %H:%M}" + (f":{dt:%S}" if dt.second else "") + f" {zone}"


def hold_words(hold: Hold, zone: str) -> str:
    """ "muted by telegram user 42 until 2026-11-22 14:00 Europe/Berlin" (and the key it covers)."""
    done = "muted" if hold.action == "mute" else "snoozed"
    scope = "" if hold.key is None else f" for key {hold.key}"
    return f"{done}{scope} by {who(hold.by)} until {local_time(hold.until, zone)}"
