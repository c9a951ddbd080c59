"""Reading a JetStream pull consumer in batches, without nats-py's per-message `fetch`.

nats-py's `fetch` takes each message with `next_msg`, which starts a task and a timer for every
message (≈20–30 µs): as much as deciding the event. Here the pull requests go out with a reply
subject of a core subscription of our own, whose messages the connection hands over as the
protocol parser has them (`link.Connection.subscribe_raw`): each becomes a `Delivered` with the
few fields the engine reads, taken from the reply subject, without a nats-py `Msg`, its header
dict, its parsed metadata or a queue. A batch is complete when full, or when the server says no
more are there (a status message on the request's own reply subject).

`fetch` keeps nats-py's contract: whatever is there at once, else the first message to come
(then what came with it), else [] after `timeout_s`. Acking stays the caller's (after its
commit), so exactly-once is unchanged: a message not acked comes again after `ack_wait`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from nats.aio.subscription import Subscription

from watchd.link import Connection

_HEARTBEAT = b"100"
_SERVER_WAIT_MIN_S = 0.01  # below this a waiting pull request is not worth sending
_STATUS_LINE = b"NATS/1.0 "  # a header block that starts so is the server's status, not a message
_ACK_PREFIX = "$JS.ACK."


class NotJetStream(ValueError):
    """A reply subject that is not a JetStream ack subject."""


class Delivered:
    """One message of a pull consumer: its payload, and from its ack subject (the reply) the
    stream sequence, when the stream stored it, how many the consumer still holds after it and
    how often it was delivered. Acked by publishing an empty message to `reply`."""

    __slots__ = ("_raw_headers", "at", "data", "delivered", "pending", "reply", "seq")

    def __init__(self, reply: str, data: bytes, raw_headers: bytes | None) -> None:
        tokens = reply.split(".")
        # $JS.ACK.<stream>.<consumer>.<delivered>.<seq>.<consumer seq>.<ns>.<pending>, or since
        # NATS 2.10 with <domain>.<account hash> after ACK and a random token at the end.
        if len(tokens) == 9:
            first = 4
        elif len(tokens) >= 11:
            first = 6
        else:
            raise NotJetStream(reply)
        if not reply.startswith(_ACK_PREFIX):
            raise NotJetStream(reply)
        self.reply = reply
        self.data = data
        self.delivered = int(tokens[first])
        self.seq = int(tokens[first + 1])
        self.at = int(tokens[first + 3]) / 1e9
        self.pending = int(tokens[first + 4])
        self._raw_headers = raw_headers

    @property
    def headers(self) -> dict[str, str] | None:
        """The message's headers (read on demand: the engine needs them only for a bad event)."""
        if not self._raw_headers:
            return None
        out: dict[str, str] = {}
        for line in self._raw_headers.split(b"\r\n")[1:]:
            name, sep, value = line.partition(b":")
            if sep:
                out[name.strip().decode("ascii", "replace")] = value.strip().decode("utf-8", "replace")
        return out or None


class Puller:
    def __init__(self, nc: Connection, stream: str, durable: str, api_prefix: str = "$JS.API") -> None:
        self._nc = nc
        self._next = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._sub: Subscription | None = None
        self._inbox = ""
        self._requests = 0
        self._current = b""  # the reply subject of the request under way: only its status ends it
        self._got: list[Delivered] = []  # delivered, not yet handed out (stream order)
        self._want = 0
        self._ended = True
        self._done = asyncio.Event()

    async def start(self) -> None:
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe_raw(self._inbox + ".*", self._on_msg)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._nc.unsubscribe_raw(self._sub)
            self._sub = None

    def _on_msg(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        if headers is not None and headers.startswith(_STATUS_LINE):
            status = headers[len(_STATUS_LINE) : len(_STATUS_LINE) + 3]
            if status != _HEARTBEAT and subject == self._current:
                # 404 no messages, 408 request expired, 409 and others: this request is over.
                self._ended = True
                self._done.set()
            return
        try:
            self._got.append(Delivered(reply.decode(), data, headers))
        except (NotJetStream, ValueError, UnicodeDecodeError):
            return  # not from the consumer (nothing else publishes here): nothing to take
        if len(self._got) >= self._want:
            self._done.set()

    async def _pull(self, batch: int, wait_s: float, *, no_wait: bool) -> None:
        """Ask for up to `batch` more and wait until they came or the request ended."""
        self._requests += 1
        reply = f"{self._inbox}.{self._requests}"
        self._current = reply.encode()
        self._want = len(self._got) + batch
        self._ended = False
        self._done.clear()
        request: dict[str, object] = {"batch": batch}
        if no_wait:
            request["no_wait"] = True  # without `expires`, or the server waits for it anyway
        else:
            request["expires"] = int(wait_s * 1e9)
        await self._nc.publish(self._next, json.dumps(request).encode(), reply=reply)
        with contextlib.suppress(TimeoutError):
            # A margin past the server's own expiry: its 408 normally ends the wait first.
            await asyncio.wait_for(self._done.wait(), wait_s + 1.0)

    def _take(self, batch: int) -> list[Delivered]:
        out, self._got = self._got[:batch], self._got[batch:]
        return out

    async def fetch(self, batch: int, timeout_s: float) -> list[Delivered]:
        if self._sub is None:
            raise RuntimeError("Puller.fetch before start()")
        if self._got:  # came for an earlier request after it was given up: next in the stream
            return self._take(batch)
        deadline = time.monotonic() + timeout_s
        await self._pull(batch, timeout_s, no_wait=True)
        if self._got:
            return self._take(batch)
        remaining = deadline - time.monotonic()
        if remaining < _SERVER_WAIT_MIN_S:
            await asyncio.sleep(max(0.0, remaining))
            return []
        await self._pull(1, remaining, no_wait=False)  # waits at the server for the first one
        if self._got and batch > 1:
            await self._pull(batch - len(self._got), timeout_s, no_wait=True)  # and what came with it
        return self._take(batch)
