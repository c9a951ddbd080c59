"""The outbox: `handoffs` and their `transitions`, every change of state recorded.

`pending → delivering → delivered`, or `retrying` and finally `dead`; an agent's `accepted` ends in
`done` or `failed`; a user's `dropped` leaves the dead letters. Writes that change more than one row
are one transaction; the dead-letter commands (`watchd dlq`) run them from the CLI beside the
running daemon, as short transactions of their own.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from watchd.errors import WatchdError
from watchd.model import Handoff, Window, encode, iso
from watchd.store.db import Transaction, Write

_HANDOFF = (
    "id, watch, watch_version, kind, key, target, trigger, reason, fired_at, window, evidence, attempt, message, state"
)
_STORED = f"{_HANDOFF}, created_at, updated_at, next_attempt_at, last_error"
_ROW = "id, key, target, state, attempt, last_error, fired_at, created_at, watch, next_attempt_at, decided_by"
_WAITING = "state IN ('pending', 'retrying')"
_window = msgspec.json.Decoder(Window | None)
_evidence = msgspec.json.Decoder(list[dict[str, Any]])


class StoredHandoff(Handoff, kw_only=True):
    """A handoff as the outbox keeps it: when it was stored, last changed and is next tried, and why
    its last attempt failed."""

    created_at: float
    updated_at: float
    next_attempt_at: float
    last_error: str | None = None


@dataclass(frozen=True)
class HandoffRow:
    """A handoff as `explain` lists it (no evidence)."""

    id: str
    key: str | None
    target: str
    state: str
    attempt: int
    last_error: str | None
    fired_at: str  # RFC 3339 UTC, as in the handoff
    created_at: float = 0.0
    watch: str = ""
    next_attempt_at: float = 0.0
    decided_by: str | None = None  # the instance that decided it, in a cluster

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "key": self.key,
            "target": self.target,
            "state": self.state,
            "attempt": self.attempt,
            "last_error": self.last_error,
            "fired_at": self.fired_at,
            **({"decided_by": self.decided_by} if self.decided_by else {}),
        }


# ---- new handoffs -----------------------------------------------------------------------------------


def insert_handoffs(
    conn: sqlite3.Connection,
    handoffs: Iterable[Handoff],
    now: float,
    holds: Mapping[str, float] | None = None,
    detail: str | None = None,
) -> list[str]:
    """Store new handoffs, due now (or when `holds` releases them: quiet hours), inside the caller's
    transaction. Returns the ids that were new: an id already stored is left as it is, so the same
    logical fire never hands off twice."""
    new_ids: list[str] = []
    for h in handoffs:
        held = (holds or {}).get(h.id)
        cur = conn.execute(
            f"INSERT OR IGNORE INTO handoffs ({_STORED}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                *_values(h),
                now,
                now,
                now if held is None else max(now, held),
                None,
            ),
        )
        if cur.rowcount:
            new_ids.append(h.id)
            _record(conn, h.id, now, "pending", detail if held is None else f"held for quiet hours until {iso(held)}")
    return new_ids


def enqueue_handoff(h: Handoff, now: float) -> Write:
    """A handoff into the outbox, as the engine's fires go there (an agent's `notify`), written with
    the result of the tool that made it; a second insert of the same id does nothing."""

    def write(conn: sqlite3.Connection) -> None:
        insert_handoffs(conn, [h], now, detail=f"from {h.trigger}")

    return write


def fired_at(conn: sqlite3.Connection, hid: str) -> str:
    (at,) = conn.execute("SELECT fired_at FROM handoffs WHERE id = ?", (hid,)).fetchone()
    return str(at)


# ---- delivery ---------------------------------------------------------------------------------------


def claim_due(conn: sqlite3.Connection, now: float, room: dict[str, int] | None, limit: int) -> list[Handoff]:
    """Move due handoffs to `delivering` and return them, at most `room[target]` per target (a target
    missing from `room` gets `limit`)."""
    # A plain read first: the dispatcher looks every few seconds, and an empty look should
    # not take the write lock.
    full = [t for t, n in (room or {}).items() if n <= 0]
    due = conn.execute(
        f"SELECT target FROM handoffs WHERE {_WAITING} AND next_attempt_at <= ? "
        f"AND target NOT IN ({','.join('?' * len(full))}) GROUP BY target",
        (now, *full),
    ).fetchall()
    if not due:
        return []
    claimed: list[Handoff] = []
    with Transaction(conn):
        for (target,) in due:
            take = min(limit, (room or {}).get(target, limit))
            rows = conn.execute(
                f"SELECT {_HANDOFF} FROM handoffs WHERE target = ? AND {_WAITING} "
                "AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?",
                (target, now, take),
            ).fetchall()
            claimed += [_handoff(r, state="delivering") for r in rows]
        for h in claimed:
            _transition(conn, h.id, "delivering", now, None)
    return claimed


def next_attempt_at(conn: sqlite3.Connection, room: dict[str, int] | None) -> float | None:
    """The earliest due time among targets that have room (a full one wakes the loop when it frees)."""
    full = [t for t, n in (room or {}).items() if n <= 0]
    row = conn.execute(
        f"SELECT MIN(next_attempt_at) FROM handoffs WHERE {_WAITING} AND target NOT IN ({','.join('?' * len(full))})",
        full,
    ).fetchone()
    return row[0] if row and row[0] is not None else None


def finish(
    conn: sqlite3.Connection, hid: str, state: str, now: float, detail: str | None, next_attempt_at: float | None
) -> None:
    with Transaction(conn):
        finish_within(conn, hid, state, now, detail, next_attempt_at)


def finish_within(
    conn: sqlite3.Connection, hid: str, state: str, now: float, detail: str | None, next_attempt_at: float | None
) -> None:
    """`finish` inside the caller's transaction."""
    _transition(conn, hid, state, now, detail, next_attempt_at=next_attempt_at)


