"""The wire and storage shapes: events, decisions, handoffs."""

from __future__ import annotations

import hashlib
import math
import os
import re
import time
from datetime import UTC, datetime, tzinfo
from itertools import chain
from typing import Any, Literal

import msgspec

from watchd.errors import EventRejected
from watchd.limits import MAX_DATA_DEPTH, MAX_EVENT_BYTES, MAX_ID_CHARS, MAX_SUBJECT_CHARS, MAX_SUBJECT_TOKENS

SUBJECT_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")  # check with fullmatch: `$` alone passes "a\n"
ID_RE = re.compile(r"[!-~]+")  # printable ASCII, no space
ASSIGNED_ID_PREFIX = "seq-"  # ids watchd gives events that reached the stream without a valid one
_SUBJECT_HINT = "for example: backup.done or heartbeat.laptop"
EVENTS_PREFIX = "watchd.events."
HANDOFFS_PREFIX = "watchd.handoffs."
REPLIES_PREFIX = "watchd.replies."  # workers answer a handoff on watchd.replies.<handoff id>

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id(now_s: float | None = None) -> str:
    """A ULID: 48-bit millisecond time + 80 random bits, Crockford base32, sortable by time."""
    ms = int((time.time() if now_s is None else now_s) * 1000)
    n = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(n >> (5 * i)) & 31] for i in range(25, -1, -1))


# The instants a datetime holds, a day inside its range so that any zone's offset fits. One
# beyond (state an older watchd left, a clock gone wild) is shown at the edge, never an error:
# `status` and `explain` must show what they find.
_FIRST_TS = datetime(1, 1, 2, tzinfo=UTC).timestamp()
_LAST_TS = datetime(9999, 12, 30, tzinfo=UTC).timestamp()


def instant(ts: float, tz: tzinfo = UTC) -> datetime:
    """`ts` as a datetime in `tz`, held to the range a datetime can show."""
    if not _FIRST_TS <= ts <= _LAST_TS:  # NaN as well
        ts = _FIRST_TS if ts < _FIRST_TS else _LAST_TS
    return datetime.fromtimestamp(ts, tz)


def utc_from_ts(ts: float) -> datetime:
    return instant(ts)


