"""Telegram's Bot API on loopback: a real aiohttp server (support/fakes.py's FakeServer) answering
`sendMessage`, `getMe`, and the bot's side of a chat: `getUpdates` long polling, `answerCallbackQuery`
and `editMessageText`.

    async with FakeTelegram(token="123:abc") as tg:
        tg.fail(500, times=2)              # the next two sendMessage calls get 500
        update_id = tg.push_message(42, "deploy failed")
        ...
        assert tg.messages[-1]["text"].startswith("🔔")
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from typing import Any

from support.fakes import FakeServer, Reply, Request


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
