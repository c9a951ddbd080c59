"""The slack source: Slack's Socket Mode (a WebSocket the app opens; no public URL needed), so
channel messages become `chat.message` events and presses of watchd's buttons `chat.answer`.

The app POSTs its app-level token (`xapp-…`) to `apps.connections.open`, connects to the URL it
gets, waits for `hello`, then reads envelopes: each carries an `envelope_id` to acknowledge, and
is acknowledged only after what it brought is stored in JetStream. Slack re-sends an envelope it
got no ack for (on this connection or the next), and the event ids make a re-send land once, so
kill -9 loses nothing and stores nothing twice. `disconnect` (Slack refreshes connections every
few hours) closes this socket and opens a new one; `link_disabled` is an error.

- `events_api` with a `message` event (no subtype, or a thread broadcast, file share or /me) in an
  allowed channel from an allowed sender becomes an event on `subject` (default `chat.message`)
  with id = Slack's `event_id`. Messages posted by bots (watchd's own notifications among them)
  and edits/deletions are passed over; other senders and channels are dropped and counted.
- `interactive` `block_actions` on one of watchd's buttons by an allowed user becomes
  `chat.answer` (chat.py) with id `slack-<trigger_id>`, unique per press and kept by a re-send.

A press by someone not allowed does nothing; with `bot_token` set, the presser alone is told so
(an ephemeral message). No state persists: Slack holds what was not acknowledged. The tokens are
never logged or shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, ClassVar

import aiohttp
import msgspec

from watchd.errors import WatchdError
from watchd.notify import http_client
from watchd.notify.http_client import HttpClient, Response
from watchd.sources.base import Emit, Source, SourceContext
from watchd.sources.chat import ANSWER_SUBJECT, AllowList
from watchd.sources.settings import SlackSettings, SourceSettings, subject_of
from watchd.sources.webhook import slack_answer

log = logging.getLogger("watchd.sources.slack")

SERVICE = "Slack"
HELLO_TIMEOUT_S = 30.0
ONCE_QUIET_S = 1.0  # `once` reads until the socket has been quiet this long
HEARTBEAT_S = 30.0  # ping the socket: a connection that died silently is noticed within a minute
BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
MESSAGE_SUBTYPES = (None, "thread_broadcast", "file_share", "me_message")
MAX_TEXT = 40_000
NOT_ALLOWED = "You are not allowed to answer this alert."  # Slack's own limit on a message's text


class SlackSource(Source):
    type_name: ClassVar[str] = "slack"
    positional: ClassVar[bool] = False  # Slack holds what was not acknowledged

    def __init__(self, name: str, settings: SourceSettings) -> None:
        super().__init__(name, settings)
        assert isinstance(settings, SlackSettings)
        self.cfg = settings
        self.subject = subject_of(settings) or "chat.message"
        self.allow = AllowList.of(settings.channels, settings.senders)
        self._token_ref = http_client.secret_ref(settings.app_token, "app_token")
        self._token = ""
        self._bot_token = ""  # optional: tells a presser who may not act so (chat.postEphemeral)
        self.connections = 0  # sockets opened (for health and tests)
        self._http: HttpClient | None = None  # while it runs: see run

    @property
    def _secrets(self) -> list[str]:
        return [self._token, self._bot_token]

    # -- connecting --

    async def _socket_url(self) -> str | None:
        """A fresh Socket Mode URL; None after a passing failure; WatchdError when the token is wrong."""
        resp = await self.http.send(
            "POST",
            f"{self.cfg.api_base.rstrip('/')}/apps.connections.open",
            name=f"source {self.name}",
            service=SERVICE,
            secrets=self._secrets,
            headers={"Authorization": f"Bearer {self._token}"},
            data=b"",
        )
        if not isinstance(resp, Response):
            raise _Passing(resp.detail)
        body = resp.data if isinstance(resp.data, dict) else {}
        if resp.status == 200 and body.get("ok") is True and isinstance(body.get("url"), str):
            return str(body["url"])
        error = str(body.get("error") or f"HTTP {resp.status}")[:80]
        if error in ("invalid_auth", "not_authed", "account_inactive", "token_revoked", "not_allowed_token_type"):
            hint = f"check {self._token_ref}: an app-level token (xapp-…) with connections:write"
            raise WatchdError(f"source {self.name}: Slack refused the app token ({error})", hint=hint)
        raise _Passing(f"source {self.name}: Slack apps.connections.open failed ({error})")

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
        token = http_client.resolve(f"source {self.name}", self.cfg.app_token, "app_token")
        if not token:
            raise WatchdError(f"source {self.name}: the Slack app token is empty", hint=f"set {self._token_ref}")
        self._token = token
        self._bot_token = http_client.resolve(f"source {self.name}", self.cfg.bot_token, "bot_token") or ""
        http_client.check_http_url(f"source {self.name}", self.cfg.api_base, "api_base")

    async def once(self, ctx: SourceContext) -> None:
        """One socket, read until it has been quiet for ONCE_QUIET_S; nothing is acknowledged, so
        Slack keeps every envelope for the daemon."""
        self._prepare()
        async with HttpClient() as self._http:
            try:
                url = await self._socket_url()
                if url is not None:
                    await self._connection(url, ctx, ack=False, quiet_s=ONCE_QUIET_S)
            except _Passing as exc:
                raise WatchdError(exc.message) from None

    async def _run(self, ctx: SourceContext) -> None:
        self._prepare()
        failures = 0
        while not ctx.stop.is_set():
            try:
                url = await self._socket_url()
                if url is not None and await self._connection(url, ctx):
                    failures = 0
                    continue  # a disconnect Slack asked for: connect again at once
            except _Passing as exc:
                ctx.health.failed(exc.message, ctx.clock())
                log.warning("%s", exc.message)
            failures += 1
            if await ctx.sleep(BACKOFF_S[min(failures, len(BACKOFF_S)) - 1]):
                return

    async def _connection(
        self, url: str, ctx: SourceContext, *, ack: bool = True, quiet_s: float | None = None
    ) -> bool:
        """Read one socket until Slack says disconnect (True), it breaks (_Passing), we stop, or
        (with quiet_s) nothing came for that long after the hello."""
        session = self.http.session()
        try:
            ws = await session.ws_connect(url, heartbeat=HEARTBEAT_S, autoping=True)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _Passing(f"source {self.name}: cannot open the Slack socket ({type(exc).__name__})") from None
        self.connections += 1
        stop = asyncio.ensure_future(ctx.stop.wait())
        try:
            hello = False
            while True:
                receive = asyncio.ensure_future(ws.receive(timeout=quiet_s if hello else HELLO_TIMEOUT_S))
                await asyncio.wait({receive, stop}, return_when=asyncio.FIRST_COMPLETED)
                if not receive.done():
                    receive.cancel()
                    return False
                try:
                    msg = receive.result()
                except TimeoutError:
                    if hello:
                        return False  # quiet for quiet_s: a single round is over
                    raise _Passing(f"source {self.name}: Slack said no hello within {HELLO_TIMEOUT_S:g}s") from None
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise _Passing(f"source {self.name}: the Slack socket closed ({msg.type.name.lower()})")
                try:
                    body = msgspec.json.decode(msg.data)
                except msgspec.DecodeError:
                    continue
                if not isinstance(body, dict):
                    continue
                kind = body.get("type")
                if kind == "hello":
                    hello = True
                elif kind == "disconnect":
                    if body.get("reason") == "link_disabled":
                        raise WatchdError(
                            f"source {self.name}: Socket Mode is turned off for this Slack app",
                            hint="turn Socket Mode on in the app's settings (api.slack.com/apps)",
                        )
                    return True
                elif isinstance(body.get("envelope_id"), str):
                    await self._envelope(body, ctx)
                    # Acknowledged only now that what it brought is stored: unacked, Slack re-sends.
                    # Dry (`watchd source test`), never: Slack keeps it for the daemon.
                    if ack and not ctx.outlet.dry:
                        await ws.send_json({"envelope_id": body["envelope_id"]})
        finally:
            stop.cancel()
            with contextlib.suppress(Exception):
                await ws.close()

    # -- envelopes --

    async def _envelope(self, body: dict[str, Any], ctx: SourceContext) -> None:
        payload = _dict(body.get("payload"))
        emit: Emit | None = None
        if body.get("type") == "events_api":
            emit = self._message(payload, ctx)
        elif body.get("type") == "interactive":
            emit, refused = self._press(payload, ctx)
            if refused is not None and not ctx.outlet.dry:
                await self._tell_not_allowed(*refused)
        if emit is not None:
            await ctx.emit([emit])

    def _message(self, payload: dict[str, Any], ctx: SourceContext) -> Emit | None:
        event = _dict(payload.get("event"))
        event_id = payload.get("event_id")
        if event.get("type") != "message" or not isinstance(event_id, str):
            return None
        if event.get("subtype") not in MESSAGE_SUBTYPES or event.get("bot_id"):
            return None  # edits, deletions, joins; a bot's post (watchd's own alerts among them)
        channel, user = str(event.get("channel", "")), event.get("user")
        refusal = self.allow.refusal(channel, user if isinstance(user, str) else None)
        if refusal is not None:
            ctx.health.rejections["chat" if refusal == "chat" else "sender"] += 1
            return None
        ts, thread = event.get("ts"), event.get("thread_ts")
        text = event.get("text")
        data = {
            "chat": channel,
            "chat_type": event.get("channel_type"),
            "sender": user,
            "text": text[:MAX_TEXT] if isinstance(text, str) else "",
            "message": ts,
            "thread": thread,
            "reply_to": {"message": thread} if isinstance(thread, str) and thread != ts else None,
            "team": payload.get("team_id"),
            "platform": "slack",
        }
        when = _float(event.get("event_ts") or ts)
        return Emit(self.subject, data, event_id, when)

    def _press(self, payload: dict[str, Any], ctx: SourceContext) -> tuple[Emit | None, tuple[str, str] | None]:
        """The answer event of a press, or the (channel, user) of a press that is not allowed."""
        answer = slack_answer(payload, self.name)
        trigger = payload.get("trigger_id")
        if answer is None or not isinstance(trigger, str):
            return None, None  # not one of watchd's buttons
        user, channel = str(answer["by"]).removeprefix("slack:"), str(answer.get("chat") or "")
        refusal = self.allow.refusal(channel, user)
        if refusal is not None:
            ctx.health.rejections["chat" if refusal == "chat" else "sender"] += 1
            log.info("source %s: a button press by Slack user %s was dropped: not allowed", self.name, user[:40])
            return None, (channel, user)
        return Emit(ANSWER_SUBJECT, answer, f"slack-{trigger}"[:128]), None

    async def _tell_not_allowed(self, channel: str, user: str) -> None:
        """With a `bot_token`, the presser alone is told the press did nothing (an ephemeral message)."""
        if not self._bot_token or not channel:
            return
        resp = await self.http.send(
            "POST",
            f"{self.cfg.api_base.rstrip('/')}/chat.postEphemeral",
            name=f"source {self.name}",
            service=SERVICE,
            secrets=self._secrets,
            headers={"Authorization": f"Bearer {self._bot_token}"},
            json={"channel": channel, "user": user, "text": NOT_ALLOWED},
        )
        data = resp.data if isinstance(resp, Response) and isinstance(resp.data, dict) else {}
        if data.get("ok") is not True:
            why = resp.detail if not isinstance(resp, Response) else str(data.get("error") or resp.status)[:80]
            log.info("source %s: could not tell Slack user %s the press was not allowed: %s", self.name, user[:40], why)


class _Passing(Exception):
    """A failure that waiting may cure (network, Slack's 5xx, a dropped socket)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _float(value: object) -> float | None:
    try:
        return float(value) if isinstance(value, str | int | float) else None
    except ValueError:
        return None
