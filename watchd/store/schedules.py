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
from watchd.errors import WatchdError
from watchd.store.db import Transaction

_TICK_COLUMNS = (
    "key, schedule, version, tick_at, state, reason, started_at, ended_at, summary, data, trigger, attempt, "
    "next_attempt_at, payload"
)
# A state file the daemon has not opened since these columns came (read by a newer command line).
_LEGACY_COLUMNS = (
    "key, schedule, version, tick_at, state, reason, started_at, ended_at, summary, data, 'schedule', 1, NULL, NULL"
)
# Which rows say how far a schedule's own ticks got: a manual run or one after an upstream is not a tick.
_OWN = "trigger = 'schedule'"
# States a row is kept in whatever its age: under way, waiting, or a dead letter to replay or drop.
_KEPT = "('started', 'retrying', 'waiting', 'dead')"
FINAL = frozenset({"done", "failed", "dead"})


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
    trigger: str = "schedule"
    payload: str | None = None  # JSON: what a retry of the run needs (Run's trigger, by, period, upstream)


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
    trigger: str = "schedule"  # schedule | manual | after
    attempt: int = 1
    next_attempt_at: float | None = None  # retrying: when
    payload: str | None = None  # JSON: trigger, by, period_start, period_end, upstream


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
    process may have moved them). Two statements a chunk of schedules, not two a schedule: 1,000
    schedules due together are read at each of their minutes."""
    states = list(states)
    names = list(dict.fromkeys(name for name, _ in states))
    last: dict[str, float | None] = {}
    done: dict[str, float | None] = {}
    for i in range(0, len(names), _CHUNK):
        chunk = names[i : i + _CHUNK]
        marks = ",".join("?" * len(chunk))
        last.update(
            conn.execute(
                f"SELECT schedule, MAX(tick_at) FROM schedule_ticks WHERE schedule IN ({marks}) AND {_OWN} "
                "GROUP BY schedule",
                chunk,
            )
        )
        done.update(conn.execute(f"SELECT name, completed_at FROM schedules WHERE name IN ({marks})", chunk))
    return [_merged(state, last.get(name), done.get(name)) for name, state in states]


_CHUNK = 500  # names bound in one statement (SQLite allows 32,766 parameters; older builds 999)


def _refresh(conn: sqlite3.Connection, name: str, state: State) -> State:
    (last,) = conn.execute(f"SELECT MAX(tick_at) FROM schedule_ticks WHERE schedule = ? AND {_OWN}", (name,)).fetchone()
    row = conn.execute("SELECT completed_at FROM schedules WHERE name = ?", (name,)).fetchone()
    return _merged(state, last, row[0] if row else None)


def _merged(state: State, last: float | None, done: float | None) -> State:
    """The state with the stored last tick and completion, whichever is later."""
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
                "summary, data, trigger, payload) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
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
    *,
    state: str | None = None,
    next_attempt_at: float | None = None,
    payload: str | None = None,
) -> None:
    """A run's attempt ended: `done`, `failed`, or (`state`) `retrying` at `next_attempt_at` or `dead`."""
    with Transaction(conn):
        conn.execute(
            "UPDATE schedule_ticks SET state = ?, reason = ?, ended_at = ?, summary = ?, data = ?, "
            "next_attempt_at = ?, payload = COALESCE(?, payload) WHERE key = ?",
            (
                state or ("done" if ok else "failed"),
                reason,
                ended_at,
                summary,
                data.decode(),
                next_attempt_at,
                payload,
                key,
            ),
        )
        if reason != "interrupted":  # `every` counts from a run that ended, not one cut off by a restart
            conn.execute(
                "UPDATE schedules SET completed_at = MAX(COALESCE(completed_at, 0), ?) WHERE name = ?", (ended_at, name)
            )


