"""Errors a user can act on. Each says what is wrong and how to fix it; only cli.py prints them."""

from __future__ import annotations


class WatchdError(Exception):
    """Base of every error watchd reports to a user. `hint` says how to fix it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(WatchdError):
    """One or more problems in config or watch files, each as `file:line:col: message`. `report`
    is what to show: the problems and any warnings, in file order (default: the problems)."""

    def __init__(self, problems: list[str], hint: str | None = None, report: list[str] | None = None) -> None:
        super().__init__("\n".join(problems), hint)
        self.problems = problems
        self.report = report if report is not None else problems


class EventRejected(WatchdError):
    """An event that cannot enter the stream: bad subject, not an object, too large.
    `reason` is a short stable word (subject, reserved, id, json, data, size) for counting."""

    def __init__(self, message: str, hint: str | None = None, *, reason: str = "event") -> None:
        super().__init__(message, hint)
        self.reason = reason


class NatsUnavailable(WatchdError):
    """The NATS server cannot be reached or started."""


class DaemonNotRunning(WatchdError):
    """A command that needs the daemon found none."""


class RequestRefused(WatchdError):
    """An HTTP request the listener refuses: the status to answer and a short stable `reason` word
    (signature, stale, token, too_large, content_type, json, template, …) for the counters. The
    message names what is wrong, never a header's value or a secret."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class UnknownTarget(WatchdError):
    """An answer (ack, snooze, mute, unmute) names no watch and no handoff watchd knows."""
