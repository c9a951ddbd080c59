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


class FakeTelegram(FakeServer):
    """The Bot API under `url` (use it as api_base): `sendMessage`, `getMe`, and the bot's side of a
    chat: `getUpdates` long polling (offset confirms, timeout waits, a second poller ends the first
    with 409 as the real API does), `answerCallbackQuery` and `editMessageText`.

    `push_message` / `push_callback` put an update in the queue as a user writing in a chat or
    pressing an inline button would; `updates_after(offset)` is what a poller would get."""

    def __init__(
        self,
        token: str = "123456:TEST-token",
        chats: set[str] | None = None,
        username: str = "watchd_test_bot",
        first_update_id: int = 700_000_001,
    ) -> None:
        super().__init__()
        self.token = token
        self.chats = chats  # None: every chat exists
        self.username = username
        self.messages: list[dict[str, Any]] = []
        self.message_ids: list[int] = []  # of the sent messages, as `messages`
        self.callback_answers: list[dict[str, Any]] = []
        self.edits: list[dict[str, Any]] = []
        self.updates: list[dict[str, Any]] = []  # not yet confirmed by an offset
        self.confirmed_offset = 0  # the highest offset a poller sent: updates below it are gone
        self.polls = 0
        self._texts: dict[tuple[str, int], str] = {}  # (chat, message_id) -> text, for edits
        self._ids = itertools.count(1)
        self._update_ids = itertools.count(first_update_id)
        self._callback_ids = itertools.count(4_000_000_000_000_000_001)
        self._arrived = asyncio.Event()
        self._poller = 0  # generation of the current getUpdates call
        self.default_path = f"/bot{token}/sendMessage"

    @property
    def api_base(self) -> str:
        return self.url

    def method_path(self, method: str) -> str:
        """The path of a Bot API method, for scripting: `tg.fail(502, path=tg.method_path("getUpdates"))`."""
        return f"/bot{self.token}/{method}"

    # -- what users do in the chat --

    def push_update(self, body: dict[str, Any]) -> int:
        """Queue one update (`body` is its message/callback_query/… part); returns its update_id."""
        update_id = next(self._update_ids)
        self.updates.append({"update_id": update_id, **body})
        self._arrived.set()
        self._arrived = asyncio.Event()
        return update_id

    @staticmethod
    def user(user_id: int, first_name: str = "Ann", username: str | None = None) -> dict[str, Any]:
        found: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": first_name}
        if username:
            found["username"] = username
        return found

    @staticmethod
    def chat(chat_id: int, chat_type: str = "private", title: str | None = None) -> dict[str, Any]:
        found: dict[str, Any] = {"id": chat_id, "type": chat_type}
        if title:
            found["title"] = title
        return found

    def push_message(
        self,
        chat_id: int,
        text: str,
        *,
        sender_id: int | None = None,
        chat_type: str = "private",
        username: str | None = None,
        reply_to: dict[str, Any] | None = None,
        edited: bool = False,
    ) -> int:
        """A user (by default the chat's own user, as in a private chat) writes `text` in the chat."""
        message: dict[str, Any] = {
            "message_id": next(self._ids),
            "from": self.user(sender_id if sender_id is not None else chat_id, username=username),
            "chat": self.chat(chat_id, chat_type, None if chat_type == "private" else "Ops"),
            "date": int(time.time()),
            "text": text,
        }
        if reply_to is not None:
            message["reply_to_message"] = reply_to
        if edited:
            message["edit_date"] = int(time.time())
        return self.push_update({"edited_message" if edited else "message": message})

    def push_callback(
        self, data: str, *, sender_id: int, chat_id: int, message_id: int | None = None, text: str = "🔔 fired"
    ) -> int:
        """A user presses an inline button whose callback_data is `data` under the bot's message."""
        mid = message_id if message_id is not None else next(self._ids)
        message = {
            "message_id": mid,
            "from": {"id": int(self.token.split(":")[0] or 0), "is_bot": True, "first_name": "watchd"},
            "chat": self.chat(chat_id),
            "date": int(time.time()),
            "text": self._texts.get((str(chat_id), mid), text),
        }
        query = {
            "id": str(next(self._callback_ids)),
            "from": self.user(sender_id),
            "message": message,
            "chat_instance": f"-{chat_id}",
            "data": data,
        }
        return self.push_update({"callback_query": query})

    def updates_after(self, offset: int) -> list[dict[str, Any]]:
        return [u for u in self.updates if u["update_id"] >= offset]

    # -- the service's shapes --

    def error_reply(self, status: int) -> Reply:
        descriptions = {
            400: "Bad Request: chat not found",
            401: "Unauthorized",
            403: "Forbidden: bot was blocked by the user",
            404: "Not Found",
            409: "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running",
            500: "Internal Server Error",
            502: "Bad Gateway",
        }
        description = descriptions.get(status, f"Error {status}")
        return Reply(status, json={"ok": False, "error_code": status, "description": description})

    def rate_limit_reply(self, retry_after: float) -> Reply:
        n = int(retry_after)
        return Reply(
            429,
            json={
                "ok": False,
                "error_code": 429,
                "description": f"Too Many Requests: retry after {n}",
                "parameters": {"retry_after": n},
            },
        )

    @staticmethod
    def bad_request(description: str) -> Reply:
        return Reply(400, json={"ok": False, "error_code": 400, "description": description})

    @staticmethod
    def ok(result: Any) -> Reply:
        return Reply(json={"ok": True, "result": result})

    async def respond(self, req: Request) -> Reply:
        prefix = f"/bot{self.token}/"
        if not req.path.startswith(prefix):
            # The real API answers 401 for a well-formed unknown token and 404 for a malformed one.
            return self.error_reply(401 if req.path.startswith("/bot") and ":" in req.path else 404)
        method = req.path[len(prefix) :]
        # The Bot API takes parameters as a query string or a JSON body alike.
        params: dict[str, Any] = {**req.query, **(req.json if isinstance(req.json, dict) else {})}
        if method == "getMe":
            me = {"id": int(self.token.split(":")[0] or 0), "is_bot": True, "first_name": "watchd"}
            return self.ok({**me, "username": self.username})
        handlers = {
            "sendMessage": self._send_message,
            "getUpdates": self._get_updates,
            "answerCallbackQuery": self._answer_callback,
            "editMessageText": self._edit_message,
        }
        handler = handlers.get(method)
        return await handler(params) if handler else self.error_reply(404)

    async def _send_message(self, params: dict[str, Any]) -> Reply:
        text, chat_id = params.get("text"), params.get("chat_id")
        if not text or chat_id in (None, ""):
            return self.bad_request("Bad Request: message text is empty")
        if len(str(text).encode("utf-16-le")) // 2 > 4096:
            return self.bad_request("Bad Request: message is too long")
        if self.chats is not None and str(chat_id) not in self.chats:
            return self.error_reply(400)
        self.messages.append(params)
        message_id = next(self._ids)
        self.message_ids.append(message_id)
        self._texts[(str(chat_id), message_id)] = str(text)
        return self.ok({"message_id": message_id, "chat": {"id": chat_id}, "date": int(time.time()), "text": text})

    async def _get_updates(self, params: dict[str, Any]) -> Reply:
        try:
            offset = int(params.get("offset") or 0)
            timeout_s = float(params.get("timeout") or 0)
            limit = max(1, min(100, int(params.get("limit") or 100)))
        except (TypeError, ValueError):
            return self.bad_request("Bad Request: wrong parameter value")
        self.polls += 1
        if offset > 0:
            # "An update is considered confirmed as soon as getUpdates is called with an offset
            # higher than its update_id": confirmed updates are gone for every later call.
            self.confirmed_offset = max(self.confirmed_offset, offset)
            self.updates = [u for u in self.updates if u["update_id"] >= offset]
        self._poller += 1
        me = self._poller
        deadline = time.monotonic() + timeout_s
        while not self.updates and not self._closing.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            arrived = self._arrived
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), min(left, 0.2))
            if self._poller != me:  # a newer getUpdates call ends this one, as the real API does
                return self.error_reply(409)
        return self.ok(self.updates[:limit])

    async def _answer_callback(self, params: dict[str, Any]) -> Reply:
        if not params.get("callback_query_id"):
            return self.bad_request("Bad Request: query is too old and response timeout expired or query ID is invalid")
        self.callback_answers.append(params)
        return self.ok(True)

    async def _edit_message(self, params: dict[str, Any]) -> Reply:
        chat_id, text = str(params.get("chat_id", "")), params.get("text")
        try:
            key = (chat_id, int(params.get("message_id") or 0))
        except (TypeError, ValueError):
            return self.bad_request("Bad Request: message identifier is not specified")
        if not text:
            return self.bad_request("Bad Request: message text is empty")
        if key not in self._texts:
            return self.bad_request("Bad Request: message to edit not found")
        if self._texts[key] == text and "reply_markup" not in params:
            return self.bad_request(
                "Bad Request: message is not modified: specified new message content and reply markup are exactly "
                "the same as a current content and reply markup of the message"
            )
        self._texts[key] = str(text)
        self.edits.append(params)
        return self.ok({"message_id": key[1], "chat": {"id": params.get("chat_id")}, "text": text})

    def text_of(self, chat_id: int | str, message_id: int) -> str | None:
        """The message's text now (after edits)."""
        return self._texts.get((str(chat_id), message_id))


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
