"""The SQLite store: one transaction per batch, idempotent handoffs, retention."""

from __future__ import annotations

import resource
import signal
import sqlite3
from pathlib import Path

import pytest
from support.handoffs import make_handoff

from watchd.engine import Decision
from watchd.model import Handoff
from watchd.store import Store
from watchd.store.outbox import read_handoffs


def handoff(hid: str) -> Handoff:
    return make_handoff(id=hid)


def commit(store: Store, *, seq: int, decisions: list[Decision], handoffs: list[Handoff]) -> list[str]:
    return store.commit_step(
        last_seq=seq,
        clock=float(seq),
        changes=([], [], set()),
        decisions=decisions,
        handoffs=handoffs,
        subjects={},
        now=float(seq),
    )


def test_same_handoff_id_is_stored_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "w.db")
    assert commit(store, seq=1, decisions=[], handoffs=[handoff("h_1")]) == ["h_1"]
    assert commit(store, seq=2, decisions=[], handoffs=[handoff("h_1"), handoff("h_2")]) == ["h_2"]
    assert [r.id for r in read_handoffs(store.conn)] == ["h_2", "h_1"]
    assert store.last_seq() == 2
    store.close()


def test_files_are_private(tmp_path: Path) -> None:
    store = Store(tmp_path / "state" / "w.db")
    assert (tmp_path / "state" / "w.db").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    store.close()


def test_retention_by_age_and_count(tmp_path: Path) -> None:
    store = Store(tmp_path / "w.db")
    decisions = [Decision(float(i), "w", None, "fired", "r") for i in range(100)]
    commit(store, seq=1, decisions=decisions, handoffs=[])
    assert store.prune_decisions(older_than=20.0, keep_rows=1000) == 20
    assert store.prune_decisions(older_than=0.0, keep_rows=50) == 30
    rows = store.conn.execute("SELECT MIN(at), COUNT(*) FROM decisions").fetchone()
    assert rows == (50.0, 50)
    store.close()


def test_in_flight_delivery_is_retried_after_restart_with_the_same_id(tmp_path: Path) -> None:
    store = Store(tmp_path / "w.db")
    commit(store, seq=1, decisions=[], handoffs=[handoff("h_1")])
    (claimed,) = store.claim_due(now=2.0)
    assert claimed.id == "h_1" and claimed.state == "delivering"
    store.close()
    store = Store(tmp_path / "w.db")  # watchd died mid-delivery
    assert store.recover_in_flight(now=3.0) == 1
    (again,) = store.claim_due(now=3.0)
    assert again.id == "h_1" and again.attempt == 2
    store.finish("h_1", "delivered", 4.0, None)
    assert store.claim_due(now=100.0) == []
    states = [r[0] for r in store.conn.execute("SELECT state FROM transitions WHERE handoff_id = 'h_1' ORDER BY id")]
    assert states == ["pending", "delivering", "retrying", "delivering", "delivered"]
    store.close()


# ---- a transaction that cannot commit ------------------------------------------------------------------


def big_handoff(hid: str, size: int) -> Handoff:
    h = handoff(hid)
    h.evidence = [{"data": "x" * size}]
    return h


def test_a_commit_left_open_by_sqlite_is_rolled_back_and_the_writer_goes_on(tmp_path: Path) -> None:
    """SQLite keeps a transaction open when COMMIT fails with SQLITE_BUSY: here a state file in
    rollback-journal mode (where WAL is unavailable) whose reader outstays the busy timeout."""
    path = tmp_path / "w.db"
    store = Store(path)
    assert store.conn.execute("PRAGMA journal_mode=DELETE").fetchone() == ("delete",)
    store.conn.execute("PRAGMA busy_timeout=100")
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM handoffs").fetchone()  # a read lock COMMIT must wait for
    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        commit(store, seq=1, decisions=[], handoffs=[handoff("h_1")])
    assert not store.conn.in_transaction
    reader.execute("COMMIT")
    reader.close()
    assert commit(store, seq=2, decisions=[], handoffs=[handoff("h_2")]) == ["h_2"]
    assert [r.id for r in read_handoffs(store.conn)] == ["h_2"] and store.last_seq() == 2
    store.close()


def test_an_io_error_at_commit_is_raised_and_the_next_transaction_works(tmp_path: Path) -> None:
    """The kernel refuses the WAL's growth at COMMIT (a file size limit, as a full disk would):
    the batch is not kept, the I/O error is what the caller sees, and the next batch commits."""
    store = Store(tmp_path / "w.db")
    commit(store, seq=1, decisions=[], handoffs=[handoff("h_1")])
    wal = Path(str(store.path) + "-wal")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (wal.stat().st_size + 65536, hard))
    try:
        # Under the page cache's size: nothing reaches the file before COMMIT writes the WAL.
        with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
            commit(store, seq=2, decisions=[], handoffs=[big_handoff("h_2", 512 * 1024)])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert not store.conn.in_transaction
    assert commit(store, seq=3, decisions=[], handoffs=[handoff("h_3")]) == ["h_3"]
    assert [r.id for r in read_handoffs(store.conn)] == ["h_3", "h_1"] and store.last_seq() == 3
    store.close()


def test_a_full_database_is_the_error_raised_not_the_rollback_after_it(tmp_path: Path) -> None:
    """A database that cannot grow (`max_page_count`, as a full disk): SQLite has already rolled the
    transaction back, and the caller sees "database or disk is full", not a failed ROLLBACK."""
    store = Store(tmp_path / "w.db")
    (pages,) = store.conn.execute("PRAGMA page_count").fetchone()
    store.conn.execute(f"PRAGMA max_page_count = {pages + 2}")
    with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
        commit(store, seq=1, decisions=[], handoffs=[big_handoff("h_1", 64 * 1024)])
    assert not store.conn.in_transaction
    store.conn.execute("PRAGMA max_page_count = 1073741823")
    assert commit(store, seq=2, decisions=[], handoffs=[handoff("h_2")]) == ["h_2"]
    assert [r.id for r in read_handoffs(store.conn)] == ["h_2"] and store.last_seq() == 2
    store.close()
