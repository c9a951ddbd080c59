"""Noticing that the wall clock was set (by NTP after a boot without a real-time clock, or by
hand), as opposed to time passing.

The wall clock and a clock that only counts elapsed time move together while time passes — a
suspend included, on Linux's CLOCK_BOOTTIME — so a change in their difference is the wall clock
being set. Forward, the new time is believed (timers due by then fire, saying they are late).
Back, the engine's clock must follow it down (`Engine.rewind`), or everything it timed on the
wrong clock would stay in the future: silences that never end, counts that never slide.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from watchd.cron.schedule import format_duration
from watchd.model import iso

log = logging.getLogger("watchd")

Rewind = Callable[[float], Awaitable[None]]  # take the engine's clock back to this instant, and commit
Emit = Callable[[str, dict[str, Any]], Awaitable[None]]  # publish one of watchd's own events

# A change of the two clocks' difference smaller than this, between two looks, is not a jump:
# NTP slews at most 0.5 ms a second, and a look reads both clocks within microseconds.
JUMP_TOLERANCE_S = 2.0


def elapsed() -> float:
    """Seconds counted through a suspend (CLOCK_BOOTTIME) where the system has such a clock; else
    the monotonic clock, which stops while suspended, so a resume then reads as a jump forward
    (harmless: a forward jump is only logged and announced)."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is None:
        return time.monotonic()
    return time.clock_gettime(boottime)


@dataclass(frozen=True)
class Jump:
    by_s: float  # how far the wall clock moved beyond the time that passed (negative: back)
    to: float  # the wall clock after it

    @property
    def expected(self) -> float:
        """Where the wall clock would be, had it not been set."""
        return self.to - self.by_s


class JumpDetector:
    """`check()` after each look at the clock: the jump since the previous look, if there was one.
    Each look becomes the reference for the next, so slow drift never adds up to a jump."""

    def __init__(
        self, wall: Callable[[], float], counter: Callable[[], float], tolerance_s: float = JUMP_TOLERANCE_S
    ) -> None:
        self.wall = wall
        self.counter = counter
        self.tolerance_s = tolerance_s
        self.offset = wall() - counter()

    def check(self) -> Jump | None:
        now = self.wall()
        offset = now - self.counter()
        by = offset - self.offset
        self.offset = offset
        return Jump(by, now) if abs(by) >= self.tolerance_s else None


async def follow(jump: Jump, *, rewind: Rewind, emit: Emit) -> None:
    """The wall clock was set: say so, and when it went back, take the engine's clock back too."""
    direction = "forward" if jump.by_s > 0 else "back"
    log.warning(
        "the wall clock jumped %s by %s (from %s to %s)%s",
        direction,
        format_duration(abs(jump.by_s)),
        iso(jump.expected),
        iso(jump.to),
        "" if jump.by_s > 0 else ": the engine's clock follows it back",
    )
    if jump.by_s < 0:
        await rewind(jump.to)
    await emit(
        "watchd.clock.jumped",
        {"by_s": round(jump.by_s, 3), "from": iso(jump.expected), "to": iso(jump.to), "direction": direction},
    )


async def follow_saved(saved: float, now: float, *, rewind: Rewind, emit: Emit) -> None:
    """At start: a saved engine clock ahead of the present was taken on a wall clock that ran
    ahead and was set back while watchd was down (or by a watchd that saved it so)."""
    ahead = saved - now
    if ahead < JUMP_TOLERANCE_S:
        return
    log.warning(
        "the engine's saved clock (%s) is %s ahead of the wall clock: the clock was set back; following it",
        iso(saved),
        format_duration(ahead),
    )
    await rewind(now)
    await emit(
        "watchd.clock.jumped",
        {"by_s": round(-ahead, 3), "from": iso(saved), "to": iso(now), "direction": "back", "at_start": True},
    )
