"""The pure engine against a simple reference model of each watch kind (stateful testing):
random events per key, time passing, events stamped a little behind the clock, restarts from the
persisted state, and the wall clock set back (`Engine.rewind`, as the daemon does on a jump back;
a jump forward is time passing, as far as the engine can tell).

Each model is the kind's rule written the plainest way, per key:

- match with `cooldown`: fire unless the key fired less than `cooldown` ago.
- count `count` within `window`: fire when that many events fall inside the window ending now,
  then count afresh.
- absent `for`: once a key was heard, fire once when it has been silent for `for`.
- deadline opened by an event: each opening gives a window of `within`; an expected event inside
  an open window closes it; a window that ends open fires.

An input is judged at its instant or at the clock, whichever is later; timers due by an input
fire before it is judged. A clock set back brings every instant the state holds past the new
present to it (a window keeps its length).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from support.engine_sim import T0, defs

from watchd.engine import Engine, EventInput, Fire, KeyState, Tick, WatchMeta
from watchd.model import make_event

COOLDOWN_S, WINDOW_S, COUNT, SILENCE_S, WITHIN_S = 600, 600, 3, 900, 1800

WATCHES = f"""
[[watch]]
id = "match"
kind = "match"
on = {{ subject = "m", key = "data.k" }}
cooldown = "{COOLDOWN_S}s"
then = ["notify.console"]

[[watch]]
id = "count"
kind = "match"
on = {{ subject = "c", key = "data.k" }}
count = {COUNT}
window = "{WINDOW_S}s"
then = ["notify.console"]

[[watch]]
id = "absent"
kind = "absent"
expect = {{ subject = "a", key = "data.k" }}
for = "{SILENCE_S}s"
then = ["notify.console"]

[[watch]]
id = "deadline"
kind = "deadline"
opens = {{ subject = "o", key = "data.k" }}
expect = {{ subject = "x", key = "data.k" }}
within = "{WITHIN_S}s"
then = ["notify.console"]
"""

SUBJECTS = {"m": "match", "c": "count", "a": "absent", "o": "deadline", "x": "deadline"}
KEYS = st.sampled_from(["k1", "k2", "k3"])
# Gaps between inputs, with the edges of each duration (and halves of them) drawn often: an
# off-by-one at a window's edge shows only when an input lands exactly there.
EDGES = sorted({d + e for d in (COOLDOWN_S, WINDOW_S, SILENCE_S, WITHIN_S) for e in (-1, 0, 1)} | {300, 450, 900})
GAPS = st.one_of(st.sampled_from([0, 0, 1, *EDGES]), st.integers(0, 400))
Fired = tuple[str, str, object]  # (watch, key, the event id, or the window) of a fire


@dataclass
class Model:
    """Every kind's state, per key, and the clock."""

    now: float
    last_fire: dict[str, float] = field(default_factory=dict)  # match
    hits: dict[str, list[float]] = field(default_factory=dict)  # count
    last_seen: dict[str, float] = field(default_factory=dict)  # absent
    silent: set[str] = field(default_factory=set)  # absent
    windows: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # deadline

    def timers(self, now: float) -> list[Fired]:
        """What comes due by `now`, fired and forgotten."""
        fired: list[Fired] = []
        for k, seen in self.last_seen.items():
            if k not in self.silent and seen + SILENCE_S <= now:
                self.silent.add(k)
                fired.append(("absent", k, (seen, seen + SILENCE_S)))
        for k, ws in self.windows.items():
            fired += [("deadline", k, w) for w in ws if w[1] <= now]
            self.windows[k] = [w for w in ws if w[1] > now]
        return fired

    def event(self, subject: str, k: str, event_id: str, at: float) -> list[Fired]:
        self.now = max(at, self.now)
        now = self.now
        fired = self.timers(now)
        if subject == "m":
            last = self.last_fire.get(k)
            if last is None or now >= last + COOLDOWN_S:
                self.last_fire[k] = now
                fired.append(("match", k, event_id))
        elif subject == "c":
            hits = [t for t in self.hits.get(k, []) if t > now - WINDOW_S] + [now]
            self.hits[k] = [] if len(hits) >= COUNT else hits
            if len(hits) >= COUNT:
                fired.append(("count", k, event_id))
        elif subject == "a":
            self.last_seen[k] = now
            self.silent.discard(k)
        elif subject == "o":
            self.windows.setdefault(k, []).append((now, now + WITHIN_S))
        else:
            self.windows[k] = [w for w in self.windows.get(k, []) if not w[0] <= now <= w[1]]
        return fired

    def tick(self, now: float) -> list[Fired]:
        self.now = max(now, self.now)
        return self.timers(self.now)

    def rewind(self, now: float) -> None:
        if now >= self.now:
            return
        self.now = now
        self.last_fire = {k: min(t, now) for k, t in self.last_fire.items()}
        self.hits = {k: [min(t, now) for t in ts] for k, ts in self.hits.items()}
        self.last_seen = {k: min(t, now) for k, t in self.last_seen.items()}
        for k, ws in self.windows.items():
            self.windows[k] = [(s, e) if s <= now else (now, now + e - s) for s, e in ws]

    def next_due(self) -> float | None:
        dues = [t + SILENCE_S for k, t in self.last_seen.items() if k not in self.silent]
        dues += [e for ws in self.windows.values() for _, e in ws]
        return min(dues, default=None)


