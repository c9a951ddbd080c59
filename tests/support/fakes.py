"""Fake HTTP services on loopback for notifier tests: real aiohttp servers, real sockets.

Each fake records every request and answers like the real service; a test can script what the
next requests to a path get (fail N times, 429 with a retry-after, stall, a service-shaped
error) before the fake falls back to its normal behaviour:

    async with FakeTelegram(token="123:abc") as tg:
        tg.fail(500, times=2)              # the next two sendMessage calls get 500
        notifier = TelegramNotifier(TelegramConfig(token="123:abc", chat_id="42", api_base=tg.url), http=http)
        ...
        assert tg.messages[-1]["text"].startswith("🔔")

`FakeTelegram` (with the bot's side: updates, callback answers, edits), `FakeSlack` (incoming webhook
and Web API, chat.update included) and `FakeWebhook` share the scripting
API of `FakeServer` (`fail`, `rate_limit`, `stall`, `reject_auth`, `script`), which acts on the
service's delivery path unless given another.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import inspect
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, Self, TypeVar

import msgspec
from aiohttp import web
from multidict import CIMultiDict

from support.project import free_port

T = TypeVar("T")


@dataclass
class Reply:
    """One scripted answer. `json` wins over `text`; `delay_s` stalls before answering (a stall
    ends early when the server stops, so teardown stays fast); `echo` appends the request path
    and query to the text, and `echo_headers` those headers, as careless servers and proxies do
    in error pages."""

    status: int = 200
    json: Any = None
    text: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    echo: bool = False
    echo_headers: tuple[str, ...] = ()  # request headers quoted back in the text (an Authorization, say)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    body: bytes
    json: Any
    at: float


def closed_port_url() -> str:
    """A loopback URL on which nothing listens (connection refused)."""
    return f"http://127.0.0.1:{free_port()}"


class FakeServer:
    """A recording HTTP server on 127.0.0.1 and a random port, with per-path scripted replies."""

    default_path = "/"

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._scripts: dict[str, deque[Reply]] = {}
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.port = 0

    # -- life cycle --

    async def start(self) -> Self:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        self.add_routes(app)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # access_log=None: aiohttp's access log would print request paths (with tokens) into caplog.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def stop(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def add_routes(self, app: web.Application) -> None:
        """Routes a service needs besides the recorded request/reply ones (a WebSocket)."""

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- on a thread of its own --

    @contextlib.contextmanager
    def threaded(self) -> Iterator[Self]:
        """Serve from a background thread's event loop (for a daemon running in a subprocess);
        `threadsafe` calls the fake's methods on that loop."""
        loop = asyncio.new_event_loop()
        started = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.start())
            started.set()
            loop.run_forever()

        thread = threading.Thread(target=serve, daemon=True, name=type(self).__name__)
        thread.start()
        started.wait(10)
        self._loop = loop
        try:
            yield self
        finally:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()
            self._loop = None

    def threadsafe(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """fn(*args, **kwargs) on the fake's own loop (it is served by `threaded`), and its result
        (awaited there when fn is a coroutine function)."""
        assert self._loop is not None, "threadsafe is for a fake served by threaded()"

        async def call() -> Any:
            result = fn(*args, **kwargs)
            return await result if inspect.isawaitable(result) else result

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(10)

    # -- scripting --

    def script(self, *replies: Reply, path: str | None = None) -> None:
        """Queue replies for the next requests to `path` (default: the delivery path)."""
        self._scripts.setdefault(path or self.default_path, deque()).extend(replies)

    def fail(
        self, status: int = 500, times: int = 1, *, path: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        """The next `times` requests get `status`, with the service's error body for it."""
        reply = self.error_reply(status)
        reply.headers.update(headers or {})
        self.script(*[reply] * times, path=path)

    def rate_limit(
        self, retry_after: float = 7, times: int = 1, *, path: str | None = None, http_date: bool = False
    ) -> None:
        """429 with the service's retry-after (a `Retry-After` header, as seconds or an HTTP-date)."""
        reply = self.rate_limit_reply(retry_after)
        if http_date:
            reply.headers["Retry-After"] = formatdate(time.time() + retry_after, usegmt=True)
        self.script(*[reply] * times, path=path)

    def stall(self, seconds: float, times: int = 1, *, path: str | None = None) -> None:
        """The next `times` requests hang for `seconds` before an ordinary success."""
        self.script(*[Reply(delay_s=seconds, status=-1)] * times, path=path)

    def recover(self, path: str | None = None) -> None:
        """Drop the replies still scripted for `path`: the service answers normally again."""
        self._scripts.pop(path or self.default_path, None)

    def reject_auth(self, times: int = 1, *, path: str | None = None) -> None:
        """The service's own way of refusing the credentials."""
        self.script(*[self.error_reply(401)] * times, path=path)

    # -- the service's shapes (overridden per service) --

    def error_reply(self, status: int) -> Reply:
        return Reply(status, text=f"error {status}")

    def rate_limit_reply(self, retry_after: float) -> Reply:
        return Reply(429, text="slow down", headers={"Retry-After": f"{retry_after:g}"})

    async def respond(self, req: Request) -> Reply:
        """The normal answer when nothing is scripted."""
        return Reply(200, json={"ok": True})

    # -- inspection --

    def requests_to(self, path: str | None = None) -> list[Request]:
        path = path or self.default_path
        return [r for r in self.requests if r.path == path]

    # -- the handler --

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        decoded: Any = None
        if body:
            with contextlib.suppress(msgspec.DecodeError):
                decoded = msgspec.json.decode(body)
        req = Request(
            request.method, request.path, dict(request.query), CIMultiDict(request.headers), body, decoded, time.time()
        )
        self.requests.append(req)
        queue = self._scripts.get(request.path)
        reply = queue.popleft() if queue else await self.respond(req)
        if reply.delay_s:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), reply.delay_s)
        if reply.status == -1:  # a stall that then succeeds normally
            reply = await self.respond(req)
        if reply.json is not None:
            return web.json_response(reply.json, status=reply.status, headers=reply.headers)
        text = reply.text or ""
        if reply.echo:
            text += f" {request.path_qs}"
        for name in reply.echo_headers:
            text += f" {name}: {request.headers.get(name, '')}"
        return web.Response(status=reply.status, text=text, headers=reply.headers)


