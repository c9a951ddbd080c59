"""Telegram: `sendMessage` through the Bot API (https://core.telegram.org/bots/api#sendmessage).

The bot token is part of the request path (`/bot<token>/sendMessage`), so the URL is a secret:
it is built per request and never appears in a detail, a log line or a repr.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from watchd.config import TelegramNotifier as TelegramConfig
from watchd.dispatch import Dead, Delivered, Outcome, Retry
from watchd.errors import WatchdError
from watchd.model import Handoff
from watchd.notify import buttons, http_client
from watchd.notify.http_client import DEFAULT_TIMEOUT_S, HttpClient, Response, first_line, parse_retry_after
from watchd.notify.render import render, truncate

log = logging.getLogger("watchd.notify.telegram")

MAX_TEXT = 4096  # sendMessage: 1-4096 characters after entities parsing (UTF-16 units, to be safe)
SERVICE = "Telegram"


class TelegramNotifier:
    """A chat message per handoff. `name` is the target name (`notify.phone`) used in every detail."""

    def __init__(
        self,
        cfg: TelegramConfig,
        *,
        http: HttpClient,
        name: str = "notify.telegram",
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.http = http  # the daemon's client session: shared, closed by its owner
        self.name = name
        self.timeout_s = timeout_s
        self.chat_id = str(cfg.chat_id).strip()
        self._token_ref = http_client.secret_ref(cfg.token, "token")
        token = http_client.resolve(name, cfg.token, "token")
        if not token:
            raise WatchdError(f"{name}: the Telegram bot token is empty", hint=f"set {self._token_ref}")
        if not self.chat_id:
            raise WatchdError(f"{name}: chat_id is empty", hint="set chat_id to the chat's numeric id or @channel")
        http_client.check_http_url(name, cfg.api_base, "api_base")
        self._token = token
        self._api_base = cfg.api_base.rstrip("/")
        self.buttons = cfg.buttons

    def __repr__(self) -> str:
        return f"TelegramNotifier({self.name!r}, chat_id={self.chat_id!r})"

    @property
    def _secrets(self) -> list[str]:
        return [self._token, f"bot{self._token}"]

    async def _call(self, method: str, payload: dict[str, Any] | None = None) -> Response | Retry | Dead:
        return await self.http.send(
            "POST",
            f"{self._api_base}/bot{self._token}/{method}",
            name=self.name,
            service=SERVICE,
            secrets=self._secrets,
            timeout_s=self.timeout_s,
            json=payload if payload is not None else {},
        )

    async def deliver(self, handoff: Handoff) -> Outcome:
        text = truncate(render(handoff), MAX_TEXT, utf16=True)
        payload: dict[str, Any] = {"chat_id": self.chat_id, "text": text, "disable_web_page_preview": True}
        keyboard = buttons.telegram_keyboard(handoff) if self.buttons else None
        if keyboard is not None:
            payload["reply_markup"] = keyboard
        resp = await self._call("sendMessage", payload)
        outcome = resp if not isinstance(resp, Response) else self._classify(resp)
        if not isinstance(outcome, Delivered):
            log.info("%s: %s", self.name, outcome.detail)
        return outcome

    async def edit_answered(self, chat: str, message: str, text: str) -> str | None:
        """`editMessageText` after someone answered from the chat: the new text, and no buttons
        (an edit without reply_markup removes them). None when done, else why not."""
        if not message.isdigit():
            return f"{self.name}: {message!r} is not a Telegram message id"
        payload = {"chat_id": chat, "message_id": int(message), "text": truncate(text, MAX_TEXT, utf16=True)}
        resp = await self._call("editMessageText", payload)
        outcome = resp if not isinstance(resp, Response) else self._classify(resp)
        return None if isinstance(outcome, Delivered) else outcome.detail

    async def probe(self) -> tuple[bool, str]:
        """`getMe`: is the token valid and the API reachable? Sends nothing to the chat."""
        resp = await self._call("getMe")
        if not isinstance(resp, Response):
            return False, resp.detail
        outcome = self._classify(resp)
        if not isinstance(outcome, Delivered):
            return False, outcome.detail
        result = resp.data.get("result") if isinstance(resp.data, dict) else None
        username = result.get("username") if isinstance(result, dict) else None
        return True, f"{self.name}: Telegram bot @{username or '?'} is reachable"

    def _classify(self, resp: Response) -> Outcome:
        body: dict[str, Any] = resp.data if isinstance(resp.data, dict) else {}
        status = resp.status
        if 200 <= status < 300 and body.get("ok") is True:
            result = body.get("result")
            msg_id = result.get("message_id") if isinstance(result, dict) else None
            return Delivered(f"Telegram message {msg_id}" if msg_id is not None else "Telegram accepted it")
        code = body.get("error_code")
        if 200 <= status < 300 and isinstance(code, int):
            status = code  # a 200 with ok=false is read by its error_code
        description = http_client.scrub(first_line(str(body.get("description") or "")), self._secrets)
        params = body.get("parameters")
        params = params if isinstance(params, dict) else {}
        retry_after: float | None = None
        if isinstance(params.get("retry_after"), int | float):
            retry_after = parse_retry_after(str(params["retry_after"]))
        if isinstance(params.get("migrate_to_chat_id"), int):
            # The group was upgraded to a supergroup: its id changed and the old one is gone for good.
            return Dead(
                f"{self.name}: the Telegram group became a supergroup ({status}): "
                f'set chat_id = "{params["migrate_to_chat_id"]}"'
            )
        if 200 <= status < 300:
            return Dead(f"{self.name}: Telegram answered without ok=true ({status}): check api_base")
        hints = {
            400: "check chat_id" if "chat" in description.lower() else "check chat_id and the message",
            401: f"check {self._token_ref}",
            403: f"the bot may not write to chat {self.chat_id}: start a chat with it or add it to the group",
            404: f"check {self._token_ref} and api_base",
        }
        if status == 401:
            return Dead(f"{self.name}: Telegram rejected the bot token (401): {hints[401]}")
        if status == 404 and not description.lower().startswith("bad request"):
            return Dead(f"{self.name}: Telegram does not know this bot token (404): {hints[404]}")
        return http_client.classify(
            replace(resp, status=status),
            name=self.name,
            service=SERVICE,
            hints=hints,
            secrets=self._secrets,
            reason=description,
            retry_after_s=retry_after,
        )
