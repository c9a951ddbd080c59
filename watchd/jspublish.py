"""Store a message in JetStream and wait for its acknowledgement, at under half of nats-py's CPU.

nats-py's `js.publish` is a general request: per message it draws a random token (a getrandom call),
registers a future with a done-callback, waits under `asyncio.wait_for` (another future and a
timer) and parses the answer with the stdlib JSON decoder into a dataclass. On the listener's and
the sources' path that was ~55 of ~85 µs of CPU per stored event (benchmarks/bench_webhook.py).
`JetStreamPublisher` sends the same message with the same headers (`Nats-Msg-Id` for the stream's
duplicate window) and the same meaning of the answer (the server stored it, fsynced as the
stream's sync setting says), but its answers arrive on one reply subscription per connection (a
raw one on link.Connection: no Msg, header dict or task per answer), tokens are a counter, each
message costs one future, one timer sweeps every timeout, and msgspec reads the ack.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import msgspec
import nats.errors

from watchd.bus import PubAckInfo, api_refusal, no_stream, not_stored, over_max_payload
from watchd.errors import NatsUnavailable
from watchd.link import Connection, reopens_of
from watchd.model import EVENTS_PREFIX, Event, encode

SWEEP_S = 0.25  # how often answers that are overdue are looked for, while any is awaited
_NO_RESPONDERS = b"503"  # the status header NATS sends when nothing (no stream) took the message


class PublishEvent(Protocol):
    """Store one event; `body` is its encoding when the caller already made it (to check its size)."""

    def __call__(self, event: Event, body: bytes | None = None, /) -> Awaitable[PubAckInfo]: ...


# Store several events, each with its encoding: JetStreamPublisher.publish_events, or the daemon's.
PublishEvents = Callable[[Sequence[tuple[Event, bytes]]], Awaitable[list[PubAckInfo]]]


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: _ApiError | None = None


_decode_ack = msgspec.json.Decoder(_PubAck).decode


_Answer = tuple[bytes, bytes | None]  # the answer's payload, and its status code when it has one


class _Overdue(Exception):
    """No answer within the timeout."""


class JetStreamPublisher:
    """Publishes with a reply subject on this connection's answer subscription and waits for the
    stream's acknowledgement; errors as `bus.publish_raw` raises them (NatsUnavailable: nothing is
    known to be stored, send again with the same id; EventRejected: the server refused this one)."""

    def __init__(self, nc: Connection, *, timeout_s: float = 5.0) -> None:
        self.nc = nc
        self.timeout_s = timeout_s
        # token -> (answer: the ack's bytes and the status header's code, if any; deadline)
        self._waiting: dict[bytes, tuple[asyncio.Future[_Answer], float]] = {}
        self._count = 0
        self._prefix = ""
        self._bound_at: int | None = None  # the connection's reopen count when it subscribed
        self._subscribing = asyncio.Lock()
        self._sweep: asyncio.TimerHandle | None = None

    async def publish_event(self, event: Event, body: bytes | None = None) -> PubAckInfo:
        """Store an event on watchd.events.<subject>; its id is the Nats-Msg-Id."""
        return await self.publish(EVENTS_PREFIX + event.subject, encode(event) if body is None else body, event.id)

    async def publish_events(self, events: Sequence[tuple[Event, bytes]]) -> list[PubAckInfo]:
        """Store several events (each with its encoding): all are sent, then every ack awaited in
        turn, with no task per event (a source's burst). Raises as `publish` does, for the first
        event that was not stored; those before it were."""
        if self._bound_at != reopens_of(self.nc):
            await self._subscribe(EVENTS_PREFIX + (events[0][0].subject if events else ""))
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        keys: list[bytes] = []
        try:
            for event, body in events:
                keys.append(await self._send(EVENTS_PREFIX + event.subject, body, event.id, None, deadline))
            acks = []
            for (event, _body), key in zip(events, keys, strict=True):
                subject = EVENTS_PREFIX + event.subject
                acks.append(_ack_of(subject, *await self._answer(key, subject)))
            return acks
        finally:
            for key in keys:
                self._waiting.pop(key, None)

    async def publish(
        self,
        subject: str,
        body: bytes,
        msg_id: str | None,
        *,
        timeout_s: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> PubAckInfo:
        if self._bound_at != reopens_of(self.nc):
            await self._subscribe(subject)
        deadline = asyncio.get_running_loop().time() + (timeout_s or self.timeout_s)
        key = b""
        try:
            key = await self._send(subject, body, msg_id, headers, deadline)
            return _ack_of(subject, *await self._answer(key, subject))
        finally:
            self._waiting.pop(key, None)

    async def _send(
        self, subject: str, body: bytes, msg_id: str | None, headers: dict[str, str] | None, deadline: float
    ) -> bytes:
        """Publish with this message's reply subject; the key its answer will arrive under."""
        self._count += 1
        token = str(self._count)
        key = token.encode()
        loop = asyncio.get_running_loop()
        self._waiting[key] = (loop.create_future(), deadline)
        if self._sweep is None:
            self._sweep = loop.call_later(SWEEP_S, self._expire)
        if msg_id:
            headers = {**headers, "Nats-Msg-Id": msg_id} if headers else {"Nats-Msg-Id": msg_id}
        try:
            await self.nc.publish(subject, body, reply=self._prefix + token, headers=headers)
        except nats.errors.MaxPayloadError:
            self._waiting.pop(key, None)
            raise over_max_payload(body) from None
        except nats.errors.Error as exc:  # closed, draining, reconnect buffer full
            self._waiting.pop(key, None)
            raise not_stored(subject, type(exc).__name__) from None
        return key

    async def _answer(self, key: bytes, subject: str) -> _Answer:
        try:
            return await self._waiting[key][0]
        except _Overdue:
            raise not_stored(subject, "TimeoutError") from None

    async def _subscribe(self, subject: str) -> None:
        """The answer subscription, made again after the connection was opened again (a reopen drops
        every subscription; a reconnect keeps them)."""
        async with self._subscribing:
            reopens = reopens_of(self.nc)
            if self._bound_at == reopens:
                return
            prefix = self.nc.new_inbox() + "."
            cut = len(prefix)
            waiting = self._waiting

            def answered(subject: bytes, _reply: bytes, data: bytes, headers: bytes | None) -> None:
                entry = waiting.get(subject[cut:])
                if entry is not None and not entry[0].done():
                    status = headers[9:12] if headers is not None and headers.startswith(b"NATS/1.0 ") else None
                    entry[0].set_result((data, status))

            try:
                await self.nc.subscribe_raw(prefix + "*", answered)
            except nats.errors.Error as exc:
                raise not_stored(subject, type(exc).__name__) from None
            self._prefix, self._bound_at = prefix, reopens

    def _expire(self) -> None:
        """Fail the answers past their deadline; again in SWEEP_S while any is awaited."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for answer, deadline in self._waiting.values():
            if deadline <= now and not answer.done():
                answer.set_exception(_Overdue())
        self._sweep = loop.call_later(SWEEP_S, self._expire) if self._waiting else None


def _ack_of(subject: str, data: bytes, status: bytes | None) -> PubAckInfo:
    if status == _NO_RESPONDERS:
        raise no_stream(subject)
    try:
        ack = _decode_ack(data)
    except msgspec.DecodeError:
        raise NatsUnavailable(f"NATS answered the message on {subject} with something that is not an ack") from None
    if ack.error is not None:
        raise api_refusal(subject, ack.error.err_code, ack.error.description)
    return PubAckInfo(stream=ack.stream, seq=ack.seq, duplicate=ack.duplicate)
