"""The telegram source: a bot's `getUpdates` long polling (no public URL needed), so "wake the agent
when this chat says X" is a plain watch on `chat.message`.

- A message (or an edited one, or a channel post) from an allowed chat and sender becomes an event
  on `subject` (default `chat.message`) with id `tg-<update_id>`: chat, sender, text, reply_to.
  Others are dropped and counted by reason (`chat`, `sender`) in the source's health.
- A press of one of watchd's buttons (`callback_query` whose data is `<action>:<handoff id>`) by an
  allowed user becomes a `chat.answer` event (chat.py), and is answered (`answerCallbackQuery`)
  once stored, so the user's button stops spinning only when the answer is safe. A press by anyone
  else is answered "not allowed" and publishes nothing.

Position: the next `offset`, persisted after JetStream acknowledged the updates before it. Telegram
keeps an update until a getUpdates call sends an offset past it, so after kill -9 the same updates
come again and their ids make them land once.

The bot token is in every request's path: it is never logged or shown (http_client scrubs it).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

from watchd.errors import WatchdError
from watchd.notify import http_client
from watchd.notify.http_client import HttpClient, Response
from watchd.sources.base import Emit, Source, SourceContext
from watchd.sources.chat import ANSWER_SUBJECT, AllowList, answer_data, parse_button
from watchd.sources.settings import SourceSettings, TelegramSettings, subject_of

log = logging.getLogger("watchd.sources.telegram")

SERVICE = "Telegram"
POLL_TIMEOUT_S = 25  # Telegram holds a getUpdates call this long when nothing happens
UPDATE_KINDS = ["message", "edited_message", "channel_post", "callback_query"]
BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
NOT_ALLOWED = "You are not allowed to answer this alert."
MAX_TEXT = 4096


class TelegramSource(Source):
    type_name: ClassVar[str] = "telegram"

    def __init__(self, name: str, settings: SourceSettings, *, poll_timeout_s: int = POLL_TIMEOUT_S) -> None:
        super().__init__(name, settings)
        assert isinstance(settings, TelegramSettings)
        self.cfg = settings
        self.subject = subject_of(settings) or "chat.message"
        self.allow = AllowList.of(settings.chats, settings.senders)
        self.poll_timeout_s = poll_timeout_s
        self._token_ref = http_client.secret_ref(settings.token, "token")
        self._token = ""
        self._warned: set[str] = set()  # chats and senders whose drop was logged once
        self._http: HttpClient | None = None  # while it runs: see run

    def _url(self, method: str) -> str:
        return f"{self.cfg.api_base.rstrip('/')}/bot{self._token}/{method}"

    @property
    def _secrets(self) -> list[str]:
        return [self._token, f"bot{self._token}"]

    async def _call(self, method: str, payload: dict[str, Any], timeout_s: float) -> Response | str:
        """The Bot API's answer to one call, or why there is none (a safe, scrubbed line)."""
        resp = await self.http.send(
            "POST",
            self._url(method),
            name=f"source {self.name}",
            service=SERVICE,
            secrets=self._secrets,
            timeout_s=timeout_s,
            json=payload,
        )
        return resp if isinstance(resp, Response) else resp.detail

    # -- running --

    @property
    def http(self) -> HttpClient:
        assert self._http is not None, "the client exists only while the source runs"
        return self._http

    async def run(self, ctx: SourceContext) -> None:
        # A client session of its own for each run, closed when the run ends (a restart opens another):
        # a source also runs outside the daemon (`watchd source run`), and its requests wait longest.
        async with HttpClient() as self._http:
            await self._run(ctx)

    def _prepare(self) -> None:
        token = http_client.resolve(f"source {self.name}", self.cfg.token, "token")
        if not token:
            raise WatchdError(f"source {self.name}: the Telegram bot token is empty", hint=f"set {self._token_ref}")
        self._token = token
        http_client.check_http_url(f"source {self.name}", self.cfg.api_base, "api_base")

    async def once(self, ctx: SourceContext) -> None:
        """One getUpdates that does not wait, from the saved offset (so it confirms nothing new);
        no press is answered."""
        self._prepare()
        payload: dict[str, Any] = {"timeout": 0, "allowed_updates": UPDATE_KINDS}
        if isinstance(offset := ctx.position.get("offset"), int):
            payload["offset"] = offset
        async with HttpClient() as self._http:
            updates, _ = self._updates(await self._call("getUpdates", payload, 15), ctx)
            if updates:
                await self._handle(updates, ctx, answer=False)

    async def _run(self, ctx: SourceContext) -> None:
        self._prepare()
        offset = ctx.position.get("offset")
        # Dry (`watchd source test`): never send an offset past the saved one, which would make
        # Telegram forget the updates before the daemon stored them; show each update once.
        dry, seen = ctx.outlet.dry, set[int]()
        failures = 0
        while not ctx.stop.is_set():
            timeout = 0 if dry else self.poll_timeout_s
            payload: dict[str, Any] = {"timeout": timeout, "allowed_updates": UPDATE_KINDS}
            if isinstance(offset, int):
                payload["offset"] = offset
            call = asyncio.ensure_future(self._call("getUpdates", payload, self.poll_timeout_s + 15))
            stop = asyncio.ensure_future(ctx.stop.wait())
            await asyncio.wait({call, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if not call.done():
                call.cancel()
                return
            updates, retry_after = self._updates(call.result(), ctx)
            if updates is None:
                failures += 1
                wait = retry_after if retry_after is not None else BACKOFF_S[min(failures, len(BACKOFF_S)) - 1]
                if await ctx.sleep(wait):
                    return
                continue
            failures = 0
            if dry:
                updates = [u for u in updates if u.get("update_id") not in seen]
                seen.update(u["update_id"] for u in updates if isinstance(u.get("update_id"), int))
                if updates:
                    await self._handle(updates, ctx)
                if await ctx.sleep(1.0):
                    return
            elif updates:
                offset = await self._handle(updates, ctx)

    def _updates(self, resp: Response | str, ctx: SourceContext) -> tuple[list[dict[str, Any]] | None, float | None]:
        """The updates of a getUpdates answer; (None, retry_after) after a passing failure, which is
        recorded; WatchdError for one that waiting does not cure (a wrong token)."""
        if isinstance(resp, str):
            ctx.health.failed(resp, ctx.clock())
            log.warning("%s", resp)
            return None, None
        body = resp.data if isinstance(resp.data, dict) else {}
        if resp.status == 200 and body.get("ok") is True and isinstance(body.get("result"), list):
            return [u for u in body["result"] if isinstance(u, dict)], None
        code = body.get("error_code") if isinstance(body.get("error_code"), int) else resp.status
        said = http_client.scrub(http_client.first_line(str(body.get("description") or "")), self._secrets)
        where = f"source {self.name}: Telegram getUpdates failed ({code}{': ' + said if said else ''})"
        if code in (401, 404):
            raise WatchdError(
                f"source {self.name}: Telegram rejected the bot token ({code})", hint=f"check {self._token_ref}"
            )
        if code == 409:
            hint = (
                "a webhook is set for this bot: remove it (deleteWebhook) to use getUpdates"
                if "webhook" in said.lower()
                else "another program polls this bot: only one may; give watchd a bot of its own"
            )
            where += f": {hint}"
        params = _dict(body.get("parameters"))
        retry_after = params.get("retry_after") if isinstance(params.get("retry_after"), int | float) else None
        ctx.health.failed(where, ctx.clock())
        log.warning("%s", where)
        return None, float(retry_after) if retry_after is not None else resp.retry_after_s

    async def _handle(self, updates: list[dict[str, Any]], ctx: SourceContext, answer: bool = True) -> int | None:
        """Publish the events of some updates, then persist the next offset; answer the presses."""
        emits: list[Emit] = []
        presses: list[tuple[str, str]] = []  # (callback query id, text to show)
        ids = [u["update_id"] for u in updates if isinstance(u.get("update_id"), int)]
        last: int | None = max(ids) if ids else None
        for update in updates:
            uid = update.get("update_id")
            if not isinstance(uid, int):
                continue
            query = update.get("callback_query")
            if isinstance(query, dict):
                emit, shown = self._press(uid, query, ctx)
                if emit is not None:
                    emits.append(emit)
                if isinstance(query.get("id"), str):
                    presses.append((query["id"], shown))
                continue
            for kind in ("message", "edited_message", "channel_post"):
                message = update.get(kind)
                if isinstance(message, dict):
                    emit = self._message(uid, message, kind == "edited_message", ctx)
                    if emit is not None:
                        emits.append(emit)
                    break
        if last is None:
            return None
        if ctx.outlet.dry:
            await ctx.emit(emits)
            return None  # nobody is told anything: no offset, no answered press
        await ctx.emit(emits, {"offset": last + 1})
        for query_id, shown in presses if answer else []:
            await self._answer_press(query_id, shown)
        return last + 1

    def _dropped(self, reason: str, who: str, ctx: SourceContext) -> None:
        ctx.health.rejections[reason] += 1
        if who not in self._warned and len(self._warned) < 1000:
            self._warned.add(who)
            log.info("source %s: dropped what %s sent: not in `%ss`", self.name, who, reason)

    def _message(self, uid: int, message: dict[str, Any], edited: bool, ctx: SourceContext) -> Emit | None:
        chat = _dict(message.get("chat"))
        sender = message.get("from") if isinstance(message.get("from"), dict) else None
        chat_id = str(chat.get("id", ""))
        sender_id = str(sender["id"]) if sender and "id" in sender else None
        username = sender.get("username") if sender else None
        moved = message.get("migrate_to_chat_id")
        if isinstance(moved, int) and self.allow.chats and chat_id in self.allow.chats:
            # An allowed group became a supergroup: its id changed, and the old one hears nothing more.
            said = f"source {self.name}: chat {chat_id} became a supergroup: add {moved} to `chats`"
            ctx.health.failed(said, ctx.clock())
            log.warning("%s", said)
            return None
        refusal = self.allow.refusal(chat_id, sender_id, username if isinstance(username, str) else None)
        if refusal is not None:
            self._dropped(refusal, f"chat {chat_id}" if refusal == "chat" else f"sender {sender_id}", ctx)
            return None
        data: dict[str, Any] = {
            "chat": chat_id,
            "chat_type": chat.get("type"),
            "chat_title": chat.get("title"),
            "sender": sender_id,
            "sender_name": _name(sender),
            "sender_username": username,
            "text": _text_of(message),
            "message": str(message.get("message_id", "")),
            "reply_to": _reply(message.get("reply_to_message")),
            "edited": edited,
            "platform": "telegram",
        }
        date = message.get("edit_date") if edited else message.get("date")
        return Emit(self.subject, data, f"tg-{uid}", float(date) if isinstance(date, int) else None)

    def _press(self, uid: int, query: dict[str, Any], ctx: SourceContext) -> tuple[Emit | None, str]:
        """The answer event of a button press and what to show the presser."""
        parsed = parse_button(query.get("data"))
        if parsed is None:
            return None, ""  # not one of watchd's buttons: stop its spinner, nothing else
        sender = _dict(query.get("from"))
        message = _dict(query.get("message"))
        chat = _dict(message.get("chat"))
        chat_id, sender_id = str(chat.get("id", "")), str(sender.get("id", ""))
        username = sender.get("username")
        refusal = self.allow.refusal(chat_id, sender_id or None, username if isinstance(username, str) else None)
        if refusal is not None:
            self._dropped(refusal, f"chat {chat_id}" if refusal == "chat" else f"sender {sender_id}", ctx)
            return None, NOT_ALLOWED
        action, target = parsed
        data = answer_data(
            action,
            target,
            by=f"telegram:{sender_id}",
            chat=chat_id,
            message=str(message.get("message_id", "")),
            source=self.name,
        )
        return Emit(ANSWER_SUBJECT, data, f"tg-{uid}"), {"ack": "Acked", "snooze": "Snoozed", "mute": "Muted"}[action]

    async def _answer_press(self, query_id: str, text: str) -> None:
        payload: dict[str, Any] = {"callback_query_id": query_id}
        if text:
            payload["text"] = text
        resp = await self._call("answerCallbackQuery", payload, 10)
        if isinstance(resp, str) or resp.status != 200:
            # The press is stored already; only the spinner stays until Telegram gives up on it.
            why = resp if isinstance(resp, str) else f"HTTP {resp.status}"
            log.info("source %s: answerCallbackQuery failed: %s", self.name, why)


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _name(user: dict[str, Any] | None) -> str | None:
    if not user:
        return None
    parts = [user.get("first_name"), user.get("last_name")]
    return " ".join(p for p in parts if isinstance(p, str) and p) or None


def _text_of(message: dict[str, Any]) -> str:
    text = message.get("text")
    if not isinstance(text, str):
        text = message.get("caption")  # a photo, a document: its caption
    return text[:MAX_TEXT] if isinstance(text, str) else ""


def _reply(message: object) -> dict[str, Any] | None:
    """The message replied to: enough to tell a reply to watchd's alert from chatter."""
    if not isinstance(message, dict):
        return None
    sender = message.get("from") if isinstance(message.get("from"), dict) else None
    return {
        "message": str(message.get("message_id", "")),
        "sender": str(sender["id"]) if sender and "id" in sender else None,
        "from_bot": bool(sender.get("is_bot")) if sender else False,
        "text": _text_of(message),
    }
