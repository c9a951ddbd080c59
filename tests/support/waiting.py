"""Waiting for a condition: `wait_until` blocks (for code outside an event loop), `until` awaits.

Both poll `pred` until it returns something truthy and return that, or fail naming `what`. `until`
also awaits a `pred` that returns an awaitable, so a condition can ask NATS or the store's thread.
The default timeout is generous (a shared, busy machine); a test whose point is speed gives its own.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any


def wait_until(pred: Callable[[], Any], timeout_s: float = 30.0, what: str = "condition", step_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(step_s)


async def until(pred: Callable[[], Any], timeout_s: float = 30.0, what: str = "condition", step_s: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
        await asyncio.sleep(step_s)
