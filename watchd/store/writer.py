"""`Store`: the daemon's one connection to the state database, and the one thread that uses it.

SQLite calls block, so none runs on the event loop: async code hands them to the writer thread with
`await store.call(fn, *args)` (`fn(store.conn, *args)`, any function of the table modules) or
`await store.run(fn, *args)`. The daemon's own operations are methods here; each is a function of
a connection in the module of its tables.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from watchd.engine import Decision
from watchd.model import Handoff
from watchd.store import engine_state, meta, outbox, schema
from watchd.store.db import Transaction, connect
from watchd.store.decisions import prune_decisions

T = TypeVar("T")
P = ParamSpec("P")


class SqliteThread:
    """One SQLite connection and the one thread that uses it. Async code hands it work with `run` or
    `call`, so no statement (nor a commit waiting for the disk) ever blocks the event loop. Made off
    the loop too (`asyncio.to_thread`): opening a file may create or migrate it. The connection must
    allow use from another thread than the one that made it (`check_same_thread=False`)."""

    def __init__(self, conn: sqlite3.Connection, *, thread_name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self.conn = conn

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def call(self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kw: P.kwargs) -> T:
        """`fn(conn, *args, **kw)` on the connection's thread."""
        return await self.run(functools.partial(fn, self.conn, *args, **kw))

    def close(self) -> None:
        """Wait for the work handed over, then close (blocking: from async code, `asyncio.to_thread`)."""
        self._executor.shutdown(wait=True)
        self.conn.close()


class Store(SqliteThread):
    """The single writer. Every method runs on its one thread; async callers use `call` or `run`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(connect(path), thread_name="watchd-store")
        schema.create(self.conn)
        for suffix in ("-wal", "-shm"):
            sidecar = Path(str(path) + suffix)
            if sidecar.exists():
                os.chmod(sidecar, 0o600)

    @classmethod
    async def open(cls, path: Path) -> Store:
        """A Store opened off the event loop (creating tables or adding columns to a big file takes time)."""
        return await asyncio.to_thread(cls, path)

    # ---- meta ----

    def get_meta(self, k: str, default: str | None = None) -> str | None:
        return meta.get_meta(self.conn, k, default)

    def set_meta(self, k: str, v: str) -> None:
        meta.set_meta(self.conn, k, v)

    def last_seq(self, cursor_key: str = "last_seq") -> int:
        return meta.last_seq(self.conn, cursor_key)

    # ---- the engine ----

    def assign_versions(self, digests: dict[str, str], now: float) -> dict[str, int]:
        return engine_state.assign_versions(self.conn, digests, now)

    def load_engine_state(
        self, keep: Callable[[str], bool] | None = None, clock_key: str = "clock"
    ) -> engine_state.EngineState:
        # The daemon's engine reads an absent key's evidence when it fires (ShardEngine.load).
        return engine_state.load_engine_state(self.conn, keep, clock_key, lazy_evidence=True)

    def commit_step(
        self,
        *,
        last_seq: int | None,
        clock: float,
        changes: engine_state.Changes,
        decisions: list[Decision],
        handoffs: list[Handoff],
        subjects: dict[str, tuple[float, str, int]],
        now: float,
        holds: Mapping[str, float] | None = None,
        cursor_key: str = "last_seq",
        clock_key: str = "clock",
    ) -> list[str]:
        """One transaction for a whole batch (see `engine_state.commit_step`); the new handoff ids."""
        return engine_state.commit_step(
            self.conn,
            last_seq=last_seq,
            clock=clock,
            changes=changes,
            decisions=decisions,
            handoffs=handoffs,
            subjects=subjects,
            now=now,
            holds=holds,
            cursor_key=cursor_key,
            clock_key=clock_key,
        )

    def prune_decisions(self, older_than: float, keep_rows: int) -> int:
        with Transaction(self.conn):
            return prune_decisions(self.conn, older_than, keep_rows)

    # ---- the outbox ----

    def add_handoffs(self, handoffs: list[Handoff], now: float) -> list[str]:
        """Insert handoffs made outside the engine (a schedule's `then`) in one transaction; the ids
        that were new (an id already stored is ignored: the same tick never hands off twice)."""
        with Transaction(self.conn):
            return outbox.insert_handoffs(self.conn, handoffs, now)

    def recover_in_flight(self, now: float) -> int:
        """A handoff that was being delivered when watchd died is retried, with the same id."""
        return outbox.requeue(self.conn, outbox.in_flight(self.conn), now, "watchd restarted during delivery")

    def requeue_stuck(self, ids: Iterable[str], now: float) -> int:
        """Deliveries still `delivering` long past their lease (an outcome that was never recorded)
        are retried now, with the same id."""
        return outbox.requeue(self.conn, ids, now, "stuck in delivery past its lease")

    def claim_due(self, now: float, room: dict[str, int] | None = None, limit: int = 64) -> list[Handoff]:
        """Move due handoffs to `delivering` and return them, at most `room[target]` per target.

        Only what a target can start now is claimed: a stalled target's backlog stays `pending`
        (and costs no attempt if watchd restarts) instead of queueing in memory as `delivering`.
        A target missing from `room` (not configured) gets `limit`, so it dead-letters promptly.
        """
        return outbox.claim_due(self.conn, now, room, limit)

    def next_attempt_at(self, room: dict[str, int] | None = None) -> float | None:
        return outbox.next_attempt_at(self.conn, room)

    def finish(
        self, hid: str, state: str, now: float, detail: str | None, next_attempt_at: float | None = None
    ) -> None:
        outbox.finish(self.conn, hid, state, now, detail, next_attempt_at)

    def settle(self, hid: str, state: str, now: float, detail: str | None, only_from: Iterable[str]) -> str | None:
        """Move a handoff to `state` only while it is in one of `only_from` (a remote worker's reply
        that comes after its delivery ended); returns the state it was in, None for an unknown id."""
        return outbox.settle(self.conn, hid, state, now, detail, only_from)