def recover_interrupted(conn: sqlite3.Connection, now: float) -> list[tuple[str, str, float, float, int]]:
    """Runs left `started` by a watchd that died: failed, "interrupted by restart". Returns
    (key, schedule, tick_at, started_at, attempt) of each."""
    rows = conn.execute(
        "SELECT key, schedule, tick_at, started_at, attempt FROM schedule_ticks WHERE state = 'started'"
    )
    found = [(str(k), str(s), float(t), float(st or now), int(a)) for k, s, t, st, a in rows.fetchall()]
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
        f"DELETE FROM schedule_ticks WHERE tick_at < ? AND state NOT IN {_KEPT} AND tick_at < "
        f"(SELECT MAX(t.tick_at) FROM schedule_ticks t WHERE t.schedule = schedule_ticks.schedule AND t.{_OWN})",
        (before,),
    )
    return int(cur.rowcount)


def _legacy(conn: sqlite3.Connection) -> bool:
    """A state file from before runs had a trigger and attempts (its daemon has not started since)."""
    return "trigger" not in {row[1] for row in conn.execute("PRAGMA table_info(schedule_ticks)")}


def stored_states(conn: sqlite3.Connection) -> dict[str, tuple[int, State]]:
    """(version, State) of every schedule the state db knows."""
    own = "1 = 1" if _legacy(conn) else _OWN
    sql = f"SELECT schedule, MAX(tick_at) FROM schedule_ticks WHERE {own} GROUP BY schedule"
    last = dict(conn.execute(sql).fetchall())
    rows = conn.execute("SELECT name, version, since, completed_at FROM schedules").fetchall()
    return {name: (version, State(since, last.get(name), done)) for name, version, since, done in rows}


def ticks_of(conn: sqlite3.Connection, name: str, limit: int) -> list[TickRow]:
    """A schedule's latest `limit` ticks, oldest first."""
    rows = conn.execute(
        f"SELECT {_LEGACY_COLUMNS if _legacy(conn) else _TICK_COLUMNS} FROM schedule_ticks WHERE schedule = ? "
        "ORDER BY tick_at DESC, started_at DESC LIMIT ?",
        (name, limit),
    ).fetchall()
    return [TickRow(*r) for r in reversed(rows)]


def tick_row(conn: sqlite3.Connection, key: str) -> TickRow | None:
    row = conn.execute(f"SELECT {_TICK_COLUMNS} FROM schedule_ticks WHERE key = ?", (key,)).fetchone()
    return TickRow(*row) if row else None


def rows_at(conn: sqlite3.Connection, names: Iterable[str], tick_at: float) -> list[TickRow]:
    """The rows of these schedules for the tick at `tick_at` (their own ticks' runs)."""
    names = list(names)
    marks = ",".join("?" * len(names))
    sql = (
        f"SELECT {_TICK_COLUMNS} FROM schedule_ticks WHERE schedule IN ({marks}) AND abs(tick_at - ?) < 0.0005 "
        "ORDER BY started_at"
    )
    return [TickRow(*r) for r in conn.execute(sql, (*names, tick_at)).fetchall()]


def retrying(conn: sqlite3.Connection) -> list[TickRow]:
    """Runs waiting for their next attempt (a restart picks them up)."""
    sql = f"SELECT {_TICK_COLUMNS} FROM schedule_ticks WHERE state = 'retrying' ORDER BY next_attempt_at"
    return [TickRow(*r) for r in conn.execute(sql).fetchall()]


def start_attempt(conn: sqlite3.Connection, key: str, now: float) -> int | None:
    """Claim a retrying run's next attempt: its number, or None when another process took it."""
    with Transaction(conn):
        cur = conn.execute(
            "UPDATE schedule_ticks SET state = 'started', started_at = ?, ended_at = NULL, attempt = attempt + 1, "
            "next_attempt_at = NULL WHERE key = ? AND state = 'retrying'",
            (now, key),
        )
        if cur.rowcount != 1:
            return None
        (attempt,) = conn.execute("SELECT attempt FROM schedule_ticks WHERE key = ?", (key,)).fetchone()
    return int(attempt)


def retry_interrupted(conn: sqlite3.Connection, key: str, at: float) -> None:
    """A run a restart cut off, with attempts left: its next attempt is due at `at`."""
    conn.execute(
        "UPDATE schedule_ticks SET state = 'retrying', next_attempt_at = ? WHERE key = ? AND state = 'failed'",
        (at, key),
    )


