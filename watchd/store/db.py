"""Opening the state database, and the one way to write more than one statement: `Transaction`."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from watchd.errors import WatchdError

# A write carried out inside someone else's transaction (a tool's effect, stored with its result).
Write = Callable[[sqlite3.Connection], None]


def db_path(state_dir: Path) -> Path:
    return state_dir / "watchd.db"


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """WAL + synchronous=NORMAL: durable at each commit's checkpoint, fast on a laptop disk.

    Autocommit (`isolation_level=None`): a statement outside a `Transaction` commits on its own,
    and a `Transaction` says exactly where one begins and ends.
    """
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=10)
    else:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fresh = not path.exists()
        conn = sqlite3.connect(path, check_same_thread=False, timeout=10, isolation_level=None)
        if fresh:
            os.chmod(path, 0o600)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


def open_readonly(state_dir: Path) -> sqlite3.Connection | None:
    """The state db read-only (safe beside a running daemon: WAL readers never block the writer),
    or None when watchd has not run yet."""
    path = db_path(state_dir)
    return connect(path, readonly=True) if path.exists() else None


def connect_existing(path: Path) -> sqlite3.Connection:
    """A read-write connection to a state file that must already exist (WAL: the daemon may be running)."""
    if not path.exists():
        raise WatchdError(f"no watchd state at {path}", hint="has watchd run with this config? check state_dir")
    return connect(path)


def check_readable(conn: sqlite3.Connection, table: str) -> None:
    """Raise sqlite3.Error unless `table` can be read: a state file from before the table existed, or
    one that cannot be read at all."""
    conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone()


class Transaction:
    """`with Transaction(conn):` one IMMEDIATE transaction, committed at the end of the block and
    rolled back if the block raises — or if COMMIT itself fails.

    SQLite leaves the transaction open when COMMIT fails with SQLITE_BUSY (a rollback-journal file
    whose readers outstay the busy timeout): without a rollback every later BEGIN would fail and the
    writer would be stuck. Errors such as SQLITE_FULL and SQLITE_IOERR roll the transaction back
    themselves, so a ROLLBACK is sent only while one is still open; either way the error that
    caused it is the one raised.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        else:
            self._rollback()

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
