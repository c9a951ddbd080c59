"""watchd/store/grouped.py: calls made together share one transaction; a failing one fails alone."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from watchd.store.db import connect
from watchd.store.grouped import Grouped
from watchd.store.writer import SqliteThread


@pytest.fixture
def thread(tmp_path: Path) -> SqliteThread:
    conn = connect(tmp_path / "t.db")
    conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
    return SqliteThread(conn, thread_name="test-store")


def put(conn: sqlite3.Connection, k: str, v: int) -> int:
    assert conn.in_transaction  # inside the group's transaction, never its own
    conn.execute("INSERT INTO t VALUES (?, ?)", (k, v))
    return v * 10


def rows(thread: SqliteThread) -> dict[str, int]:
    return dict(thread.conn.execute("SELECT k, v FROM t").fetchall())


async def test_calls_made_together_share_a_transaction(thread: SqliteThread) -> None:
    grouped: Grouped[int] = Grouped(thread, put)
    results = await asyncio.gather(*(grouped(f"k{i}", i) for i in range(50)))
    assert results == [i * 10 for i in range(50)]
    assert rows(thread) == {f"k{i}": i for i in range(50)}
    assert grouped.groups < 50  # the first alone at most, then the rest together
    assert grouped.groups <= 2
    assert await grouped("alone", 7) == 70  # a call by itself is written at once
    assert rows(thread)["alone"] == 7
    thread.close()


async def test_a_failing_call_fails_alone(thread: SqliteThread) -> None:
    grouped: Grouped[int] = Grouped(thread, put)
    await grouped("taken", 1)
    results = await asyncio.gather(grouped("a", 2), grouped("taken", 3), grouped("b", 4), return_exceptions=True)
    assert results[0] == 20 and results[2] == 40
    assert isinstance(results[1], sqlite3.IntegrityError)
    assert rows(thread) == {"taken": 1, "a": 2, "b": 4}
    assert not thread.conn.in_transaction
    thread.close()
