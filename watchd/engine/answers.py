"""Answers to an incident (SPEC section 8) — ack, snooze, mute, unmute — and a watch's `repeat`.

An incident is one watch firing for one key, until it is over (an absent watch hears again, a
deadline's expected event comes late) or, for kinds whose condition cannot end by itself, until
it is acked. Its state lives in the key's `KeyState` (`incident…`, `next_repeat`, `held`); holds
(snoozes and mutes) live in the watch's `WatchMeta.holds`, each with who set it and until when.

An answer reaches the engine as one of watchd's own events on the same stream as every other
event (`watchd.answer`, data: `Answer`), so it is stepped in order with them and a replay,
`explain` and `watchd test` see it where it happened. Durations count from the event's stream
instant, and every fire an answer leads to has a logical instant taken from the stream (a hold's
end, the answer's event id, a repeat's number), so its handoff ids are the same on every replay.

- `repeat`: while the incident is open, not acked and not held, it is handed off again every
  `repeat` (Alertmanager's repeat_interval). After a downtime one late repeat goes out, not a burst.
- `ack`: closes the open incident (of one key, or of every key): no more repeats. An ack that
  names a handoff of an earlier incident leaves a newer incident open.
- `snooze D`: fires are held (`held`), not handed off; when the snooze ends, every open incident
  it covered is handed off again if it is still open (re-judged: an absence that ended, a deadline
  met late, an ack, all close it before then).
- `mute D`: fires are recorded as `muted` and handed off never; nothing fires when it ends.
- `unmute`: ends a snooze or mute early, as if it had run out (a snooze's incidents are judged then).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from watchd.cron.schedule import parse_duration
from watchd.engine.base import EngineState, EventInput, Hold, KeyState, WatchLogic, for_key, hold_words, local_time, who
from watchd.engine.verdict import Verdict
from watchd.errors import WatchdError
from watchd.model import iso

ANSWER_SUBJECT = "watchd.answer"
ACTIONS = ("ack", "snooze", "mute", "unmute")
DEFAULT_DURATIONS = {"snooze": "1h", "mute": "24h"}  # what the chat buttons offer


class Answer(msgspec.Struct, kw_only=True):
    """The data of a `watchd.answer` event: who did what to which watch (and key)."""

    action: Literal["ack", "snooze", "mute", "unmute"]
    watch: str
    key: str | None = None  # None: every key of the watch
    duration: str | None = None  # snooze, mute
    by: str = ""  # "telegram:42", "slack:U1", "cli:alice", "http:ops"
    handoff: str | None = None  # the handoff answered (a chat button, `watchd ack HANDOFF`)
    fired_at: float | None = None  # that handoff's fire instant: tells its incident from a newer one
    reason: str | None = None  # that handoff's reason: what a snooze of it hands off again when it ends
    reply: dict[str, Any] | None = None  # the chat message to edit once applied (the daemon's, not the engine's)


def decode(data: dict[str, Any]) -> Answer:
    """An answer's data, checked; WatchdError saying what is wrong."""
    try:
        answer = msgspec.convert(data, Answer)
    except msgspec.ValidationError as exc:
        raise WatchdError(f"malformed answer: {exc}") from None
    if answer.action in DEFAULT_DURATIONS:
        answer.duration = answer.duration or DEFAULT_DURATIONS[answer.action]
        duration_s(answer.duration)
    return answer


def duration_s(text: str) -> float:
    seconds = parse_duration(text)
    if seconds <= 0:
        raise WatchdError(f"bad duration {text!r}: it must be longer than zero", hint="e.g. 30m, 1h, 1d")
    return seconds


# ---- answers ---------------------------------------------------------------------------------


def on_answer(s: EngineState, inp: EventInput) -> None:
    """Apply one `watchd.answer` event: each answer is a decision with who, when and until when."""
    try:
        answer = decode(inp.event.data)
    except WatchdError as exc:
        s.decide(str(inp.event.data.get("watch", "")), None, Verdict.REJECTED, exc.message, inp)
        return
    logic = s.watches.get(answer.watch)
    if logic is None:
        s.decide(answer.watch, answer.key, Verdict.REJECTED, f"answer for an unknown watch {answer.watch!r}", inp)
        return
    if answer.action == "ack":
        _ack(s, logic, answer, inp)
    elif answer.action == "unmute":
        _unmute(s, logic, answer, inp)
    else:
        _hold(s, logic, answer, inp)