def claim_after(conn: sqlite3.Connection, row: TickClaim) -> bool:
    """Claim a run after an upstream: a new row, or one that was waiting for the upstream or had
    given up on it (the upstream, replayed, now ended as asked). False when it ran already."""
    with Transaction(conn):
        if conn.execute(
            "INSERT OR IGNORE INTO schedule_ticks (key, schedule, version, tick_at, state, reason, started_at, "
            "summary, data, trigger, payload) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            row,
        ).rowcount:
            return True
        cur = conn.execute(
            "UPDATE schedule_ticks SET state = ?, reason = ?, started_at = ?, summary = ?, payload = ?, attempt = 1, "
            "ended_at = NULL WHERE key = ? AND state IN ('waiting', 'skipped')",
            (row.state, row.reason, row.started_at, row.summary, row.payload, row.key),
        )
        return cur.rowcount == 1


def set_waiting_or_skipped(conn: sqlite3.Connection, row: TickClaim) -> bool:
    """A run after an upstream that waits for it (`waiting`) or gave up on it (`skipped`): the row
    is written unless the run already started or ended. True when written."""
    with Transaction(conn):
        if conn.execute(
            "INSERT OR IGNORE INTO schedule_ticks (key, schedule, version, tick_at, state, reason, started_at, "
            "summary, data, trigger, payload) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            row,
        ).rowcount:
            return True
        cur = conn.execute(
            "UPDATE schedule_ticks SET state = ?, reason = ?, summary = ?, ended_at = ? WHERE key = ? "
            "AND state IN ('waiting', 'skipped')",
            (row.state, row.reason, row.summary, row.started_at if row.state == "skipped" else None, row.key),
        )
        return cur.rowcount == 1


def count_dead_runs(conn: sqlite3.Connection) -> int:
    """Scheduled runs that are dead letters (for `status`); 0 for a state file older than the table."""
    try:
        (n,) = conn.execute("SELECT COUNT(*) FROM schedule_ticks WHERE state = 'dead'").fetchone()
    except sqlite3.Error:  # a state file from before the cron layer
        return 0
    return int(n)


def dead_runs(conn: sqlite3.Connection, limit: int) -> list[TickRow]:
    """Scheduled runs that exhausted their retries, newest first."""
    sql = f"SELECT {_TICK_COLUMNS} FROM schedule_ticks WHERE state = 'dead' ORDER BY ended_at DESC LIMIT ?"
    return [TickRow(*r) for r in conn.execute(sql, (limit,)).fetchall()]


def find_dead_run(conn: sqlite3.Connection, ref: str) -> TickRow:
    """The dead run whose key is `ref` or starts with it; WatchdError when none or several."""
    pattern = ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    rows = conn.execute(
        f"SELECT {_TICK_COLUMNS} FROM schedule_ticks WHERE key LIKE ? ESCAPE '\\' AND state IN ('dead', 'dropped')",
        (pattern,),
    ).fetchall()
    if not rows:
        raise WatchdError(f"no dead scheduled run {ref!r}", hint="`watchd dlq list` shows the dead letters")
    if len(rows) > 1:
        raise WatchdError(f"{ref!r} names {len(rows)} dead runs", hint="give more of the id")
    return TickRow(*rows[0])


def replay_dead_run(conn: sqlite3.Connection, ref: str, now: float) -> TickRow:
    """A dead (or dropped) run runs again with the same key, from attempt 1, at once."""
    row = find_dead_run(conn, ref)
    with Transaction(conn):
        conn.execute(
            "UPDATE schedule_ticks SET state = 'retrying', attempt = 0, next_attempt_at = ? WHERE key = ?",
            (now, row.key),
        )
    return row


def drop_dead_run(conn: sqlite3.Connection, ref: str, now: float) -> TickRow:
    row = find_dead_run(conn, ref)
    with Transaction(conn):
        conn.execute("UPDATE schedule_ticks SET state = 'dropped', ended_at = ? WHERE key = ?", (now, row.key))
    return row
