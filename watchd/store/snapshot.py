"""Copies of the state database for backups: a consistent snapshot, and the counts that prove a copy.

The copy is made with SQLite's backup API from a separate read connection, inside one read
transaction that also counts the rows: in WAL mode the daemon keeps writing meanwhile, and the copy
and its counts describe the same instant.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import msgspec

from watchd.store.meta import last_seq

# The newest record of each table, compared after a restore; other tables use MAX(rowid).
_NEWEST = {
    "decisions": "MAX(id)",
    "transitions": "MAX(id)",
    "handoffs": "MAX(updated_at)",
    "subjects": "MAX(last_at)",
    "watch_versions": "MAX(updated_at)",
}


class TableStat(msgspec.Struct, kw_only=True):
    rows: int
    newest: int | float | str | None


def snapshot(db: Path, dest: Path) -> tuple[dict[str, TableStat], int]:
    """Copy `db` to `dest` with the SQLite backup API; the row counts of the copy, and the last stream
    sequence it covers. The counts are taken in the same read transaction as the copy, so they
    describe exactly the snapshot, whatever the daemon writes."""
    src = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None, timeout=10)
    try:
        src.execute("BEGIN")
        stats = table_stats(src)  # the first read fixes the snapshot the backup below copies
        seq = last_seq(src) if "meta" in stats else 0
        target = sqlite3.connect(dest, isolation_level=None)
        try:
            src.backup(target)
            # A self-contained file: no -wal beside it is needed to read it.
            target.execute("PRAGMA journal_mode=DELETE")
        finally:
            target.close()
        src.execute("COMMIT")
    finally:
        src.close()
    os.chmod(dest, 0o600)
    return stats, seq


def table_stats(conn: sqlite3.Connection) -> dict[str, TableStat]:
    """Rows and newest record of every table."""
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    stats: dict[str, TableStat] = {}
    for name in names:
        if name.startswith("sqlite_"):
            continue
        quoted = '"' + name.replace('"', '""') + '"'
        rows = conn.execute(f"SELECT COUNT(*) FROM {quoted}").fetchone()[0]
        try:
            newest = conn.execute(f"SELECT {_NEWEST.get(name, 'MAX(rowid)')} FROM {quoted}").fetchone()[0]
        except sqlite3.OperationalError:  # a WITHOUT ROWID table: the count alone
            newest = None
        stats[name] = TableStat(rows=rows, newest=newest)
    return stats


def integrity_problems(conn: sqlite3.Connection) -> list[str]:
    """What `PRAGMA integrity_check` finds wrong; empty when the file is sound."""
    found = [str(r[0]) for r in conn.execute("PRAGMA integrity_check")]
    return [] if found == ["ok"] else found
