"""What a source reports about itself: `status`, `/metrics`, `explain` and the silence check read it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from watchd.model import iso


@dataclass
class SourceHealth:
    name: str
    type: str
    expect_every_s: float | None = None
    started_at: float | None = None
    last_event_at: float | None = None
    events: int = 0
    duplicates: int = 0  # re-sends JetStream had already stored (after a crash): stored once
    rejections: Counter[str] = field(default_factory=Counter)  # by reason word
    last_error: str | None = None  # never a secret: messages are built from settings' names
    last_error_at: float | None = None
    restarts: int = 0
    silent_since: float | None = None  # set while `expect_every` is exceeded (one .silent per silence)

    def published(self, at: float, duplicate: bool) -> None:
        self.last_event_at = at
        if duplicate:
            self.duplicates += 1
        else:
            self.events += 1

    def rejected(self, reason: str, message: str, at: float) -> None:
        self.rejections[reason] += 1
        self.failed(message, at)

    def failed(self, message: str, at: float) -> None:
        self.last_error = message
        self.last_error_at = at

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "started_at": iso(self.started_at),
            "last_event_at": iso(self.last_event_at),
            "last_event_ts": self.last_event_at,
            "events": self.events,
            "duplicates": self.duplicates,
            "rejections": dict(sorted(self.rejections.items())),
            "last_error": self.last_error,
            "last_error_at": iso(self.last_error_at),
            "restarts": self.restarts,
            "expect_every_s": self.expect_every_s,
            "silent": self.silent_since is not None,
            "silent_since": iso(self.silent_since),
        }
