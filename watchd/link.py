"""The client side of NATS that survives: a connection that opens itself again after nats-py gave it
up, and the one pull loop every durable consumer of watchd runs on.

nats-py reconnects by itself after a network failure or a server restart, but it *closes* the
connection for good on any protocol error the server reports (`-ERR`, e.g. a control line too long)
and then every publish and fetch fails with ConnectionClosedError. A long-lived process (the
daemon, a worker) must not end that way: `Connection` opens the same client again, with backoff,
so every object that holds it (JetStream contexts, runners, the listener) keeps working. What it
cannot keep are subscriptions: nats-py drops them on close, so a pull loop binds its consumer again
when `reopens` moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from watchd.upkeep import Backoff, LogLimiter, Upkeep

log = logging.getLogger("watchd.nats")

REOPEN_CAP_S = 10.0  # the longest wait between two attempts to open a closed connection
FETCH_BACKOFF_CAP_S = 5.0  # a consumer whose fetch fails tries again within this

PullSubscription = JetStreamContext.PullSubscription

# (subject, reply, payload, header block or None) of one message, as the protocol parser has them.
RawHandler = Callable[[bytes, bytes, bytes, bytes | None], None]


class Connection(Client):
    """A nats-py client that opens itself again when nats-py closes it (see the module doc).

    Open it with `open(**options)` (nats-py's `connect` options); `close()` and `drain()` close it
    for good. `reopens` counts the times it was opened again: a subscription made before the last
    reopen is dead."""

    def __init__(self) -> None:
        super().__init__()
        self.reopens = 0
        self._options: dict[str, Any] = {}
        self._closing = False
        self._reopen_task: asyncio.Task[None] | None = None
        self._limiter = LogLimiter(log)
        self._raw: dict[Subscription, RawHandler] = {}

    async def subscribe_raw(self, subject: str, handler: RawHandler) -> Subscription:
        """A subscription whose messages go to `handler` as the parser has them, in the read loop:
        no `Msg`, no header dict, no queue and task per subscription. For a reader that takes
        thousands of messages a second and needs a few fields of each (watchd/pull.py). `handler`
        must not block; unsubscribe with `unsubscribe_raw`."""
        sub = await self.subscribe(subject, cb=_ignore)
        self._raw[sub] = handler
        return sub

    async def unsubscribe_raw(self, sub: Subscription) -> None:
        self._raw.pop(sub, None)
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        handler = self._raw.get(self._subs.get(sid)) if self._raw else None  # type: ignore[arg-type]
        if handler is None:
            await super()._process_msg(sid, subject, reply, data, headers)  # type: ignore[arg-type]
            return
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        handler(subject, reply, data, headers)

    async def open(self, **options: Any) -> None:
        """`connect` with `options`, remembered to open the connection again the same way."""
        user_closed_cb = options.pop("closed_cb", None)

        async def closed() -> None:
            if user_closed_cb is not None:
                await user_closed_cb()
            self._closed_by_nats()

        self._options = {**options, "closed_cb": closed}
        await self.connect(**self._options)

    def _closed_by_nats(self) -> None:
        if self._closing or (self._reopen_task is not None and not self._reopen_task.done()):
            return
        reason = type(self.last_error).__name__ if self.last_error else "no reason given"
        text = str(self.last_error or "")[:200]
        log.warning("NATS closed the connection (%s%s); opening it again", reason, f": {text}" if text else "")
        self._reopen_task = asyncio.get_running_loop().create_task(self._reopen(), name="nats-reopen")

    async def _reopen(self) -> None:
        backoff = Backoff(cap_s=REOPEN_CAP_S)
        while not self._closing_now():
            await asyncio.sleep(backoff.next())
            if self._closing_now():
                return
            try:
                await self.connect(**self._options)
            except (OSError, TimeoutError, nats.errors.Error) as exc:
                self._limiter.log(logging.WARNING, "reopen", "opening the NATS connection again failed: %r", exc)
                continue
            # nats-py keeps the prefix of its request inbox across a close, and sets it (before it
            # fails to subscribe) when a request is made while closed: replies to that prefix would
            # have no subscription, and every request after the reopen would time out. Unset, the
            # next request subscribes afresh.
            self._resp_sub_prefix = None
            self.reopens += 1
            self._limiter.forget("reopen")
            log.info("NATS connection open again (reopen %d)", self.reopens)
            return

    def _closing_now(self) -> bool:  # a call, so mypy does not narrow the flag across awaits
        return self._closing

    async def close(self) -> None:
        self._closing = True
        if self._reopen_task is not None:
            self._reopen_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reopen_task
        await super().close()

    async def drain(self) -> None:
        self._closing = True
        await super().drain()


async def _ignore(_: Msg) -> None:
    return None


def reopens_of(nc: Client | None) -> int:
    """How often the connection was opened again (0 for a plain nats-py client)."""
    return nc.reopens if isinstance(nc, Connection) else 0


async def unbind(sub: PullSubscription | None) -> None:
    """Drop a pull subscription; the durable and its position stay on the server."""
    if sub is not None:
        with contextlib.suppress(nats.errors.Error, OSError):
            await sub.unsubscribe()


async def pull(
    upkeep: Upkeep,
    name: str,
    nc: Client | None,
    bind: Callable[[], Awaitable[PullSubscription]],
    handle: Callable[[list[Msg]], Awaitable[None]],
    *,
    sub: PullSubscription | None = None,
    batch: int | Callable[[], Awaitable[int]] = 64,
    wait_s: float = 5.0,
) -> None:
    """Fetch from a durable pull consumer and give each batch to `handle`, until upkeep's stop.

    `bind` creates (or updates) the durable and subscribes to it: called when there is no
    subscription yet (`sub`), after a fetch failed, and after the connection `nc` was opened again. A
    failed fetch or bind is retried with backoff and counted under `name`. `batch` is how many to
    ask for, or a function that waits for room (a worker busy with all its slots) and says how many;
    0 asks for nothing this round."""
    current, bound_at = sub, reopens_of(nc)

    async def step() -> float:
        nonlocal current, bound_at
        n = batch if isinstance(batch, int) else await batch()
        if n <= 0:
            return 0.0
        if current is None or bound_at != reopens_of(nc):
            await unbind(current)
            current = None
            bound_at = reopens_of(nc)
            current = await bind()
        try:
            msgs = await current.fetch(n, timeout=wait_s)
        except TimeoutError:  # nats.errors.TimeoutError and FetchTimeoutError: nothing came
            return 0.0
        except nats.errors.Error:
            await unbind(current)
            current = None  # bound again on the next round, once the connection is back
            raise
        await handle(msgs)
        return 0.0

    try:
        await upkeep.every(name, step, interval_s=0.0, backoff=Backoff(cap_s=FETCH_BACKOFF_CAP_S))
    finally:
        await unbind(current)
