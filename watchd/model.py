"""The wire and storage shapes: events, decisions, handoffs."""

from __future__ import annotations

import hashlib
import os
import re
import time
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from watchd.errors import EventRejected
from watchd.limits import MAX_EVENT_BYTES

SUBJECT_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
EVENTS_PREFIX = "watchd.events."
HANDOFFS_PREFIX = "watchd.handoffs."
REPLIES_PREFIX = "watchd.replies."  # workers answer a handoff on watchd.replies.<handoff id>

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id(now_s: float | None = None) -> str:
    """A ULID: 48-bit millisecond time + 80 random bits, Crockford base32, sortable by time."""
    ms = int((time.time() if now_s is None else now_s) * 1000)
    n = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(n >> (5 * i)) & 31] for i in range(25, -1, -1))


def utc_from_ts(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def iso(ts: float | None) -> str | None:
    """RFC 3339 UTC with a Z, to the millisecond when needed."""
    if ts is None:
        return None
    dt = utc_from_ts(ts)
    text = dt.isoformat(timespec="milliseconds" if dt.microsecond else "seconds")
    return text.replace("+00:00", "Z")


class Event(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    subject: str
    time: datetime
    source: str = ""
    data: dict[str, Any] = msgspec.field(default_factory=dict)

    @property
    def ts(self) -> float:
        return self.time.timestamp()


def check_subject(subject: str) -> str:
    if not SUBJECT_RE.match(subject):
        raise EventRejected(
            f"bad subject {subject!r}: use dot-separated tokens of letters, digits, '_' and '-'",
            hint="for example: backup.done or heartbeat.laptop",
        )
    if subject.startswith("watchd.events") or subject.startswith("watchd.handoffs"):
        raise EventRejected(f"bad subject {subject!r}: the watchd.events and watchd.handoffs prefixes are reserved")
    return subject


def make_event(
    subject: str,
    data: dict[str, Any] | None = None,
    *,
    id: str | None = None,
    time_s: float | None = None,
    source: str = "",
) -> Event:
    """Build a valid event at the edge: subject checked, id and time assigned when absent."""
    check_subject(subject)
    if data is not None and not isinstance(data, dict):
        raise EventRejected("event data must be a JSON object")
    now = time.time() if time_s is None else time_s
    return Event(id=id or new_id(now), subject=subject, time=utc_from_ts(now), source=source, data=data or {})


_event_decoder = msgspec.json.Decoder(Event)


def decode_event(raw: bytes, max_bytes: int = MAX_EVENT_BYTES) -> Event:
    """Decode and check an event from the wire; raises EventRejected with the reason."""
    if len(raw) > max_bytes:
        raise EventRejected(f"event is {len(raw)} bytes, over the {max_bytes}-byte limit")
    try:
        event = _event_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise EventRejected(f"malformed event: {exc}") from None
    except msgspec.DecodeError as exc:
        raise EventRejected(f"event is not valid JSON: {exc}") from None
    check_subject(event.subject)
    if event.time.tzinfo is None:
        event.time = event.time.replace(tzinfo=UTC)
    return event


def encode(obj: Any) -> bytes:
    return msgspec.json.encode(obj)


def stable_hash(*parts: object, length: int = 24) -> str:
    """Deterministic id from parts: the same logical thing always gets the same id."""
    h = hashlib.sha256("\x1f".join("" if p is None else str(p) for p in parts).encode())
    return h.hexdigest()[:length]


HandoffState = Literal[
    "pending", "delivering", "delivered", "accepted", "done", "failed", "retrying", "dead", "dropped"
]


class Window(msgspec.Struct):
    start: str | None
    end: str | None


class Handoff(msgspec.Struct, kw_only=True):
    id: str
    watch: str
    watch_version: int
    kind: str
    key: str | None
    target: str
    trigger: str
    reason: str
    fired_at: str
    window: Window | None = None
    evidence: list[dict[str, Any]] = msgspec.field(default_factory=list)
    attempt: int = 1
    message: str | None = None
    state: HandoffState = "pending"
