"""The HTTP listener's sockets: how many stay open, how long a client may take, and the answer to a
request too broken to reach a handler.

Every socket is a file descriptor the daemon shares with SQLite, NATS and its notifiers, so the
listener holds at most `max_connections`. When all are taken, the oldest connection that is not in
a request (still sending its headers, or idle after a response) is closed to make room, so slow
clients cannot starve fast ones; when every one is in a request, the newcomer gets a 503 and is
closed. A connection that has not sent complete request headers `header_timeout_s` after opening,
or sends nothing for `keepalive_timeout_s` after a response, is closed (slowloris). How long a
request body may take is the request handler's deadline (ingress.py). Nothing here depends on
which aiohttp version closes idle connections by itself.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus

import msgspec
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from watchd.limits import HTTP_HEADER_TIMEOUT_S, HTTP_KEEPALIVE_TIMEOUT_S, url_host

log = logging.getLogger("watchd.http")

Refusal = Callable[[str, str], None]  # (reason, message): counted and logged by the ingress

# A client that keeps sending after its response is refused gets this long to read the answer.
LINGER_S = 2.0
LISTEN_QUEUE = 1024  # connections the kernel holds before the listener accepts them


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_connections: int
    header_timeout_s: float = HTTP_HEADER_TIMEOUT_S
    keepalive_timeout_s: float = HTTP_KEEPALIVE_TIMEOUT_S


class _NoAccessLog(AbstractAccessLogger):
    """watchd logs refusals (at a rate limit), not every request."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        pass

    @property
    def enabled(self) -> bool:
        return False


class Connection(web.RequestHandler):
    """One accepted socket; `in_request` while a handler runs, otherwise a deadline is armed.

    The deadline's timer is not moved per request (a cancel and a new timer each time cost more
    than the rest of the bookkeeping): it fires, and if the connection is in a request or its
    deadline moved on since, it does nothing or waits again for the rest."""

    def __init__(self, gate: Gate) -> None:
        super().__init__(
            gate.server,
            loop=gate.loop,
            keepalive_timeout=gate.limits.keepalive_timeout_s,
            access_log_class=_NoAccessLog,
            auto_decompress=False,  # a compressed body is refused, never inflated (no zip bombs)
            lingering_time=LINGER_S,
        )
        self.gate = gate
        self.in_request = False
        self.evicted = False
        self._deadline: asyncio.TimerHandle | None = None
        self._due = 0.0  # loop time when the connection has waited too long
        self._waiting_for: tuple[str, float] = ("", 0.0)  # what it failed to do, within how long

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.evicted:  # made room for a newer one before its socket was even set up
            self.force_close()
            return
        self._arm(self.gate.limits.header_timeout_s, "sent no complete request")

    def evict(self) -> None:
        self.evicted = True
        self._disarm()
        if self.transport is not None:
            self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        self.gate.forget(self)
        super().connection_lost(exc)

    def request_started(self) -> None:
        self.in_request = True  # a deadline that fires now finds it busy

    def request_finished(self) -> None:
        self.in_request = False
        self._arm(self.gate.limits.keepalive_timeout_s, "stayed idle")

    def _arm(self, delay_s: float, what: str) -> None:
        loop = self.gate.loop
        self._due = loop.time() + delay_s
        self._waiting_for = (what, delay_s)
        if self._deadline is None or self._deadline.when() > self._due:
            self._disarm()
            self._deadline = loop.call_at(self._due, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self.in_request or self.transport is None:
            return  # request_finished arms it again
        if self.gate.loop.time() < self._due:  # a request came and went since it was set
            self._deadline = self.gate.loop.call_at(self._due, self._expire)
            return
        what, delay_s = self._waiting_for
        self.gate.refused("slow_client", f"closed a connection that {what} for {delay_s:g}s")
        self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A request aiohttp could not parse (400) or a handler that failed: a JSON answer, and a
        traceback only for watchd's own defects."""
        if request.writer.output_size > 0:  # as aiohttp's: a response is already on the wire
            raise ConnectionError("a response was already sent; cannot send an error after it")
        if status >= 500:
            log.error(
                "internal error while handling %s %s", request.method, request.rel_url.raw_path[:100], exc_info=exc
            )
            text = "internal error"
        else:
            text = f"malformed HTTP request: {message or HTTPStatus(status).phrase}"
            self.gate.refused("http", text)
        response = web.json_response({"error": text}, status=status)
        response.force_close()
        return response


_JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8"}  # copied by each Response


def stored_answer(event_id: str, seq: int, duplicate: bool, status: int = 200) -> web.Response:
    """The answer to a request whose event was stored: its id, seq, and whether it was a duplicate.
    msgspec encodes it: aiohttp's json_response (stdlib json) costs 3-4 times as much."""
    body = msgspec.json.encode({"id": event_id, "seq": seq, "duplicate": duplicate})
    return web.Response(body=body, status=status, headers=_JSON_HEADERS)


_REFUSAL_BODY = b'{"error": "too many connections: try again shortly"}'
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_REFUSAL_BODY), _REFUSAL_BODY)
)


