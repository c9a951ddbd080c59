"""Agents' state across runs (`agent_state`) and the checkpoints of runs that stopped with work left
(`agent_checkpoints`).

A state document is JSON an agent keeps from one run to the next (yesterday's baseline). It is named by
its agent and, for `state = "per-key"`, the watch and key of the handoff; `state = "agent"` keeps one per
agent (watch and key stored as ""). Every write is a new version and every version is kept. A write made
by a tool carries the tool call's key (`write_id`), so a step resumed after a crash stores it once.

A checkpoint says that a run of this agent for this watch and key closed its envelope (a step, token or
time cap) before it was done: the next handoff for the same watch and key resumes that conversation
instead of starting over, and marks the checkpoint `resumed_by` itself.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

import msgspec

from watchd.model import encode
from watchd.store.db import Transaction, Write


@dataclass(frozen=True)
class Scope:
    agent: str  # "agent.<name>"
    watch: str = ""
    key: str = ""

    def describe(self) -> str:
        if not self.watch and not self.key:
            return self.agent
        return f"{self.agent} for {self.watch}" + (f" key {self.key}" if self.key else "")


@dataclass(frozen=True)
class StateVersion:
    scope: Scope
    version: int
    doc: Any
    at: float
    handoff_id: str | None
    note: str | None


@dataclass(frozen=True)
class Checkpoint:
    handoff_id: str
    run_id: str
    limit_hit: str
    at: float


_COLUMNS = "agent, watch, key, version, doc, at, handoff_id, note"


def _version(row: tuple[Any, ...]) -> StateVersion:
    agent, watch, key, version, doc, at, handoff_id, note = row
    return StateVersion(Scope(agent, watch, key), version, msgspec.json.decode(doc), at, handoff_id, note)


def current(conn: sqlite3.Connection, scope: Scope) -> StateVersion | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM agent_state WHERE agent = ? AND watch = ? AND key = ? ORDER BY version DESC LIMIT 1",
        (scope.agent, scope.watch, scope.key),
    ).fetchone()
    return _version(row) if row else None


def version(conn: sqlite3.Connection, scope: Scope, n: int) -> StateVersion | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM agent_state WHERE agent = ? AND watch = ? AND key = ? AND version = ?",
        (scope.agent, scope.watch, scope.key, n),
    ).fetchone()
    return _version(row) if row else None


def versions(conn: sqlite3.Connection, scope: Scope) -> list[StateVersion]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM agent_state WHERE agent = ? AND watch = ? AND key = ? ORDER BY version",
        (scope.agent, scope.watch, scope.key),
    ).fetchall()
    return [_version(r) for r in rows]


def scopes(conn: sqlite3.Connection, agent: str | None = None) -> list[tuple[Scope, int, float]]:
    """Each state document (of `agent`, or of every agent): its scope, latest version and when that was written."""
    where, params = ("WHERE agent = ?", (agent,)) if agent is not None else ("", ())
    rows = conn.execute(
        f"SELECT agent, watch, key, MAX(version), MAX(at) FROM agent_state {where} GROUP BY agent, watch, key "
        "ORDER BY agent, watch, key",
        params,
    ).fetchall()
    return [(Scope(a, w, k), v, at) for a, w, k, v, at in rows]


def _insert(
    conn: sqlite3.Connection,
    scope: Scope,
    doc: Any,
    now: float,
    handoff_id: str | None,
    write_id: str | None,
    note: str | None,
) -> None:
    (last,) = conn.execute(
        "SELECT COALESCE(MAX(version), 0) FROM agent_state WHERE agent = ? AND watch = ? AND key = ?",
        (scope.agent, scope.watch, scope.key),
    ).fetchone()
    conn.execute(
        "INSERT OR IGNORE INTO agent_state (agent, watch, key, version, doc, at, handoff_id, write_id, note) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (scope.agent, scope.watch, scope.key, last + 1, encode(doc).decode(), now, handoff_id, write_id, note),
    )


def write_version(
    scope: Scope, doc: Any, now: float, *, handoff_id: str | None, write_id: str | None, note: str | None = None
) -> Write:
    """A new version, as a write inside the caller's transaction (a tool's result); stored once per `write_id`."""

    def write(conn: sqlite3.Connection) -> None:
        _insert(conn, scope, doc, now, handoff_id, write_id, note)

    return write


def put_version(
    conn: sqlite3.Connection,
    scope: Scope,
    doc: Any,
    now: float,
    *,
    handoff_id: str | None,
    write_id: str | None = None,
    note: str | None = None,
) -> StateVersion:
    with Transaction(conn):
        _insert(conn, scope, doc, now, handoff_id, write_id, note)
    found = current(conn, scope)
    assert found is not None
    return found


def open_checkpoint(conn: sqlite3.Connection, agent: str, watch: str, key: str) -> Checkpoint | None:
    """The newest checkpoint of a run for this watch and key that nothing has resumed yet."""
    row = conn.execute(
        "SELECT handoff_id, run_id, limit_hit, at FROM agent_checkpoints WHERE agent = ? AND watch = ? AND key = ? "
        "AND resumed_by IS NULL ORDER BY at DESC, rowid DESC LIMIT 1",
        (agent, watch, key),
    ).fetchone()
    return Checkpoint(*row) if row else None


def add_checkpoint(
    conn: sqlite3.Connection, agent: str, watch: str, key: str, handoff_id: str, run_id: str, limit: str, now: float
) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO agent_checkpoints (agent, watch, key, handoff_id, run_id, limit_hit, at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (agent, watch, key, handoff_id, run_id, limit, now),
    )


def resume_checkpoint(agent: str, watch: str, key: str, handoff_id: str, by: str) -> Write:
    """Mark a checkpoint resumed by handoff `by` (inside the transaction that records the resumed step)."""

    def write(conn: sqlite3.Connection) -> None:
        conn.execute(
            "UPDATE agent_checkpoints SET resumed_by = ? WHERE agent = ? AND watch = ? AND key = ? AND handoff_id = ?",
            (by, agent, watch, key, handoff_id),
        )

    return write


def checkpoint_of(conn: sqlite3.Connection, handoff_id: str) -> tuple[str, str | None] | None:
    """(limit, resumed_by) when the run of this handoff stopped with work left and was checkpointed."""
    row = conn.execute(
        "SELECT limit_hit, resumed_by FROM agent_checkpoints WHERE handoff_id = ? ORDER BY at DESC LIMIT 1",
        (handoff_id,),
    ).fetchone()
    return (row[0], row[1]) if row else None
