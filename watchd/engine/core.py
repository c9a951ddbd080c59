"""The step function: watches × (event | clock tick) → decisions and fires, with the timers.

No I/O and no clock reads: every input carries its instant (`at`, epoch seconds; for events the
stream's timestamp), so the same inputs always give the same outputs. That one property buys
crash-safe replay, `explain`, backtesting (`watchd test`) and virtual-clock tests.

The engine owns its state, but that state is plain data (`KeyState`, `WatchMeta`) that the shell
persists after each step from `take_changes()`: it is `step(state, input) -> (state, outputs)`
with the state kept in place so a step costs what the event touches, not a copy. What a watch
does with an event or a timer is its kind's (`kinds.py`); here are only what all kinds share:
the subject index, the `where` and `key` of each pattern, and the timer heap.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from watchd import expr
from watchd.celfast import Unsupported
from watchd.config import WatchDef
from watchd.engine import answers
from watchd.engine.answers import ANSWER_SUBJECT
from watchd.engine.base import (
    WATCH_TIMER,
    CompiledPattern,
    Decision,
    EngineState,
    EventInput,
    KeyState,
    Outputs,
    Tick,
    WatchLogic,
    WatchMeta,
)
from watchd.engine.index import SubjectIndex
from watchd.engine.kinds import compile_watch
from watchd.engine.routing import UNSET, Candidate, Plan
from watchd.engine.timers import Timers
from watchd.engine.verdict import Verdict
from watchd.model import Event

_WHERE_FALSE, _WHERE_ERROR, _KEY_ERROR = Verdict.WHERE_FALSE, Verdict.WHERE_ERROR, Verdict.KEY_ERROR  # see verdict.py
PLANS_KEPT = 20_000  # subjects whose plan is kept: subjects repeat (a home server sees a few hundred)


class Engine(EngineState):
    def __init__(self, default_zone: str = "UTC", *, shares: bool = True) -> None:
        """`shares` False judges each candidate watch on its own: no `where` or `key` evaluated
        once for several, no equality index (the same decisions, slower; for tests)."""
        super().__init__()
        self.default_zone = default_zone
        self.shares = shares
        self.index: SubjectIndex[Candidate] = SubjectIndex()
        self._deleted_watches: set[str] = set()
        self._plans: dict[str, Plan] = {}
        self._plans_by_candidates: dict[tuple[int, ...], Plan] = {}
        self._ctx: expr.Activation | None = None  # the event under way's, once needed
        # Whether this engine applies an answer to the watch it names (None: every answer). A shard
        # applies only answers to its own watches, and its watches still hear every answer.
        self.applies_answer: Callable[[str], bool] | None = None

    # -- definitions and restored state --

    def restore(self, keys: dict[str, dict[str | None, KeyState]], meta: dict[str, WatchMeta], clock: float) -> None:
        """Adopt persisted state (before `load`): the shell read it from SQLite at start."""
        self.keys, self.meta, self.clock = keys, meta, clock

    def load(self, defs: list[tuple[WatchDef, int]], now: float) -> None:
        """Install (new) definitions with their versions, keeping the state of watches that remain."""
        now = max(now, self.clock)
        new: dict[str, WatchLogic] = {}
        for d, version in defs:
            logic = compile_watch(d.watch, version, self.default_zone)
            old = self.watches.get(logic.id)
            if old is not None and old.kind != logic.kind:
                self._forget(logic.id)
            new[logic.id] = logic
        for gone in set(self.keys) | set(self.meta):
            if gone not in new:
                self._forget(gone)
        self.watches = new
        self.index = SubjectIndex()
        self._plans, self._plans_by_candidates = {}, {}
        for logic in new.values():
            if not logic.watch.enabled:
                continue
            for pattern, handle in logic.routes():
                self.index.add(pattern.subject, (logic, pattern, handle))
            meta = self.meta.get(logic.id)
            if meta is None:
                meta = self.meta[logic.id] = WatchMeta(activated_at=now)
                self.changed_meta(logic.id)
            logic.on_load(self, meta, now)
        self._rebuild_timers()

    def _forget(self, watch_id: str) -> None:
        self.keys.pop(watch_id, None)
        self.meta.pop(watch_id, None)
        self._deleted_watches.add(watch_id)

    # -- timers --

    def _rebuild_timers(self) -> None:
        """Every timer armed afresh (a restart with 100,000 keys: most are filed by their minute)."""
        self._timers = Timers(self._due_now)
        for wid, keyed in self.keys.items():
            logic = self.watches.get(wid)
            if logic is None or not logic.watch.enabled:
                continue
            due_of = logic.timer_due
            self._timers.push_keys(wid, ((due, k) for k, st in keyed.items() if (due := due_of(st)) is not None))
        for wid in self.meta:
            if (logic := self.watches.get(wid)) is not None:
                self.arm_watch(logic)

    def next_due(self) -> float | None:
        """The earliest timer: the shell sleeps until then (nothing polls)."""
        first = self._timers.first()
        return None if first is None else first[0]

    def timer_entries(self) -> int:
        """Timer entries held, stale ones included (what the timers cost in memory)."""
        return len(self._timers)

    def watch_next_due(self, wid: str, key: str | None = None) -> float | None:
        """When this watch (or one key of it) next needs the clock: a silence, a window's end, or
        a scheduled opening."""
        logic = self.watches.get(wid)
        return None if logic is None else logic.next_due(self.keys.get(wid, {}), self.meta.get(wid), key)

    def take_changes(
        self,
    ) -> tuple[list[tuple[str, str | None, KeyState | None]], list[tuple[str, WatchMeta]], set[str]]:
        """What changed since the last call, for the shell to persist in the same transaction."""
        rows = [(w, k, self.peek(w, k)) for w, k in self._dirty]
        metas = [(w, self.meta[w]) for w in self._dirty_meta if w in self.meta]
        deleted = self._deleted_watches
        self._dirty, self._dirty_meta, self._deleted_watches = set(), set(), set()
        return rows, metas, deleted

    def rewind(self, now: float) -> None:
        """The wall clock was set back to `now`, behind the engine's clock. The instants the state
        holds past `now` were taken on a clock that ran ahead: each kind brings them back to `now`
        (`on_rewind`), and the clock follows, so silences end and windows slide again. What fired
        stays fired: a fire is recorded in the state, not found again by the clock."""
        if now >= self.clock:
            return
        for wid, logic in self.watches.items():
            meta = self.meta.get(wid)
            if meta is not None:
                if meta.activated_at > now:
                    meta.activated_at = now
                for hold in meta.holds:
                    if hold.at > now:  # a snooze or mute set on the clock ahead lasts as long from now
                        hold.until -= hold.at - now
                        hold.at = now
                self.changed_meta(wid)
            for _, st in self.states(wid):
                if st.incident_at is not None and st.incident_at > now:  # so do its repeats
                    if st.next_repeat is not None:
                        st.next_repeat -= st.incident_at - now
                    st.incident_at = now
            logic.on_rewind(self, now)
        self.clock = now
        self._rebuild_timers()

    # -- stepping --

    def step(self, inp: EventInput | Tick) -> Outputs:
        out = self.out = Outputs()
        self.clock = max(inp.at, self.clock)
        self._advance()
        if isinstance(inp, EventInput):
            self._on_event(inp)
        return out

    def _advance(self) -> None:
        """Fire every timer due at or before now, in time order."""
        soonest = self._timers.earliest_possible()
        if soonest is None or soonest > self.clock:
            return  # nothing due, stale entries included: most steps end here, at no cost
        failed: set[tuple[str, str | None]] = set()
        while self._timers.first(until=self.clock) is not None:
            _, wid, key = self._timers.pop()
            if (wid, key) in failed:
                continue  # another entry of a timer that failed in this step
            logic = self.watches[wid]
            try:
                if key == WATCH_TIMER:
                    self._on_watch_timer(logic)
                else:
                    self._on_key_timer(logic, key)
            except Exception as exc:  # confined to this timer, which is not armed again in this step
                failed.add((wid, key))
                self.failed(wid, None if key == WATCH_TIMER else key, exc)

    def _on_watch_timer(self, logic: WatchLogic) -> None:
        """Holds that ran out end first, so a fire of the kind's own timer sees the watch as it is now."""
        meta = self.meta[logic.id]
        if any(h.until <= self.clock for h in meta.holds):
            answers.end_holds(self, logic)
        if (due := logic.watch_due(meta)) is not None and due <= self.clock:
            logic.on_watch_timer(self)
        self.arm_watch(logic)

    def _on_key_timer(self, logic: WatchLogic, key: str | None) -> None:
        """The kind's timer and the incident's repeat, whichever is due first first: a new fire
        replaces the incident a repeat would have been for."""
        st = self.peek(logic.id, key)
        if st is None:
            return
        due = logic.key_due(st)
        if due is not None and due <= self.clock and (st.next_repeat is None or due <= st.next_repeat):
            logic.on_timer(self, key, due)
        st = self.peek(logic.id, key)
        if st is not None and st.next_repeat is not None and st.next_repeat <= self.clock:
            answers.repeat(self, logic, key)
        st = self.peek(logic.id, key)
        if st is not None and (due := logic.key_due(st)) is not None and due <= self.clock:
            logic.on_timer(self, key, due)
        self.arm(logic, key)

    def _on_event(self, inp: EventInput) -> None:
        event = inp.event
        subject = event.subject
        if subject == ANSWER_SUBJECT and (
            self.applies_answer is None or self.applies_answer(str(event.data.get("watch", "")))
        ):
            try:
                answers.on_answer(self, inp)  # and watches may still watch it, like any event
            except Exception as exc:  # confined to this answer, as a kind's failure is to its watch
                self.failed(str(event.data.get("watch", "")), None, exc, inp)
        plan = self._plans.get(subject)
        if plan is None:
            plan = self._plan(subject)
        if not plan.routes:
            return
        self._summary = self._summary_json = None
        self._ctx = None
        # This runs for every candidate of every event: each distinct `where` and `key` of the
        # subject's watches is evaluated once, in its slot, and only a miss needs the words for why.
        held = plan.blank_wheres.copy()
        keys = plan.blank_keys.copy()
        values = plan.values(event.data) if plan.equalities else ()
        decisions = self.out.decisions
        clock, event_id, seq = self.clock, event.id, inp.seq  # no handler moves the clock within a step
        for ruled_out, items, key_slots in plan.stretches(values):
            if ruled_out:  # misses only: the equality index ruled their `where`s out
                try:
                    for k in key_slots:
                        if keys[k] is UNSET:
                            keys[k] = self._key(plan.key_exprs[k], self._activation(event, plan))
                except Exception as exc:  # confined to these watches, as for one judged alone
                    for wid, _, _ in items:
                        self.failed(wid, None, exc, inp)
                    continue
                decisions += [
                    Decision(clock, wid, None if k < 0 else keys[k][0], _WHERE_FALSE, miss, event_id, seq)
                    for wid, k, miss in items
                ]
                continue
            for logic, pattern, handle, w, k, miss in items:
                key: str | None = None
                try:
                    if w >= 0:
                        h = held[w]
                        if h is UNSET:
                            h = held[w] = self._held(pattern, event, plan)
                        if h is not True:
                            # A near miss: it carries its key when the watch has one (and it
                            # evaluates), so `explain --key` shows the misses of that key too.
                            mk = None
                            if k >= 0:
                                found = keys[k]
                                if found is UNSET:
                                    found = keys[k] = self._key(plan.key_exprs[k], self._activation(event, plan))
                                mk = found[0]
                            if h is False:
                                decisions.append(Decision(clock, logic.id, mk, _WHERE_FALSE, miss, event_id, seq))
                            else:  # an error or not a boolean: evaluated again, through `expr`, for its words
                                why = self._where_error(pattern, self._activation(event, plan))
                                decisions.append(Decision(clock, logic.id, mk, _WHERE_ERROR, why, event_id, seq))
                            continue
                    if k >= 0:
                        found = keys[k]
                        if found is UNSET:
                            found = keys[k] = self._key(plan.key_exprs[k], self._activation(event, plan))
                        key = found[0]
                        if key is None:
                            self.decide(logic.id, None, _KEY_ERROR, found[1], inp)
                            continue
                    handle(self, key, inp)
                except Exception as exc:  # confined to this watch and event: the other watches still judge it
                    self.failed(logic.id, key, exc, inp)
                    with contextlib.suppress(Exception):  # what the handler changed before it raised keeps its timer
                        self.arm(logic, key)

    def _activation(self, event: Event, plan: Plan) -> expr.Activation:
        """What expressions over this event read: made once per event, when first needed (a
        compiled `where` reads the event itself), so the binding's context is converted once."""
        if self._ctx is None:
            self._ctx = expr.event_context(event, plan.variables)
        return self._ctx

    def _held(self, pattern: CompiledPattern, event: Event, plan: Plan) -> Any:
        """What a `where` gives for the event: True, False, or something else (an error: None)."""
        where = pattern.where
        assert where is not None
        fast = where.fast
        try:
            if fast is not None:
                return fast(event, None)
            return where.program.execute(self._activation(event, plan).cel())
        except Unsupported:  # a value the compiled form does not model
            return expr.evaluate_cel(where, self._activation(event, plan))[0]
        except Exception:  # CEL's errors, of several types: worded in `_where_error`
            return None

    @staticmethod
    def _key(key_expr: expr.Expr, ctx: expr.Activation) -> tuple[str | None, str]:
        """The key of an event (or None, with the reason of a `key_error`)."""
        key, why = expr.key_of(key_expr, ctx)
        return key, "" if key is not None else f"{why} (in {key_expr.source})"

    @staticmethod
    def _where_error(pattern: CompiledPattern, ctx: expr.Activation) -> str:
        assert pattern.where is not None
        _, why = expr.test_where(pattern.where, ctx)
        return f"{why} (in {pattern.where.source})"

    def _plan(self, subject: str) -> Plan:
        """The subject's plan, shared by every subject with the same candidates: 10,000 hosts'
        `host.*.metrics` subjects hold one plan between them."""
        if len(self._plans) >= PLANS_KEPT:
            self._plans.clear()  # subjects come and go (one per device); their plans are few, and stay
            if len(self._plans_by_candidates) >= PLANS_KEPT:
                self._plans_by_candidates.clear()
        candidates = self.index.candidates(subject)
        same = tuple(map(id, candidates))  # the candidates live as long as the index: ids stay theirs
        plan = self._plans_by_candidates.get(same)
        if plan is None:
            plan = self._plans_by_candidates[same] = Plan(candidates, share=self.shares)
        self._plans[subject] = plan
        return plan