def settle(
    conn: sqlite3.Connection, hid: str, state: str, now: float, detail: str | None, only_from: Iterable[str]
) -> str | None:
    """Move a handoff to `state` only while it is in one of `only_from`; the state it was in, None
    for an unknown id."""
    with Transaction(conn):
        row = conn.execute("SELECT state FROM handoffs WHERE id = ?", (hid,)).fetchone()
        if row is None:
            return None
        if row[0] in set(only_from):
            _transition(conn, hid, state, now, detail)
        return str(row[0])


def in_flight(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT id FROM handoffs WHERE state = 'delivering'")]


def requeue(conn: sqlite3.Connection, ids: Iterable[str], now: float, detail: str) -> int:
    """`delivering` → `retrying`, due now, with the same id; one that finished meanwhile is left alone."""
    n = 0
    with Transaction(conn):
        for hid in ids:
            row = conn.execute("SELECT state FROM handoffs WHERE id = ?", (hid,)).fetchone()
            if row and row[0] == "delivering":
                _transition(conn, hid, "retrying", now, detail, next_attempt_at=now)
                n += 1
    return n


def _transition(
    conn: sqlite3.Connection,
    hid: str,
    state: str,
    now: float,
    detail: str | None,
    *,
    next_attempt_at: float | None = None,
) -> None:
    bump = ", attempt = attempt + 1" if state == "retrying" else ""
    conn.execute(
        f"UPDATE handoffs SET state = ?, updated_at = ?, last_error = COALESCE(?, last_error), "
        f"next_attempt_at = COALESCE(?, next_attempt_at){bump} WHERE id = ?",
        (state, now, detail if state in ("failed", "retrying", "dead", "pending") else None, next_attempt_at, hid),
    )
    _record(conn, hid, now, state, detail)


def _record(conn: sqlite3.Connection, hid: str, now: float, state: str, detail: str | None) -> None:
    conn.execute("INSERT INTO transitions (handoff_id, at, state, detail) VALUES (?,?,?,?)", (hid, now, state, detail))


# ---- the deployment's queue (a cluster: watchd/handoff_queue.py) ----------------------------------

QUEUED = "queued"  # in the HANDOFFS stream, for whichever instance delivers
_SETTLED = ("delivered", "accepted", "done", "dead", "dropped")


def unqueued(conn: sqlite3.Connection, limit: int) -> list[tuple[Handoff, float, float]]:
    """Handoffs waiting here that are not in the deployment's queue yet, oldest first: (handoff, not
    before, updated at). Those this instance decided, and dead letters a user replayed."""
    rows = conn.execute(
        f"SELECT {_HANDOFF}, next_attempt_at, updated_at FROM handoffs WHERE queued_seq IS NULL AND {_WAITING} "
        "ORDER BY created_at, rowid LIMIT ?",
        (limit,),
    ).fetchall()
    return [(_handoff(r[:14]), r[14], r[15]) for r in rows]


def mark_queued(conn: sqlite3.Connection, queued: Iterable[tuple[str, int, str]], now: float, decided_by: str) -> None:
    """Each (id, seq, detail): the handoff is in the queue at `seq`. Its state says so unless a
    delivery (here, taken from the queue at once) already moved it on."""
    with Transaction(conn):
        for hid, seq, detail in queued:
            conn.execute(
                "UPDATE handoffs SET queued_seq = ?, decided_by = COALESCE(decided_by, ?) WHERE id = ?",
                (seq, decided_by, hid),
            )
            row = conn.execute("SELECT state FROM handoffs WHERE id = ?", (hid,)).fetchone()
            if row and row[0] in ("pending", "retrying"):
                _transition(conn, hid, QUEUED, now, detail)


def take_queued(conn: sqlite3.Connection, h: Handoff, seq: int, now: float, decided_by: str | None) -> tuple[str, int]:
    """Record a handoff taken from the queue (inserted when another instance decided it) and move it
    to `delivering`, unless it is settled here already. Returns the state it was in ("new" when it
    was not here) and its attempt."""
    with Transaction(conn):
        return take_queued_within(conn, h, seq, now, decided_by)


def take_queued_within(
    conn: sqlite3.Connection, h: Handoff, seq: int, now: float, decided_by: str | None
) -> tuple[str, int]:
    """`take_queued` inside the caller's transaction."""
    row = conn.execute("SELECT state, attempt FROM handoffs WHERE id = ?", (h.id,)).fetchone()
    if row is None:
        h.state = "pending"
        insert_handoffs(conn, [h], now, detail=f"from the deployment's queue (HANDOFFS seq {seq})")
        row = ("new", h.attempt)
    conn.execute(
        "UPDATE handoffs SET queued_seq = COALESCE(queued_seq, ?), decided_by = COALESCE(decided_by, ?) WHERE id = ?",
        (seq, decided_by, h.id),
    )
    if row[0] not in _SETTLED:
        _transition(conn, h.id, "delivering", now, None)
    return str(row[0]), int(row[1])


# ---- dead letters (`watchd dlq`) -------------------------------------------------------------------


def get_handoff(conn: sqlite3.Connection, hid: str) -> Handoff | None:
    row = conn.execute(f"SELECT {_HANDOFF} FROM handoffs WHERE id = ?", (hid,)).fetchone()
    return _handoff(row) if row else None


def find_handoff(conn: sqlite3.Connection, ref: str) -> Handoff:
    """A handoff by its id, or by an unambiguous prefix of it (ids are long to type)."""
    rows = conn.execute(f"SELECT {_HANDOFF} FROM handoffs WHERE id = ?", [ref]).fetchall()
    if not rows and len(ref) >= 4:
        rows = conn.execute(
            f"SELECT {_HANDOFF} FROM handoffs WHERE id LIKE ? ESCAPE '\\' LIMIT 2", [_starting_with(ref)]
        ).fetchall()
    if not rows:
        raise WatchdError(f"no handoff with id {ref!r}", hint="see dead letters and their ids with `watchd dlq list`")
    if len(rows) > 1:
        raise WatchdError(f"handoff id {ref!r} is ambiguous", hint="give more of the id; see `watchd dlq list`")
    return _handoff(rows[0])


def replay_dead(conn: sqlite3.Connection, ref: str, now: float) -> Handoff:
    """Send a dead (or dropped) handoff again, with the same id: `retrying`, due now, attempt 1.

    The same id keeps delivery deduplicated downstream. A running dispatcher sees it within its
    poll interval; a stopped one on start.
    """
    with Transaction(conn):
        h = find_handoff(conn, ref)
        if h.state not in ("dead", "dropped"):
            raise WatchdError(
                f"handoff {h.id} is {h.state}, not dead",
                hint="only dead (or dropped) handoffs can be replayed; see `watchd dlq list`",
            )
        conn.execute(
            "UPDATE handoffs SET state = 'retrying', attempt = 1, next_attempt_at = ?, updated_at = ?, "
            "queued_seq = NULL WHERE id = ?",
            (now, now, h.id),
        )
        _record(conn, h.id, now, "retrying", "replayed by user")
    return h


def drop_dead(conn: sqlite3.Connection, ref: str, now: float) -> Handoff:
    """Give up on a dead handoff for good: `dropped` is terminal and leaves the dead-letter list."""
    with Transaction(conn):
        h = find_handoff(conn, ref)
        if h.state != "dead":
            raise WatchdError(
                f"handoff {h.id} is {h.state}, not dead",
                hint="only dead handoffs can be dropped; see `watchd dlq list`",
            )
        conn.execute("UPDATE handoffs SET state = 'dropped', updated_at = ? WHERE id = ?", (now, h.id))
        _record(conn, h.id, now, "dropped", "dropped by user")
    return h


# ---- reading (status, explain, the heartbeat) ------------------------------------------------------


def read_handoffs(conn: sqlite3.Connection, state: str | None = None, limit: int = 1000) -> list[StoredHandoff]:
    """The latest handoffs (in `state`), newest first."""
    where, params = ("WHERE state = ?", [state]) if state else ("", [])
    rows = conn.execute(f"SELECT {_STORED} FROM handoffs {where} ORDER BY created_at DESC LIMIT ?", [*params, limit])
    return [_stored(r) for r in rows]


def handoff_rows(
    conn: sqlite3.Connection,
    watch: str,
    *,
    since: float | None = None,
    key: str | None = None,
    limit: int | None = None,
) -> list[HandoffRow]:
    """A watch's handoffs, oldest first: the latest `limit` (all when None), made since `since`, for `key`."""
    where, params = "watch = ?", list[object]([watch])
    if since is not None:
        where, params = where + " AND created_at >= ?", [*params, since]
    if key is not None:
        where, params = where + " AND key = ?", [*params, key]
    if limit is None:
        rows = conn.execute(f"SELECT {_ROW} FROM handoffs WHERE {where} ORDER BY created_at, rowid", params).fetchall()
    else:
        order = "ORDER BY created_at DESC, rowid DESC LIMIT ?"
        rows = conn.execute(f"SELECT {_ROW} FROM handoffs WHERE {where} {order}", [*params, limit]).fetchall()[::-1]
    return [HandoffRow(*r) for r in rows]


def count_by_state(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT state, COUNT(*) FROM handoffs GROUP BY state").fetchall())


def due_count(conn: sqlite3.Connection, now: float) -> int:
    """Handoffs waiting for a delivery whose time has come."""
    (n,) = conn.execute(f"SELECT COUNT(*) FROM handoffs WHERE {_WAITING} AND next_attempt_at <= ?", (now,)).fetchone()
    return int(n)


def delivering(conn: sqlite3.Connection) -> list[tuple[str, str, float]]:
    """(id, target, since) of every delivery under way."""
    return conn.execute("SELECT id, target, updated_at FROM handoffs WHERE state = 'delivering'").fetchall()


def dead_counts(conn: sqlite3.Connection, since: float) -> tuple[int, int]:
    """Dead letters: all of them, and those that died after `since`."""
    (total,) = conn.execute("SELECT COUNT(*) FROM handoffs WHERE state = 'dead'").fetchone()
    (new,) = conn.execute("SELECT COUNT(*) FROM handoffs WHERE state = 'dead' AND updated_at > ?", (since,)).fetchone()
    return int(total), int(new)


def pending_by_target(conn: sqlite3.Connection, error_prefix: str) -> dict[str, int]:
    """Per target, the pending handoffs whose last error starts with `error_prefix` (what they wait for)."""
    rows = conn.execute(
        "SELECT target, COUNT(*) FROM handoffs WHERE state = 'pending' AND last_error LIKE ? ESCAPE '\\' "
        "GROUP BY target",
        (_starting_with(error_prefix),),
    )
    return dict(rows.fetchall())


def release_waiting(conn: sqlite3.Connection, target: str, error_prefix: str, now: float, detail: str) -> int:
    """Make due now the pending handoffs to `target` that wait for what `error_prefix` names (a held
    release that was promoted or rolled back); each gets a transition saying why. How many."""
    with Transaction(conn):
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM handoffs WHERE target = ? AND state = 'pending' AND last_error LIKE ? ESCAPE '\\'",
                (target, _starting_with(error_prefix)),
            )
        ]
        for hid in ids:
            conn.execute("UPDATE handoffs SET next_attempt_at = ?, updated_at = ? WHERE id = ?", (now, now, hid))
            _record(conn, hid, now, "pending", detail)
    return len(ids)


