"""The one vocabulary of decisions: what the engine (or the daemon, for a malformed message)
decided about one input for one watch. The values are the words stored in the `decisions` table
and shown by `explain`, so they never change; a `StrEnum` compares equal to its stored string."""

from __future__ import annotations

import enum


class Verdict(enum.StrEnum):
    MATCHED = "matched"  # the event counted for the watch without deciding anything yet
    WHERE_FALSE = "where_false"  # a near miss: the subject matched, the `where` did not
    WHERE_ERROR = "where_error"  # the `where` could not be evaluated for this event
    KEY_ERROR = "key_error"  # the `key` could not be evaluated for this event
    COUNTED = "counted"  # one more towards `count` within `window`
    SUPPRESSED = "suppressed"  # would have fired: a cooldown, or the same fire handed off before
    FIRED = "fired"
    WOULD_FIRE = "would_fire"  # shadow mode: fired, with no handoff
    WINDOW_OPENED = "window_opened"
    WINDOW_CLOSED = "window_closed"  # the expected event came in time
    RECOVERED = "recovered"  # an absent watch heard again after the silence it fired for
    MISSED_WHILE_DOWN = "missed_while_down"  # a deadline window that opened and passed while watchd was down
    REJECTED = "rejected"  # not an event at all (bad JSON, too large): recorded by the daemon, no watch
    FAILED = "failed"  # handling the input raised: confined to it (and to the watch, when one is named)
    # Answers to an incident (SPEC section 8), each recorded with who gave it and until when.
    ACKED = "acked"  # someone acknowledged the incident: its repeats stop
    SNOOZED = "snoozed"  # someone held the watch (or a key) for a while: fires wait, then are judged again
    MUTED = "muted"  # someone silenced the watch (or a key); also a fire that the silence swallowed
    UNMUTED = "unmuted"  # someone ended a snooze or mute early
    HELD = "held"  # a fire or repeat that a snooze holds back until it ends
    SNOOZE_ENDED = "snooze_ended"
    MUTE_ENDED = "mute_ended"
    RESOLVED = "resolved"  # the incident is over by itself (the silence ended, the expected event came late)


# On Python 3.11 reading a member off the class (`Verdict.FIRED`) costs ~0.3 µs, ten times a
# module global; the engine records about ten decisions per event, so its hot paths read members
# bound once to module names.

# A miss is an event that reached a watch by subject and was turned away; misses are most of all
# decisions, so only the latest few are stored (the rest counted).
MISSES = frozenset({Verdict.WHERE_FALSE, Verdict.WHERE_ERROR, Verdict.KEY_ERROR})
FIRES = frozenset({Verdict.FIRED, Verdict.WOULD_FIRE})
# The outcomes `explain` reports first: the watch acted (or was held back from acting).
DECISIVE = FIRES | {Verdict.SUPPRESSED}
