"""Clocks to inject where watchd takes `clock`: one that stands still until the test moves it, and
one that runs with wall time and jumps when the test says so."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def utc(text: str) -> float:
    """An instant from an ISO date-time; one without an offset is read as UTC."""
    at = datetime.fromisoformat(text)
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


class ManualClock:
    """A virtual instant that moves only when the test moves it: `clock.t = …`, `+=`, or `set(iso)`."""

    def __init__(self, at: float | str) -> None:
        self.t = utc(at) if isinstance(at, str) else at

    def __call__(self) -> float:
        return self.t

    def set(self, at: str) -> None:
        self.t = utc(at)


class VirtualClock:
    """Wall time a test moves forward: time.time() plus an offset. It starts at the real now, so the
    instants NATS stamps on stored events stay comparable with it. `advance` is time passing (a
    suspend too); `set_by` is the wall clock being set, forward or back, while no time passes:
    `elapsed` (the daemon's count of time passing) tells the two apart."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.passed = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def elapsed(self) -> float:
        return time.monotonic() + self.passed

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, "time only moves forward"
        self.offset += seconds
        self.passed += seconds

    def set_by(self, seconds: float) -> None:
        self.offset += seconds
