"""Schedules and their ticks (`schedules`, `schedule_ticks`).

A tick is claimed by inserting its row (the primary key is the tick key) with INSERT OR IGNORE: a
restart, a second process or an overlapping wake-up can never run one tick twice.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from watchd.cron.ticks import State
from watchd.store.db import Transaction

_TICK_COLUMNS = "key, schedule, version, tick_at, state, reason, started_at, ended_at, summary, data"


class TickClaim(NamedTuple):
    """A tick's row as it is claimed: `started` (a run) or `skipped` (with its reason)."""

    key: str
    schedule: str
    version: int
    tick_at: float
    state: str
    reason: str | None
    started_at: float
    summary: str | None
    data: str | None  # JSON


@dataclass(frozen=True)
class TickRow:
    """A tick handled: started, done, failed, or skipped with its reason."""

    key: str
    schedule: str
    version: int
    tick_at: float
    state: str
    reason: str | None
    started_at: float | None
    ended_at: float | None
    summary: str | None
    data: str | None  # JSON: the job's data, or a skip's count


def sync_definitions(conn: sqlite3.Connection, digests: dict[str, str], now: float) -> dict[str, tuple[int, State]]:
    """Version (a counter bumped when a schedule's content hash changes) and State of each schedule."""
    out: dict[str, tuple[int, State]] = {}
    with Transaction(conn):
        for name, digest in digests.items():
            row = conn.execute("SELECT digest, version, since FROM schedules WHERE name = ?", (name,)).fetchone()
            if row and row[0] == digest:
                version, since = int(row[1]), float(row[2])
            else:
                version, since = (int(row[1]) + 1 if row else 1), now
                conn.execute(
                    "INSERT INTO schedules (name, digest, version, since) VALUES (?, ?, ?, ?) ON CONFLICT(name) "
                    "DO UPDATE SET digest = excluded.digest, version = excluded.version, since = excluded.since",
                    (name, digest, version, since),
                )
            out[name] = (version, State(since))
    return {name: (v, _refresh(conn, name, st)) for name, (v, st) in out.items()}


def refresh(conn: sqlite3.Connection, states: Iterable[tuple[str, State]]) -> list[State]:
    """Each (schedule, state) with the last tick handled and the last completion as stored (another
    process may have moved them)."""
    return [_refresh(conn, name, state) for name, state in states]


def _refresh(conn: sqlite3.Connection, name: str, state: State) -> State:
    (last,) = conn.execute("SELECT MAX(tick_at) FROM schedule_ticks WHERE schedule = ?", (name,)).fetchone()
    row = conn.execute("SELECT completed_at FROM schedules WHERE name = ?", (name,)).fetchone()
    done = row[0] if row else None
    return State(
        state.since,
        max(x for x in (last, state.last_tick) if x is not None) if (last or state.last_tick) is not None else None,
        max(x for x in (done, state.completed_at) if x is not None) if (done or state.completed_at) else None,
    )


def claim(conn: sqlite3.Connection, rows: Iterable[TickClaim]) -> list[bool]:
    """Insert each tick's row unless it exists, in one transaction; True where this call inserted
    it, i.e. owns the tick."""
    owned: list[bool] = []
    with Transaction(conn):
        for r in rows:
            cur = conn.execute(
                "INSERT OR IGNORE INTO schedule_ticks (key, schedule, version, tick_at, state, reason, started_at, "
                "summary, data) VALUES (?,?,?,?,?,?,?,?,?)",
                r,
            )
            owned.append(cur.rowcount == 1)
    return owned


def finish(
    conn: sqlite3.Connection,
    key: str,
    name: str,
    ok: bool,
    ended_at: float,
    reason: str | None,
    summary: str,
    data: bytes,
) -> None:
    with Transaction(conn):
        conn.execute(
            "UPDATE schedule_ticks SET state = ?, reason = ?, ended_at = ?, summary = ?, data = ? WHERE key = ?",
            ("done" if ok else "failed", reason, ended_at, summary, data.decode(), key),
        )
        if reason != "interrupted":  # `every` counts from a run that ended, not one cut off by a restart
            conn.execute(
                "UPDATE schedules SET completed_at = MAX(COALESCE(completed_at, 0), ?) WHERE name = ?", (ended_at, name)
            )


def recover_interrupted(conn: sqlite3.Connection, now: float) -> list[tuple[str, str, float, float]]:
    """Runs left `started` by a watchd that died: failed, "interrupted by restart". Returns
    (key, schedule, tick_at, started_at) of each."""
    rows = conn.execute("SELECT key, schedule, tick_at, started_at FROM schedule_ticks WHERE state = 'started'")
    found = [(str(k), str(s), float(t), float(st or now)) for k, s, t, st in rows.fetchall()]
    if found:
        conn.execute(
            "UPDATE schedule_ticks SET state = 'failed', reason = 'interrupted', ended_at = ?, "
            "summary = 'interrupted by restart' WHERE state = 'started'",
            (now,),
        )
    return found


def prune(conn: sqlite3.Connection, before: float) -> int:
    """Old rows go, except each schedule's latest (it says which tick was handled last)."""
    cur = conn.execute(
        "DELETE FROM schedule_ticks WHERE tick_at < ? AND state != 'started' AND tick_at < "
        "(SELECT MAX(t.tick_at) FROM schedule_ticks t WHERE t.schedule = schedule_ticks.schedule)",
        (before,),
    )
    return int(cur.rowcount)


def stored_states(conn: sqlite3.Connection) -> dict[str, tuple[int, State]]:
    """(version, State) of every schedule the state db knows."""
    last = dict(conn.execute("SELECT schedule, MAX(tick_at) FROM schedule_ticks GROUP BY schedule").fetchall())
    rows = conn.execute("SELECT name, version, since, completed_at FROM schedules").fetchall()
    return {name: (version, State(since, last.get(name), done)) for name, version, since, done in rows}


def ticks_of(conn: sqlite3.Connection, name: str, limit: int) -> list[TickRow]:
    """A schedule's latest `limit` ticks, oldest first."""
    rows = conn.execute(
        f"SELECT {_TICK_COLUMNS} FROM schedule_ticks WHERE schedule = ? ORDER BY tick_at DESC, started_at DESC LIMIT ?",
        (name, limit),
    ).fetchall()
    return [TickRow(*r) for r in reversed(rows)]
