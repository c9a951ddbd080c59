"""The `decisions` table: what the engine decided and why, kept for `explain` and `status`, bounded
by age and count."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from watchd.engine import Decision, Verdict
from watchd.store.meta import get_float, get_meta, set_meta

_COLUMNS = "at, watch, key, verdict, reason, event_id, seq, n"
KEPT_FROM = "decisions_kept_from"  # meta: before this instant, pruning has removed decisions


def insert_decisions(conn: sqlite3.Connection, decisions: Iterable[Decision]) -> None:
    conn.executemany(
        f"INSERT INTO decisions ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)",
        ((d.at, d.watch, d.key, d.verdict, d.reason, d.event_id, d.seq, d.n) for d in decisions),
    )


def prune_decisions(conn: sqlite3.Connection, older_than: float, keep_rows: int) -> int:
    """Remove decisions before `older_than`, and all but the last `keep_rows`; the caller holds a
    transaction. Returns how many went, and records from when on decisions are complete."""
    removed = conn.execute("DELETE FROM decisions WHERE at < ?", (older_than,)).rowcount
    cutoff = older_than if removed else None  # before it, nothing is kept: explain says so
    row = conn.execute("SELECT MAX(id) FROM decisions").fetchone()
    if row and row[0] is not None:
        last_id = row[0] - keep_rows
        edge = conn.execute("SELECT MAX(at) FROM decisions WHERE id <= ?", (last_id,)).fetchone()
        by_count = conn.execute("DELETE FROM decisions WHERE id <= ?", (last_id,)).rowcount
        if by_count and edge[0] is not None:
            cutoff = max(cutoff or edge[0], edge[0])
        removed += by_count
    if cutoff is not None and cutoff > float(get_meta(conn, KEPT_FROM, "0") or 0):
        set_meta(conn, KEPT_FROM, repr(cutoff))
    return int(removed)


def decisions_kept_from(conn: sqlite3.Connection) -> float | None:
    """Before this instant decisions have been pruned (None: nothing was)."""
    return get_float(conn, KEPT_FROM)


def watch_decisions(
    conn: sqlite3.Connection, watch: str, since: float | None, key: str | None, limit: int
) -> tuple[list[Decision], dict[str, int]]:
    """A watch's latest `limit` decisions (oldest first), narrowed by `since` and `key`, and the
    totals per verdict over all of them (misses count `n` each)."""
    where, params = "watch = ?", list[object]([watch])
    if since is not None:
        where, params = where + " AND at >= ?", [*params, since]
    if key is not None:
        where, params = where + " AND key = ?", [*params, key]
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM decisions WHERE {where} ORDER BY at DESC, id DESC LIMIT ?", [*params, limit]
    ).fetchall()
    totals = dict(conn.execute(f"SELECT verdict, SUM(n) FROM decisions WHERE {where} GROUP BY verdict", params))
    return [_decision(r) for r in reversed(rows)], totals


def event_decisions(conn: sqlite3.Connection, event_id: str) -> list[Decision]:
    rows = conn.execute(f"SELECT {_COLUMNS} FROM decisions WHERE event_id = ? ORDER BY at, id", [event_id])
    return [_decision(r) for r in rows]


def last_fired(conn: sqlite3.Connection) -> dict[str, float]:
    """When each watch last fired (or would have, in shadow mode)."""
    rows = conn.execute(
        "SELECT watch, MAX(at) FROM decisions WHERE verdict IN (?, ?) GROUP BY watch",
        (Verdict.FIRED, Verdict.WOULD_FIRE),
    )
    return dict(rows.fetchall())


def would_fire_since(conn: sqlite3.Connection, since: float) -> dict[str, int]:
    """How often each shadow-mode watch would have handed off since `since`."""
    rows = conn.execute(
        "SELECT watch, COUNT(*) FROM decisions WHERE verdict = ? AND at >= ? GROUP BY watch",
        (Verdict.WOULD_FIRE, since),
    )
    return dict(rows.fetchall())


def _decision(row: Sequence[Any]) -> Decision:
    at, watch, key, verdict, *rest = row
    return Decision(at, watch, key, Verdict(verdict), *rest)