def iso(ts: float | None) -> str | None:
    """RFC 3339 UTC with a Z, to the millisecond when needed."""
    if ts is None:
        return None
    dt = utc_from_ts(ts)
    text = dt.isoformat(timespec="milliseconds" if dt.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def ts_from_iso(text: str) -> float:
    """An RFC 3339 instant (`iso`'s output, or any with an offset) as epoch seconds; ValueError."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Event(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    subject: str
    time: datetime
    source: str = ""
    data: dict[str, Any] = msgspec.field(default_factory=dict)

    @property
    def ts(self) -> float:
        return self.time.timestamp()


def _shown(text: str, limit: int = 60) -> str:
    """User input quoted for a message: escaped, and cut short so a huge value cannot flood a log."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"… ({len(text)} characters)"


def check_subject(subject: str) -> str:
    """A subject's shape and size, wherever an event is built or decoded."""
    if len(subject) > MAX_SUBJECT_CHARS:
        raise EventRejected(
            f"bad subject {_shown(subject)}: over {MAX_SUBJECT_CHARS} characters", hint=_SUBJECT_HINT, reason="subject"
        )
    if not SUBJECT_RE.fullmatch(subject):
        raise EventRejected(
            f"bad subject {_shown(subject)}: use dot-separated tokens of letters, digits, '_' and '-'",
            hint=_SUBJECT_HINT,
            reason="subject",
        )
    if subject.count(".") >= MAX_SUBJECT_TOKENS:
        raise EventRejected(
            f"bad subject {_shown(subject)}: over {MAX_SUBJECT_TOKENS} dot-separated tokens",
            hint=_SUBJECT_HINT,
            reason="subject",
        )
    return subject


def is_reserved(subject: str) -> bool:
    """`watchd.…` subjects are watchd's own events (job outcomes, schedules, config, canary): only
    watchd publishes them. Any case, so that `WATCHD.job.x` cannot pass for one either."""
    return subject.partition(".")[0].lower() == "watchd"


def id_problem(event_id: object) -> str | None:
    """What is wrong with an event id, or None. Ids are printable ASCII without spaces (ULIDs,
    UUIDs, hashes, `backup-2026-11-22`), at most MAX_ID_CHARS; `seq-…` ids are watchd's own."""
    if not isinstance(event_id, str) or not event_id:
        return "id is missing" if event_id in (None, "") else "id is not a string"
    if len(event_id) > MAX_ID_CHARS:
        return f"id is over {MAX_ID_CHARS} characters"
    if not ID_RE.fullmatch(event_id):
        return "id has a character outside printable ASCII, or a space"
    if event_id.startswith(ASSIGNED_ID_PREFIX):
        return f"id starts with {ASSIGNED_ID_PREFIX}, which watchd keeps for the ids it assigns"
    return None


def check_id(event_id: str) -> str:
    problem = id_problem(event_id)
    if problem is not None:
        raise EventRejected(
            f"bad event id {_shown(event_id)}: {problem}",
            hint=f"use up to {MAX_ID_CHARS} printable ASCII characters without spaces, e.g. a UUID",
            reason="id",
        )
    return event_id


def data_problem(data: dict[str, Any]) -> str | None:
    """What keeps `data` from crossing JSON unchanged, or None: nesting past MAX_DATA_DEPTH (which
    recursive code downstream would pay for), or NaN/Infinity (which JSON would turn into null)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DATA_DEPTH:
            return f"is nested deeper than {MAX_DATA_DEPTH} levels"
        for value in node.values() if isinstance(node, dict) else node:
            if isinstance(value, dict | list):
                stack.append((value, depth + 1))
            elif isinstance(value, float) and not math.isfinite(value):
                return f"holds a number JSON cannot represent ({value})"
    return None


def parse_data(raw: bytes | str, what: str = "body") -> dict[str, Any]:
    """A JSON object, strictly: valid UTF-8, no lone surrogates, no NaN/Infinity, numbers in range,
    nesting within MAX_DATA_DEPTH. `what` names the input in the message (`body`, `--json`)."""
    try:
        data = msgspec.json.decode(raw)
    except RecursionError:
        raise EventRejected(f"{what} is nested deeper than {MAX_DATA_DEPTH} levels", reason="json") from None
    except msgspec.DecodeError as exc:  # ValidationError (a number out of range) is a DecodeError
        raise EventRejected(f"{what} is not valid JSON: {exc}", reason="json") from None
    if not isinstance(data, dict):
        raise EventRejected(f'{what} must be a JSON object (the event\'s data), e.g. {{"exit_code": 0}}', reason="json")
    # The decoder already refused NaN, Infinity, numbers out of range and lone surrogates: only the
    # depth is left, and counting brackets (cheap) bounds it from above, so most bodies need no walk.
    brackets = raw.count(b"[") + raw.count(b"{") if isinstance(raw, bytes) else raw.count("[") + raw.count("{")
    if brackets > MAX_DATA_DEPTH and too_deep(data):
        raise EventRejected(f"{what} is nested deeper than {MAX_DATA_DEPTH} levels", reason="json")
    return data


def too_deep(data: dict[str, Any]) -> bool:
    """Nesting past MAX_DATA_DEPTH (the data object is level 1), a level at a time over containers.
    Decoded JSON holds plain dicts and lists only, so exact type tests suffice; the values are
    chained in C (a 12 KB webhook body: 66 → 27 µs against a generator per node)."""
    level: list[Any] = [data]
    for _ in range(MAX_DATA_DEPTH):
        in_dicts = chain.from_iterable(map(dict.values, [n for n in level if type(n) is dict]))
        in_lists = chain.from_iterable([n for n in level if type(n) is list])
        level = [v for v in chain(in_dicts, in_lists) if type(v) is dict or type(v) is list]
        if not level:
            return False
    return True


def _build(
    subject: str, data: dict[str, Any] | None, id: str | None, time_s: float | None, source: str, parsed: bool = False
) -> Event:
    return _build_encoded(subject, data, id, time_s, source, parsed, walk=not parsed)[0]


def _build_encoded(
    subject: str,
    data: dict[str, Any] | None,
    id: str | None,
    time_s: float | None,
    source: str,
    parsed: bool,
    *,
    walk: bool,
) -> tuple[Event, bytes | None]:
    """The event, and its encoding when it was made to check the data (`parsed` False); `walk`:
    look through the data for depth and NaN."""
    check_subject(subject)
    if id is not None:
        check_id(id)
    if data is None:
        data = {}
    elif not isinstance(data, dict):
        raise EventRejected("event data must be a JSON object", reason="data")
    elif walk:
        problem = data_problem(data)
        if problem is not None:
            raise EventRejected(f"event data {problem}", reason="data")
    now = time.time() if time_s is None else time_s
    event = Event(id=id or new_id(now), subject=subject, time=utc_from_ts(now), source=source, data=data)
    if parsed:
        return event, None
    try:
        return event, encode(event)
    except (UnicodeEncodeError, TypeError) as exc:  # a lone surrogate, a key that is not a string
        raise EventRejected(f"event data cannot be written as JSON: {exc}", reason="data") from None


def make_event(
    subject: str,
    data: dict[str, Any] | None = None,
    *,
    id: str | None = None,
    time_s: float | None = None,
    source: str = "",
    parsed: bool = False,
) -> Event:
    """Build an event at an outside edge (HTTP, `watchd emit`/`exec`, an agent's emit tool, a
    source): subject, id and data checked, id and time assigned when absent. `watchd.` subjects
    are refused here: watchd's own events are made by own_event. `parsed`: `data` is what
    parse_data returned, already checked (a webhook's body: checking a large one again costs)."""
    _refuse_reserved(subject)
    return _build(subject, data, id, time_s, source, parsed)


def make_encoded_event(
    subject: str,
    data: dict[str, Any] | None = None,
    *,
    id: str | None = None,
    time_s: float | None = None,
    source: str = "",
    flat: bool = False,
) -> tuple[Event, bytes]:
    """make_event, and the event's encoding: checking that its data can be written as JSON is
    encoding it, so a caller that publishes it (a source) need not encode it again. `flat`: the
    caller built the data of strings, integers, booleans and None a few levels deep, so it is not
    walked for depth or NaN (the encoding still refuses what JSON cannot hold)."""
    _refuse_reserved(subject)
    event, body = _build_encoded(subject, data, id, time_s, source, parsed=False, walk=not flat)
    assert body is not None
    return event, body


def _refuse_reserved(subject: str) -> None:
    if is_reserved(subject):
        raise EventRejected(
            f"bad subject {_shown(subject)}: subjects under watchd. are watchd's own (reserved)",
            hint="pick a subject of your own, e.g. backup.done",
            reason="reserved",
        )


def own_event(
    subject: str,
    data: dict[str, Any] | None = None,
    *,
    time_s: float | None = None,
    source: str = "watchd",
    id: str | None = None,
) -> Event:
    """One of watchd's own events (`watchd.job.backup.done`, `watchd.config.reloaded`, …): the
    internal path that may publish under the reserved `watchd.` prefix. `id` when a re-send must
    be stored once (an answer relayed from a chat event)."""
    return _build(subject, data, id, time_s, source)


class _Envelope(msgspec.Struct, kw_only=True):
    """An event as it reaches the stream. A raw NATS publisher bypasses every edge, so its id is
    taken as anything and judged after decoding."""

    id: Any = None
    subject: str
    time: datetime
    source: str = ""
    data: dict[str, Any] = msgspec.field(default_factory=dict)


_envelope_decoder = msgspec.json.Decoder(_Envelope)


def _decode(raw: bytes, max_bytes: int) -> _Envelope:
    if len(raw) > max_bytes:
        raise EventRejected(f"event is {len(raw)} bytes, over the {max_bytes}-byte limit", reason="size")
    try:
        env = _envelope_decoder.decode(raw)
    except RecursionError:
        raise EventRejected(f"malformed event: data nested deeper than {MAX_DATA_DEPTH} levels") from None
    except msgspec.ValidationError as exc:
        raise EventRejected(f"malformed event: {exc}") from None
    except msgspec.DecodeError as exc:
        raise EventRejected(f"event is not valid JSON: {exc}") from None
    check_subject(env.subject)
    # Counting brackets is cheap and bounds the depth from above: most events need no walk.
    if raw.count(b"[") + raw.count(b"{") > MAX_DATA_DEPTH:
        problem = data_problem(env.data)
        if problem is not None:
            raise EventRejected(f"malformed event: data {problem}")
    if env.time.tzinfo is None:
        env.time = env.time.replace(tzinfo=UTC)
    return env


def _event(env: _Envelope, event_id: str) -> Event:
    return Event(id=event_id, subject=env.subject, time=env.time, source=env.source, data=env.data)


def decode_event(raw: bytes, max_bytes: int = MAX_EVENT_BYTES) -> Event:
    """Decode and check an event; raises EventRejected with the reason (a bad id included)."""
    env = _decode(raw, max_bytes)
    problem = id_problem(env.id)
    if problem is not None:
        raise EventRejected(f"malformed event: {problem}", reason="id")
    return _event(env, env.id)


def assigned_id(seq: int) -> str:
    return f"{ASSIGNED_ID_PREFIX}{seq}"


def decode_stored_event(raw: bytes, seq: int, max_bytes: int = MAX_EVENT_BYTES) -> tuple[Event, str | None]:
    """Decode an event the stream holds at `seq`, and a note when its id had to be assigned.

    Publishers that bypass the edges may send no id, an empty one or an invalid one. The event is
    not dropped: it gets `seq-<seq>`, stable across replays and unique in the stream (edges refuse
    `seq-` ids), and the note says why, for the decisions about it."""
    env = _decode(raw, max_bytes)
    problem = id_problem(env.id)
    if problem is None:
        return _event(env, env.id), None
    event_id = assigned_id(seq)
    return _event(env, event_id), f"id {event_id} assigned by watchd: the publisher's {problem}"


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