def _scope(s: EngineState, logic: WatchLogic, key: str | None) -> list[str | None]:
    """The keys an answer or hold covers: one, or every key the watch has state for."""
    return [key] if key is not None else list(s.keys.get(logic.id, {}))


def _ack(s: EngineState, logic: WatchLogic, answer: Answer, inp: EventInput) -> None:
    by = who(answer.by)
    acked = 0
    for k in _scope(s, logic, answer.key):
        st = s.peek(logic.id, k)
        if st is None or st.incident is None or st.incident_at is None:
            continue
        since = local_time(st.incident_at, logic.zone)
        if answer.fired_at is not None and answer.fired_at < st.incident_at - 1e-3:
            reason = f"acked by {by}: that handoff's incident is over; the newer one since {since} stays open"
            s.decide(logic.id, k, Verdict.ACKED, reason, inp)
            acked += 1
            continue
        repeats = " (no more repeats)" if logic.repeat_s else ""
        s.decide(logic.id, k, Verdict.ACKED, f"acked by {by}: the incident since {since}{repeats}", inp)
        _close(s, logic, k)
        acked += 1
    if not acked:
        s.decide(logic.id, answer.key, Verdict.ACKED, f"acked by {by}: no open incident{for_key(answer.key)}", inp)


def _hold(s: EngineState, logic: WatchLogic, answer: Answer, inp: EventInput) -> None:
    assert answer.duration is not None  # decode gives snooze and mute their default
    hold = Hold(answer.action, s.clock + duration_s(answer.duration), answer.by, s.clock, answer.key)
    meta = s.meta[logic.id]
    # A new hold on the same scope replaces the one before (a snooze turned into a mute, or made longer).
    meta.holds = [h for h in meta.holds if h.key != answer.key] + [hold]
    s.changed_meta(logic.id)
    s.arm_watch(logic)
    st = s.peek(logic.id, answer.key)
    if hold.action == "snooze" and answer.handoff and not logic.tracks_incidents and (st is None or not st.incident):
        # "Snooze 1h" on a notification means "remind me in an hour": a watch that keeps no
        # incidents keeps this one, from the handoff, until the snooze ends.
        reason = answer.reason or f"handoff {answer.handoff}"
        s.open_incident(logic, answer.key, f"handoff:{answer.handoff}", reason, [], held=True)
    then = "; then judged again" if hold.action == "snooze" else "; nothing fires when it ends"
    verdict = Verdict.SNOOZED if hold.action == "snooze" else Verdict.MUTED
    s.decide(logic.id, answer.key, verdict, hold_words(hold, logic.zone) + then, inp)


def _unmute(s: EngineState, logic: WatchLogic, answer: Answer, inp: EventInput) -> None:
    meta = s.meta[logic.id]
    ending = [h for h in meta.holds if answer.key is None or h.key == answer.key]
    if not ending:
        said = f"unmute by {who(answer.by)}: nothing was snoozed or muted{for_key(answer.key)}"
        s.decide(logic.id, answer.key, Verdict.UNMUTED, said, inp)
        return
    for hold in ending:
        end_hold(s, logic, hold, early=(answer, inp))
    left = [h for h in meta.holds if h.key is None]
    if answer.key is not None and left:
        s.decide(logic.id, answer.key, Verdict.UNMUTED, f"still {hold_words(left[0], logic.zone)} (every key)", inp)


def end_holds(s: EngineState, logic: WatchLogic) -> None:
    """The holds whose time is up, ended in the order they end (the watch's timer came due)."""
    meta = s.meta[logic.id]
    for hold in sorted((h for h in meta.holds if h.until <= s.clock), key=lambda h: h.until):
        end_hold(s, logic, hold)


