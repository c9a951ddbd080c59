"""The HTTP listener in-process for tests: a real aiohttp server on 127.0.0.1 in a thread with its
own event loop, publishing to a real nats-server. Tests talk to it over plain sockets, so any bytes
(bad request lines, control characters, half-sent headers) can be sent."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from aiohttp import web
from nats.aio.client import Client

from watchd import bus
from watchd.ingress import Ingress, serve
from watchd.jspublish import JetStreamPublisher
from watchd.limits import MAX_EVENT_BYTES, MAX_HTTP_BODY_BYTES
from watchd.listener import ConnectionLimits, ListenerSite

T = TypeVar("T")


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> str:
        payload = self.json
        assert isinstance(payload, dict) and isinstance(payload.get("error"), str), payload
        return payload["error"]


def build_request(
    method: str,
    target: str | bytes,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    host: str | None = None,
) -> bytes:
    """Raw HTTP/1.1 bytes; `Connection: close` so the answer ends with the connection."""
    hdrs = {"Host": host, "Connection": "close", **(headers or {})}
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k in hdrs):
        hdrs["Content-Length"] = str(len(body))
    raw_target = target if isinstance(target, bytes) else target.encode("utf-8", "surrogateescape")
    lines = [method.encode() + b" " + raw_target + b" HTTP/1.1"]
    lines += [f"{k}: {v}".encode("utf-8", "surrogateescape") for k, v in hdrs.items() if v is not None]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def parse_response(raw: bytes) -> Response:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, f"no complete response: {raw[:200]!r}"
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return Response(int(status_line.split(" ")[1]), headers, body)


def exchange(port: int, data: bytes, timeout_s: float = 10.0) -> Response:
    """Send raw bytes, read until the server closes; the parsed answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return parse_response(b"".join(chunks))


@dataclass
class Listener:
    """Ingress + listener + nats-server, started by start() and stopped by stop()."""

    root: Path
    token: str | None = None
    max_body: int = MAX_HTTP_BODY_BYTES
    max_event_bytes: int = MAX_EVENT_BYTES
    allowed_hosts: tuple[str, ...] = ()
    limits: ConnectionLimits = field(default_factory=lambda: ConnectionLimits(max_connections=64))
    body_timeout_s: float = 30.0
    port: int = 0
    ingress: Ingress | None = None
    nc: Client | None = None
    nats: bus.EmbeddedNats | None = None
    runner: web.AppRunner | None = None
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    thread: threading.Thread | None = None

    def start(self) -> Listener:
        self.thread = threading.Thread(target=self.loop.run_forever, name="ingress-loop", daemon=True)
        self.thread.start()
        self.call(self._start())
        return self

    async def _start(self) -> None:
        self.nats = bus.EmbeddedNats(self.root / "nats", listen="127.0.0.1:0")
        await self.nats.start()
        self.nc = await bus.connect(self.nats.url, name="ingress-test")
        js = self.nc.jetstream()
        await bus.ensure_streams(js)

        def health() -> dict[str, Any]:
            ok = self.nc is not None and self.nc.is_connected
            return {"ok": ok, "engine": True, "nats": ok, "events": 0, "last_seq": 0, "watches": 0}

        self.ingress = Ingress(
            publish=JetStreamPublisher(self.nc).publish_event,
            health=health,
            token=self.token,
            max_body=self.max_body,
            max_event_bytes=lambda: self.max_event_bytes,
            allowed_hosts=self.allowed_hosts,
            body_timeout_s=self.body_timeout_s,
        )
        self.runner, self.port = await serve(self.ingress, "127.0.0.1", 0, self.limits)

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def stop(self) -> None:
        async def go() -> None:
            if self.runner is not None:
                await self.runner.cleanup()
            if self.nc is not None:
                await self.nc.close()
            if self.nats is not None:
                await self.nats.stop()
            # Connections cut off mid-request may still be finishing: end them here, not in a GC
            # that runs later, in another test, against a closed loop.
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        try:
            self.call(go())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            assert self.thread is not None
            self.thread.join(10)
            self.loop.close()

    # ---- talking to it ----

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def request(
        self, method: str, target: str | bytes, body: bytes = b"", headers: dict[str, str] | None = None, **kw: Any
    ) -> Response:
        kw.setdefault("host", self.host)
        return exchange(self.port, build_request(method, target, body, headers, **kw))

    def post_json(self, subject: str, data: Any = None, headers: dict[str, str] | None = None) -> Response:
        body = b"" if data is None else json.dumps(data).encode()
        return self.request("POST", f"/events/{subject}", body, {"Content-Type": "application/json", **(headers or {})})

    # ---- what NATS holds ----

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected and not self.nc.is_closed

    def last_seq(self) -> int:
        async def go() -> int:
            assert self.nc is not None
            info = await self.nc.jetstream().stream_info(bus.EVENTS_STREAM)
            return int(info.state.last_seq)

        return self.call(go())

    def stored(self, seq: int) -> tuple[str, dict[str, Any]]:
        """(NATS subject, envelope) of the EVENTS stream's message at seq."""

        async def go() -> tuple[str, dict[str, Any]]:
            assert self.nc is not None
            msg = await self.nc.jetstream().get_msg(bus.EVENTS_STREAM, seq)
            return msg.subject, msgspec.json.decode(msg.data)

        return self.call(go())

    def open_connections(self) -> int:
        """Sockets the listener holds now."""
        assert self.runner is not None
        (site,) = self.runner.sites
        assert isinstance(site, ListenerSite) and site.gate is not None
        return len(site.gate.open)
