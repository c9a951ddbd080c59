"""The `meta` table: small named values (the last stream sequence, the engine's clock, what the
heartbeat and the canary last saw)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping

_UPSERT = "INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v"


def get_meta(conn: sqlite3.Connection, k: str, default: str | None = None) -> str | None:
    row = conn.execute("SELECT v FROM meta WHERE k = ?", (k,)).fetchone()
    return row[0] if row else default


def metas_starting(conn: sqlite3.Connection, prefix: str) -> list[tuple[str, str]]:
    """Every (k, v) whose name starts with `prefix` (compared as text: no LIKE wildcards)."""
    return conn.execute("SELECT k, v FROM meta WHERE substr(k, 1, ?) = ?", (len(prefix), prefix)).fetchall()


def get_float(conn: sqlite3.Connection, k: str) -> float | None:
    v = get_meta(conn, k)
    return None if v is None else float(v)


def set_meta(conn: sqlite3.Connection, k: str, v: str) -> None:
    conn.execute(_UPSERT, (k, v))


def set_metas(conn: sqlite3.Connection, values: Mapping[str, str]) -> None:
    conn.executemany(_UPSERT, values.items())


def last_seq(conn: sqlite3.Connection, cursor_key: str = "last_seq") -> int:
    """The last stream sequence whose effects are stored: a redelivery at or below it is skipped.
    `cursor_key`: one shard's (watchd/shards.py)."""
    return int(get_meta(conn, cursor_key, "0") or 0)
