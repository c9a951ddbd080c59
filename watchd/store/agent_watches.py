"""Follow-up watches agents created (`agent_watches`): engine definitions until they expire."""

from __future__ import annotations

import hashlib
import sqlite3

import msgspec

from watchd.config import Watch, WatchDef
from watchd.model import encode
from watchd.store.db import Write

_watch = msgspec.json.Decoder(Watch)


def add_watch(watch: Watch, agent: str, handoff_id: str, now: float, expires_at: float) -> Write:
    """The write that stores a follow-up watch, made with the result of the tool that asked for it."""

    def write(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT OR IGNORE INTO agent_watches VALUES (?, ?, ?, ?, ?, ?)",
            (watch.id, agent, handoff_id, encode(watch).decode(), now, expires_at),
        )

    return write


def active_watch_defs(conn: sqlite3.Connection, now: float) -> list[WatchDef]:
    """Follow-up watches agents created that have not expired, as definitions for the engine."""
    defs = []
    rows = conn.execute(
        "SELECT definition, agent, handoff_id FROM agent_watches WHERE expires_at > ? ORDER BY created_at", (now,)
    )
    for definition, agent, handoff_id in rows:
        watch = _watch.decode(definition)
        digest = hashlib.sha256(definition.encode()).hexdigest()[:16]
        defs.append(WatchDef(watch, f"{agent} (handoff {handoff_id})", 0, digest))
    return defs


def next_watch_expiry(conn: sqlite3.Connection, now: float) -> float | None:
    row = conn.execute("SELECT MIN(expires_at) FROM agent_watches WHERE expires_at > ?", (now,)).fetchone()
    return float(row[0]) if row and row[0] is not None else None