# ---- rows ------------------------------------------------------------------------------------------


def _starting_with(prefix: str) -> str:
    """A LIKE pattern (with ESCAPE '\\') for text starting with `prefix`, taken literally."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _values(h: Handoff) -> tuple[Any, ...]:
    window, evidence = encode(h.window).decode(), encode(h.evidence).decode()
    return (
        h.id,
        h.watch,
        h.watch_version,
        h.kind,
        h.key,
        h.target,
        h.trigger,
        h.reason,
        h.fired_at,
        window,
        evidence,
        h.attempt,
        h.message,
        h.state,
    )


def _fields(r: Sequence[Any]) -> dict[str, Any]:
    return {
        "id": r[0],
        "watch": r[1],
        "watch_version": r[2],
        "kind": r[3],
        "key": r[4],
        "target": r[5],
        "trigger": r[6],
        "reason": r[7],
        "fired_at": r[8],
        "window": _window.decode(r[9]) if r[9] else None,
        "evidence": _evidence.decode(r[10]),
        "attempt": r[11],
        "message": r[12],
        "state": r[13],
    }


def _handoff(r: Sequence[Any], state: str | None = None) -> Handoff:
    fields = _fields(r)
    if state is not None:
        fields["state"] = state
    return Handoff(**fields)


def _stored(r: Sequence[Any]) -> StoredHandoff:
    return StoredHandoff(**_fields(r), created_at=r[14], updated_at=r[15], next_attempt_at=r[16], last_error=r[17])


def count_by_target_state(conn: sqlite3.Connection) -> list[tuple[str, str, int]]:
    """(target, state, handoffs) for every pair that has any: the `/metrics` gauge."""
    return conn.execute("SELECT target, state, COUNT(*) FROM handoffs GROUP BY target, state").fetchall()