def fired(fires: list[Fire]) -> list[Fired]:
    out: list[Fired] = []
    for f in fires:
        assert f.key is not None
        what: object = f.window if f.kind in ("absent", "deadline") else f.logical
        out.append((f.watch, f.key, what))
    return sorted(out, key=repr)


class EngineVsModel(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.engine = Engine()
        self.engine.load(defs(WATCHES), T0)
        self.engine.step(Tick(T0))
        self.model = Model(T0)
        self.seq = 0

    def _event(self, subject: str, k: str, at: float) -> None:
        self.seq += 1
        event_id = f"e{self.seq}"
        event = make_event(subject, {"k": k}, id=event_id, time_s=at)
        out = self.engine.step(EventInput(event, at, self.seq))
        assert not out.errors, out.errors
        assert fired(out.fires) == sorted(self.model.event(subject, k, event_id, at), key=repr)

    @rule(subject=st.sampled_from(sorted(SUBJECTS)), k=KEYS, after=GAPS)
    def event(self, subject: str, k: str, after: int) -> None:
        self._event(subject, k, self.model.now + after)

    @rule(subject=st.sampled_from(sorted(SUBJECTS)), k=KEYS, behind=st.integers(1, 30))
    def event_stamped_behind_the_clock(self, subject: str, k: str, behind: int) -> None:
        self._event(subject, k, self.model.now - behind)

    @rule(seconds=st.one_of(GAPS, st.integers(0, 3 * SILENCE_S)))
    def time_passes(self, seconds: int) -> None:
        now = self.model.now + seconds
        out = self.engine.step(Tick(now))
        assert not out.errors, out.errors
        assert fired(out.fires) == sorted(self.model.tick(now), key=repr)

    @rule(seconds=st.one_of(st.integers(1, 2 * WITHIN_S), st.just(365 * 86400)))
    def clock_set_back(self, seconds: int) -> None:
        now = self.model.now - seconds
        self.engine.rewind(now)
        self.model.rewind(now)

    @rule()
    def restart(self) -> None:
        """A new engine from what the daemon persists: every key's state, every watch's meta, the clock."""
        keys = {
            w: {k: msgspec.json.decode(msgspec.json.encode(s), type=KeyState) for k, s in ks.items()}
            for w, ks in self.engine.keys.items()
        }
        meta = {w: msgspec.json.decode(msgspec.json.encode(m), type=WatchMeta) for w, m in self.engine.meta.items()}
        engine = Engine()
        engine.restore(keys, meta, self.engine.clock)
        engine.load(defs(WATCHES), self.model.now)
        self.engine = engine

    @invariant()
    def same_clock_and_next_due(self) -> None:
        if not hasattr(self, "engine"):
            return
        assert self.engine.clock == self.model.now
        assert self.engine.next_due() == self.model.next_due()


EngineVsModel.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_the_engine_agrees_with_the_reference_model = EngineVsModel.TestCase
