"""The SQLite store: one transaction per batch, idempotent handoffs, retention."""

from __future__ import annotations

from pathlib import Path

from watchd.engine import Decision
from watchd.model import Handoff
from watchd.store import Store
from watchd.store.outbox import read_handoffs


def handoff(hid: str) -> Handoff:
    return Handoff(
        id=hid,
        watch="w",
        watch_version=1,
        kind="match",
        key=None,
        target="notify.console",
        trigger="watch",
        reason="r",
        fired_at="2026-11-22T00:00:00Z",
    )


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
