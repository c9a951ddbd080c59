"""The engine's steps as the daemon takes them: each input's decisions, fires and handoffs
gathered for one commit, with a failure confined to the input (and watch) that caused it.

An input whose handling raises — a bug, or a value no check foresaw — must stop neither the
daemon nor the stream. Left uncommitted, the event would be replayed at every restart and fail
again, for ever. So a failure becomes a `failed` decision for that event (`explain --event` shows
it), committed with the rest of its batch, and the stream moves on. The engine confines a watch's
failure to that watch (`EngineState.failed`); here the rest of one input's handling is confined:
decoding what the stream holds, the step, and the handoffs of each fire.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from watchd.dispatch import handoffs_from_fire
from watchd.engine import MISSES, Decision, Engine, EventInput, Fire, Outputs, Tick, Verdict, failure
from watchd.explain.clauses import describe_misses
from watchd.model import Event, Handoff
from watchd.upkeep import LogLimiter

log = logging.getLogger("watchd")

FAILURES_LOGGED_PER_MINUTE = 5  # with their traceback; the rest are counted, and all are decisions


@dataclass
class Batch:
    """What a run of steps decided, for one commit."""

    decisions: list[Decision] = field(default_factory=list)
    fires: list[Fire] = field(default_factory=list)
    handoffs: list[Handoff] = field(default_factory=list)
    holds: dict[str, float] = field(default_factory=dict)  # quiet hours: handoff id -> not before
    errors: list[tuple[Decision, Exception]] = field(default_factory=list)

    def fail(self, d: Decision, exc: Exception) -> None:
        self.decisions.append(d)
        self.errors.append((d, exc))

    @staticmethod
    def of(out: Outputs, engine: Engine) -> Batch:
        """A batch from outputs already in hand (no step of its own)."""
        batch = Batch()
        batch.add(out, engine)
        return batch

    def add(self, out: Outputs, engine: Engine) -> None:
        """A step's outputs, with the handoffs of each fire (one fire's failure is its watch's)."""
        self.decisions.extend(out.decisions)
        self.errors.extend(out.errors)
        for fire in out.fires:
            try:
                handoffs = _handoffs(engine, fire, self.holds)
            except Exception as exc:
                self.fail(failure(fire.fired_at, fire.watch, fire.key, exc), exc)
                continue
            self.fires.append(fire)
            self.handoffs.extend(handoffs)


def take(engine: Engine, inp: EventInput | Tick, batch: Batch, keep: Callable[[Outputs], None] | None = None) -> None:
    """Step `engine` with `inp` into `batch`. Should the step itself raise (beyond any one watch,
    which the engine confines), its partial outputs are dropped for one `failed` decision. `keep`
    may drop outputs first (in place), before any handoff is made of a fire."""
    try:
        out = engine.step(inp)
    except Exception as exc:
        event = inp if isinstance(inp, EventInput) else None
        batch.fail(failure(inp.at, "", None, exc, event), exc)
        return
    if keep is not None:
        keep(out)
    batch.add(out, engine)


def _handoffs(engine: Engine, fire: Fire, holds: dict[str, float]) -> list[Handoff]:
    # The engine holds the definitions it fired from: no lookup table to rebuild per batch.
    logic = engine.watches.get(fire.watch)
    if logic is None:
        return handoffs_from_fire(fire)
    w = logic.watch
    zone = engine.default_zone
    return handoffs_from_fire(fire, w.message, quiet=w.quiet, urgent=w.urgent, zone=zone, holds=holds)


class FailureLog:
    """Logs failures with their traceback, a few a minute: a flood of bad events must not flood
    the log too (each one is a decision all the same)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.minute = 0.0
        self.logged = 0
        self.unlogged = 0
        self.total = 0

    def report(self, errors: list[tuple[Decision, Exception]]) -> None:
        for d, exc in errors:
            self.total += 1
            now = self.clock()
            if now - self.minute >= 60:
                if self.unlogged:
                    log.error("%d more processing failures in the last minute (see `watchd explain`)", self.unlogged)
                self.minute, self.logged, self.unlogged = now, 0, 0
            if self.logged >= FAILURES_LOGGED_PER_MINUTE:
                self.unlogged += 1
                continue
            self.logged += 1
            where = f"watch {d.watch}" if d.watch else "the engine"
            what = f"event {d.event_id} (seq {d.seq})" if d.event_id else "a timer"
            log.error("%s failed on %s: recorded as failed, going on", where, what, exc_info=exc)


# Bad input rather than a fault: a stream message that is no event, a `where` or `key` that cannot be
# evaluated on an event. Each is a decision already (`explain` shows it, /metrics counts it by
# verdict); the log says so too, at most one line a minute per kind and watch, so that a publisher
# sending garbage or a watch reading a field that is not there is noticed without flooding the log.
_BAD_INPUT = {
    Verdict.REJECTED: "rejected the message at {event} of the event stream: {reason}",
    Verdict.WHERE_ERROR: "watch {watch}: `where` could not be evaluated on {event}, so it is false for it: {reason}",
    Verdict.KEY_ERROR: "watch {watch}: `key` could not be evaluated on {event}, which it skips: {reason}",
}


def log_bad_input(decisions: list[Decision], limiter: LogLimiter) -> None:
    for d in decisions:
        template = _BAD_INPUT.get(d.verdict)
        if template is None:
            continue
        event = f"event {d.event_id} (seq {d.seq})" if d.event_id else f"seq {d.seq}"
        line = template.format(watch=d.watch, event=event, reason=d.reason)
        limiter.log(logging.WARNING, f"{d.verdict}:{d.watch}", "%s", line)


MISSES_KEPT_PER_BATCH = 3


def thin_misses(decisions: list[Decision]) -> list[Decision]:
    """Keep every decision that changed something, and only the last few misses per watch.

    A miss (a `where` that was false) is by far the most common decision — one per candidate
    watch per event — and writing each one would cost more than deciding. The latest misses are
    enough for `explain` to show the nearest ones; the others are counted in the `n` of the oldest
    kept row of the same watch, key and verdict (or of the newest one dropped, when none of those
    is kept), so explain's counts stay exact, for each key too.
    """
    keep = [True] * len(decisions)
    kept_per_watch: dict[str, int] = {}
    stands_for: dict[tuple[str, str | None, Verdict], int] = {}  # (watch, key, verdict) -> row carrying the count
    dropped: dict[tuple[str, str | None, Verdict], list[int]] = {}
    for i in range(len(decisions) - 1, -1, -1):  # newest first: the latest misses are the ones kept
        d = decisions[i]
        if d.verdict not in MISSES:
            continue
        group = (d.watch, d.key, d.verdict)
        if kept_per_watch.get(d.watch, 0) < MISSES_KEPT_PER_BATCH:
            kept_per_watch[d.watch] = kept_per_watch.get(d.watch, 0) + 1
            stands_for[group] = i
        else:
            keep[i] = False
            dropped.setdefault(group, []).append(i)
    for group, indices in dropped.items():
        carrier = stands_for.get(group)
        if carrier is None:
            carrier = indices.pop(0)
            keep[carrier] = True
        decisions[carrier].n += len(indices)
    return [d for d, k in zip(decisions, keep, strict=True) if k]


def kept_for_explain(decisions: list[Decision], events: dict[int, Event]) -> list[Decision]:
    """What a batch's commit keeps: misses thinned, and only the kept ones pay for naming the clause
    of their `where` that was false (`events` are the batch's events by stream sequence)."""
    kept = thin_misses(decisions)
    describe_misses(kept, events)
    return kept