def end_hold(s: EngineState, logic: WatchLogic, hold: Hold, early: tuple[Answer, EventInput] | None = None) -> None:
    """A hold ends (ran out, or `early` by an unmute). After a snooze, every open incident it covered
    that no other hold covers is handed off again: the condition still holds."""
    meta = s.meta[logic.id]
    meta.holds = [h for h in meta.holds if h is not hold]
    s.changed_meta(logic.id)
    s.arm_watch(logic)
    words = hold_words(hold, logic.zone)
    inp = early[1] if early else None
    if early is not None:
        s.decide(logic.id, hold.key, Verdict.UNMUTED, f"{words}: ended early by {who(early[0].by)}", inp)
    else:
        s.decide(logic.id, hold.key, Verdict.SNOOZE_ENDED if hold.action == "snooze" else Verdict.MUTE_ENDED, words)
    if hold.action != "snooze":
        return
    # The fire's logical instant: the snooze's end, or the unmute's event: the same on every replay.
    at = f"unmute:{inp.event.id}" if inp is not None else f"snooze-end:{iso(hold.until)}"
    for k in _scope(s, logic, hold.key):
        st = s.peek(logic.id, k)
        if st is None or st.incident is None or st.incident_at is None or s.hold_on(logic.id, k) is not None:
            continue
        since = local_time(st.incident_at, logic.zone)
        reason = f"still open after the snooze (since {since}): {st.incident_reason}"
        s.fire(logic, k, f"{st.incident}#{at}", reason, evidence=list(st.incident_evidence), opens_incident=False)
        _after_handoff(s, logic, k)


def _after_handoff(s: EngineState, logic: WatchLogic, key: str | None) -> None:
    """An incident was handed off (again): the next repeat counts from now; a plain match that
    was only kept because a snooze held it is done with."""
    st = s.state(logic.id, key)
    st.held = False
    if not logic.tracks_incidents:
        _close(s, logic, key)
        return
    st.next_repeat = s.clock + logic.repeat_s if logic.repeat_s else None
    s.arm(logic, key)


def _close(s: EngineState, logic: WatchLogic, key: str | None) -> None:
    st = s.state(logic.id, key)
    s.close_incident(st)
    if st == KeyState():  # nothing but the incident was kept: the key's row goes
        s.drop(logic.id, key)


# ---- repeats and endings ---------------------------------------------------------------------


def repeat(s: EngineState, logic: WatchLogic, key: str | None) -> None:
    """The incident's `repeat` came due: hand it off again, unless a hold says otherwise."""
    st = s.state(logic.id, key)
    assert st.next_repeat is not None and st.incident is not None and st.incident_at is not None
    n = st.repeats + 1
    since = local_time(st.incident_at, logic.zone)
    reason = f"repeat {n}, not acked since {since}: {st.incident_reason}"
    hold = s.hold_on(logic.id, key)
    if hold is not None and hold.action == "snooze":
        st.held, st.next_repeat = True, None  # judged again when the snooze ends
        s.decide(logic.id, key, Verdict.HELD, f"{reason} ({hold_words(hold, logic.zone)})")
        return
    if hold is not None:
        s.decide(logic.id, key, Verdict.MUTED, f"{reason} ({hold_words(hold, logic.zone)})")
    else:
        evidence = list(st.incident_evidence)
        s.fire(logic, key, f"{st.incident}#repeat{n}", reason, evidence=evidence, opens_incident=False)
    st.repeats = n
    # After a downtime one late repeat goes out, not one per missed interval.
    nxt = st.next_repeat + logic.repeat_s
    st.next_repeat = nxt if nxt > s.clock else s.clock + logic.repeat_s


def resolve(s: EngineState, logic: WatchLogic, key: str | None, why: str, inp: EventInput) -> None:
    """The incident of this key is over by itself: it repeats no more, and a snooze has nothing
    to hand off for it. Said only when that changes something (repeats, or a held fire)."""
    st = s.peek(logic.id, key)
    if st is None or st.incident is None:
        return
    if st.next_repeat is not None or st.held:
        since = local_time(st.incident_at or s.clock, logic.zone)
        s.decide(logic.id, key, Verdict.RESOLVED, f"the incident since {since} is over: {why}", inp)
    s.close_incident(s.state(logic.id, key))