class _Refused(asyncio.Protocol):
    """A connection over the limit: a 503, then closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(_REFUSAL)
        transport.close()


class Gate:
    """The listening socket's protocol factory: a Connection per accepted socket, within the cap."""

    def __init__(self, server: web.Server, limits: ConnectionLimits, refused: Refusal) -> None:
        self.server = server
        self.limits = limits
        self.refused = refused
        self.loop = asyncio.get_running_loop()
        # Counted from the factory call, not from connection_made: asyncio accepts up to `backlog`
        # sockets in a burst and calls this for each before any connection is made.
        self.open: dict[Connection, None] = {}  # oldest first

    def __call__(self) -> asyncio.BaseProtocol:
        if len(self.open) >= self.limits.max_connections and not self._evict_idle():
            self.refused("connections", f"refused a connection: all {self.limits.max_connections} are in a request")
            return _Refused()
        conn = Connection(self)
        self.open[conn] = None
        return conn

    def _evict_idle(self) -> bool:
        victim = next((c for c in self.open if not c.in_request), None)
        if victim is None:
            return False
        del self.open[victim]
        victim.evict()
        self.refused("connections", f"closed the oldest idle connection: {self.limits.max_connections} are open")
        return True

    def forget(self, conn: Connection) -> None:
        self.open.pop(conn, None)


@web.middleware
async def track_requests(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Marks the connection busy while a handler runs: neither evicted nor timed out then."""
    conn = request.protocol
    if not isinstance(conn, Connection):
        return await handler(request)
    conn.request_started()
    try:
        return await handler(request)
    finally:
        conn.request_finished()


def accept_burst(max_connections: int) -> int:
    """How many sockets asyncio accepts in one go (its `backlog`): a burst takes descriptors
    before the gate can close any, so it stays a fraction of the cap."""
    return min(100, max(8, max_connections // 4))


class ListenerSite(web.BaseSite):
    """A TCP site whose sockets go through a Gate."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, limits: ConnectionLimits, refused: Refusal) -> None:
        super().__init__(runner)
        assert runner.server is not None, "runner.setup() first"
        self.server = runner.server
        self.host, self.port = host, port
        self.limits = limits
        self.refused = refused
        self.gate: Gate | None = None
        self.listening: asyncio.Server | None = None

    @property
    def name(self) -> str:
        return f"http://{url_host(self.host)}:{self.port}"

    async def start(self) -> None:
        await super().start()
        self.gate = Gate(self.server, self.limits, self.refused)
        self.listening = await asyncio.get_running_loop().create_server(
            self.gate, self.host, self.port, reuse_address=True, backlog=accept_burst(self.limits.max_connections)
        )
        for listening in self.listening.sockets:
            # asyncio also made `backlog` the kernel's queue; waiting there holds no descriptor of
            # ours, so it is long (a short one drops SYNs, and clients wait a second to retry).
            with socket.fromfd(listening.fileno(), listening.family, listening.type) as dup:
                dup.listen(LISTEN_QUEUE)
        self.port = int(self.listening.sockets[0].getsockname()[1])  # the bound port when 0 was asked

    async def stop(self) -> None:
        if self.listening is not None:
            self.listening.close()
        await super().stop()