class FakeSlack(FakeServer):
    """An incoming webhook at `webhook_url` and the Web API under `api_base` (`chat.postMessage`,
    `auth.test`, bearer token checked). `mode` picks which one the scripting helpers act on."""

    def __init__(
        self,
        mode: str = "webhook",
        token: str = "xoxb-test-token",
        hook_secret: str = "XXXXtesthook",
        channels: set[str] | None = None,
    ) -> None:
        super().__init__()
        assert mode in ("webhook", "api")
        self.mode = mode
        self.token = token
        self.hook_path = f"/services/T0000/B0000/{hook_secret}"
        self.channels = channels  # None: every channel exists and the bot is in it
        self.messages: list[dict[str, Any]] = []
        self.posted_ts: set[str] = set()  # chat.postMessage timestamps: what chat.update may edit
        self.updates: list[dict[str, Any]] = []  # chat.update calls that succeeded
        self._ts = itertools.count(100)
        self.default_path = self.hook_path if mode == "webhook" else "/api/chat.postMessage"

    @property
    def webhook_url(self) -> str:
        return self.url + self.hook_path

    @property
    def api_base(self) -> str:
        return self.url + "/api"

    def slack_error(
        self, error: str, times: int = 1, *, path: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        """The Web API's HTTP 200 `{"ok": false, "error": error}`."""
        self.script(
            *[Reply(200, json={"ok": False, "error": error}, headers=dict(headers or {}))] * times,
            path=path or "/api/chat.postMessage",
        )

    def error_reply(self, status: int) -> Reply:
        if self.mode == "api":
            if status == 401:  # the Web API says it in the body, with HTTP 200
                return Reply(200, json={"ok": False, "error": "invalid_auth"})
            return Reply(status, json={"ok": False, "error": "fatal_error" if status >= 500 else "invalid_request"})
        code = {
            400: "invalid_payload",
            401: "invalid_token",
            403: "invalid_token",
            404: "no_service",
            410: "channel_is_archived",
            500: "rollup_error",
        }.get(status, "error")
        return Reply(status, text=code)

    def recover(self, path: str | None = None) -> None:
        """Drop the replies still scripted for `path`: the service answers normally again."""
        self._scripts.pop(path or self.default_path, None)

    def reject_auth(self, times: int = 1, *, path: str | None = None) -> None:
        if self.mode == "api":
            self.slack_error("invalid_auth", times, path=path)
        else:
            self.script(*[Reply(403, text="invalid_token")] * times, path=path)

    def rate_limit_reply(self, retry_after: float) -> Reply:
        if self.mode == "api":
            return Reply(429, json={"ok": False, "error": "ratelimited"}, headers={"Retry-After": f"{retry_after:g}"})
        return Reply(429, text="rate_limited", headers={"Retry-After": f"{retry_after:g}"})

    @staticmethod
    def blocks_problem(payload: dict[str, Any]) -> str | None:
        blocks = payload.get("blocks")
        if blocks is None:
            return None if payload.get("text") else "no_text"
        if not isinstance(blocks, list) or len(blocks) > 50:
            return "invalid_blocks"
        for b in blocks:
            if b.get("type") == "section" and len(b.get("text", {}).get("text", "")) > 3000:
                return "invalid_blocks"
        return None

    async def respond(self, req: Request) -> Reply:
        payload: dict[str, Any] = req.json if isinstance(req.json, dict) else {}
        if req.path == self.hook_path:
            problem = self.blocks_problem(payload)
            if req.json is None or problem:
                return Reply(400, text=problem or "invalid_payload")
            self.messages.append(payload)
            return Reply(200, text="ok")
        if req.path.startswith("/services/"):
            return Reply(404, text="no_service")
        if not req.path.startswith("/api/"):
            return Reply(404, text="not found")
        if req.headers.get("Authorization") != f"Bearer {self.token}":
            return Reply(
                json={"ok": False, "error": "not_authed" if "Authorization" not in req.headers else "invalid_auth"}
            )
        method = req.path[len("/api/") :]
        if method == "auth.test":
            return Reply(
                json={
                    "ok": True,
                    "url": "https://test.slack.com/",
                    "team": "Test",
                    "user": "watchd",
                    "team_id": "T0000",
                    "user_id": "U0000",
                }
            )
        if method == "chat.update":
            if payload.get("ts") not in self.posted_ts or not payload.get("channel"):
                return Reply(json={"ok": False, "error": "message_not_found"})
            self.updates.append(payload)
            return Reply(json={"ok": True, "channel": payload["channel"], "ts": payload["ts"]})
        if method != "chat.postMessage":
            return Reply(json={"ok": False, "error": "unknown_method"})
        channel = payload.get("channel")
        if not channel or (self.channels is not None and channel not in self.channels):
            return Reply(json={"ok": False, "error": "channel_not_found"})
        problem = self.blocks_problem(payload)
        if problem:
            return Reply(json={"ok": False, "error": problem})
        self.messages.append(payload)
        ts = f"{int(time.time())}.{next(self._ts):06d}"
        self.posted_ts.add(ts)
        return Reply(json={"ok": True, "channel": "C0000", "ts": ts, "message": {"text": payload.get("text")}})


class FakeWebhook(FakeServer):
    """A handoff receiver at `/hook`: checks the signature when given the secret (401 if wrong),
    deduplicates by `X-Watchd-Handoff-Id` like a careful receiver, answers 200."""

    default_path = "/hook"

    def __init__(self, secret: str | None = None, header: str = "X-Watchd-Signature-256") -> None:
        super().__init__()
        self.secret = secret
        self.header = header
        self.deliveries: list[dict[str, Any]] = []  # accepted bodies, duplicates included
        self.handoff_ids: list[str] = []  # in arrival order, duplicates included

    @property
    def hook_url(self) -> str:
        return self.url + self.default_path

    @property
    def unique_ids(self) -> set[str]:
        return set(self.handoff_ids)

    def signature_ok(self, req: Request) -> bool:
        if self.secret is None:
            return True
        expected = "sha256=" + hmac.new(self.secret.encode(), req.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, req.headers.get(self.header, ""))

    def error_reply(self, status: int) -> Reply:
        return Reply(status, json={"error": f"HTTP {status}"})

    async def respond(self, req: Request) -> Reply:
        if req.path != self.default_path:
            return Reply(404, text="no such hook")
        if not self.signature_ok(req):
            return Reply(401, json={"error": "bad signature"})
        if not isinstance(req.json, dict):
            return Reply(400, json={"error": "body is not a JSON object"})
        hid = req.headers.get("X-Watchd-Handoff-Id", "")
        duplicate = hid in self.handoff_ids
        self.handoff_ids.append(hid)
        self.deliveries.append(req.json)
        return Reply(200, json={"received": hid, "duplicate": duplicate})
