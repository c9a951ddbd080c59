"""Group commit: many small writes of one kind, made at about the same time, in one transaction.

The deliverer records two writes per handoff (taken, then settled), each its own transaction: at
a few hundred handoffs a second that is most of the writer thread's time, and each costs a round
trip to it. `Grouped` runs the calls that arrive while the writer is busy with the previous group
together, in one transaction: a call alone is written at once, as before; under load they share
the commit. Each caller still waits for the commit that holds its write, so "recorded before
acted on" holds for each as it did.

If the group's transaction fails, each call is run again in a transaction of its own, so that one
call's failure is its own and the others' writes are kept.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from watchd.store.db import Transaction
from watchd.store.writer import SqliteThread

R = TypeVar("R")


class Grouped(Generic[R]):
    """`await grouped(*args)` runs `fn(conn, *args)` on the writer thread inside a transaction
    shared with the calls that were waiting with it; `fn` must not open one of its own."""

    def __init__(self, thread: SqliteThread, fn: Callable[..., R]) -> None:
        self._thread = thread
        self._fn = fn
        self._waiting: list[tuple[tuple[Any, ...], asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None
        self.groups = 0  # transactions committed (for tests and benchmarks: calls / groups)

    async def __call__(self, *args: Any) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._waiting.append((args, future))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain(), name="store-group")
        return await future

    async def _drain(self) -> None:
        while self._waiting:
            group, self._waiting = self._waiting, []
            try:
                results = await self._thread.run(self._write, [args for args, _ in group])
            except BaseException as exc:  # the thread is gone (shutting down), or this task was cancelled
                if isinstance(exc, asyncio.CancelledError):
                    for _, future in group + self._waiting:
                        future.cancel()
                    self._waiting = []
                    raise
                for _, future in group:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(group, results, strict=True):
                if future.done():  # its caller gave up waiting: the write stands, as with `run`
                    continue
                if isinstance(result, _Failed):
                    future.set_exception(result.exc)
                else:
                    future.set_result(result)

    def _write(self, calls: list[tuple[Any, ...]]) -> list[R | _Failed]:
        conn: sqlite3.Connection = self._thread.conn
        try:
            with Transaction(conn):
                results: list[R | _Failed] = [self._fn(conn, *args) for args in calls]
            self.groups += 1
            return results
        except Exception as exc:
            if len(calls) == 1:
                return [_Failed(exc)]
        results = []
        for args in calls:  # one by one: only the call that fails fails
            try:
                with Transaction(conn):
                    results.append(self._fn(conn, *args))
                self.groups += 1
            except Exception as exc:
                results.append(_Failed(exc))
        return results


class _Failed:
    __slots__ = ("exc",)

    def __init__(self, exc: Exception) -> None:
        self.exc = exc
