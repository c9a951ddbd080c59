"""The queue of an agent's Message Batches requests (`agent_batches`), one row per handoff:
`queued` → `submitted` (in a batch) → `done` or `failed`."""

from __future__ import annotations

import sqlite3
from typing import Any

import msgspec

from watchd.model import encode
from watchd.store.db import Transaction


def queue_batch_item(conn: sqlite3.Connection, handoff_id: str, agent: str, params: dict[str, Any], now: float) -> str:
    """Queue a request (again, after a failed batch); returns its state: queued, submitted or done."""
    with Transaction(conn):
        row = conn.execute("SELECT state FROM agent_batches WHERE handoff_id = ?", (handoff_id,)).fetchone()
        if row is not None and row[0] in ("queued", "submitted", "done"):
            return str(row[0])
        conn.execute(
            "INSERT OR REPLACE INTO agent_batches VALUES (?, ?, NULL, 'queued', ?, ?, ?)",
            (handoff_id, agent, encode(params).decode(), now, now),
        )
    return "queued"


def queued_items(conn: sqlite3.Connection, agent: str) -> list[tuple[str, dict[str, Any]]]:
    """(handoff id, request params) of the agent's queued requests, oldest first."""
    rows = conn.execute(
        "SELECT handoff_id, params FROM agent_batches WHERE agent = ? AND state = 'queued' ORDER BY queued_at", (agent,)
    )
    return [(hid, msgspec.json.decode(params)) for hid, params in rows]


def submitted_items(conn: sqlite3.Connection) -> list[tuple[str, dict[str, Any]]]:
    """(agent, params) of every request in a batch whose results have not been settled yet."""
    rows = conn.execute("SELECT agent, params FROM agent_batches WHERE state = 'submitted'")
    return [(agent, msgspec.json.decode(params)) for agent, params in rows]


def mark_submitted(conn: sqlite3.Connection, handoff_ids: list[str], batch_id: str, now: float) -> None:
    with Transaction(conn):
        conn.executemany(
            "UPDATE agent_batches SET state = 'submitted', batch_id = ?, updated_at = ? WHERE handoff_id = ?",
            [(batch_id, now, hid) for hid in handoff_ids],
        )


def open_batches(conn: sqlite3.Connection, agent: str) -> list[str]:
    """The agent's batches with results not collected yet."""
    rows = conn.execute("SELECT DISTINCT batch_id FROM agent_batches WHERE agent = ? AND state = 'submitted'", (agent,))
    return [r[0] for r in rows]


def set_batch_item(conn: sqlite3.Connection, handoff_id: str, state: str, now: float) -> None:
    conn.execute("UPDATE agent_batches SET state = ?, updated_at = ? WHERE handoff_id = ?", (state, now, handoff_id))
