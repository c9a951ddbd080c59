"""The `watchd worker`'s own small database: the handoffs it finished, so that one redelivered after
a crash between the `done` reply and the ack is answered `done` again and never run twice."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from watchd.store.writer import SqliteThread


class DoneRecord(SqliteThread):
    """Handoff ids finished here, with what `done` said: one row per handoff. Every write waits for
    the disk (synchronous=FULL), so the statements run on the record's own thread, never on the
    event loop where the other handoffs' replies and acks are waiting."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        super().__init__(
            sqlite3.connect(path, isolation_level=None, check_same_thread=False), thread_name="watchd-worker-record"
        )
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")  # a `done` must outlive a power loss: it guards a re-run
        self.conn.execute("CREATE TABLE IF NOT EXISTS done (id TEXT PRIMARY KEY, detail TEXT NOT NULL, at REAL)")

    @classmethod
    async def open(cls, path: Path) -> DoneRecord:
        return await asyncio.to_thread(cls, path)

    async def get(self, handoff_id: str) -> str | None:
        return await self.call(get_done, handoff_id)

    async def put(self, handoff_id: str, detail: str, now: float) -> None:
        await self.call(put_done, handoff_id, detail, now)

    async def prune(self, older_than: float) -> int:
        return await self.call(prune_done, older_than)


def get_done(conn: sqlite3.Connection, handoff_id: str) -> str | None:
    row = conn.execute("SELECT detail FROM done WHERE id = ?", (handoff_id,)).fetchone()
    return None if row is None else str(row[0])


def put_done(conn: sqlite3.Connection, handoff_id: str, detail: str, now: float) -> None:
    conn.execute("INSERT OR REPLACE INTO done (id, detail, at) VALUES (?, ?, ?)", (handoff_id, detail, now))


def prune_done(conn: sqlite3.Connection, older_than: float) -> int:
    return int(conn.execute("DELETE FROM done WHERE at < ?", (older_than,)).rowcount)
