"""Slack Socket Mode on loopback: `apps.connections.open` over HTTP and the WebSocket it hands out.

The wire format is Slack's (https://api.slack.com/apis/socket-mode): the app POSTs its app-level
token (`xapp-…`) to `apps.connections.open` and gets a single-use `ws://…/link/?ticket=…` URL; on
connecting, the server says `hello`; it then sends envelopes (`events_api`, `interactive`, …) each
with an `envelope_id` the app must acknowledge by sending `{"envelope_id": …}` back; it may say
`disconnect` (reason `refresh_requested`, `warning`, `link_disabled`) and close the socket after.
Envelopes not yet acknowledged when a connection ends are sent again on the next one with
`retry_attempt` + 1, as Slack retries them:

    async with FakeSlackSocket() as slack:
        env = await slack.send_message("C0123", "U042", "deploy done")
        await until(lambda: slack.acked(env))
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import WSMsgType, web

from support.fakes import FakeServer, Reply, Request

APP_ID = "A0WATCHD01"
TEAM_ID = "T0WATCHD01"


@dataclass
class Envelope:
    envelope_id: str
    type: str
    payload: dict[str, Any]
    retry_attempt: int = 0
    sent: int = 0  # how many times it went out on a socket

    def wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "envelope_id": self.envelope_id,
            "type": self.type,
            "payload": self.payload,
            "accepts_response_payload": self.type != "events_api",
        }
        if self.type == "events_api":
            body["retry_attempt"] = self.retry_attempt
            body["retry_reason"] = "timeout" if self.retry_attempt else ""
        return body


@dataclass
class Connection:
    ws: web.WebSocketResponse
    opened_at: float
    received: list[dict[str, Any]] = field(default_factory=list)


class FakeSlackSocket(FakeServer):
    """The Socket Mode side of a Slack app. `connections` counts sockets ever opened; `acks` maps an
    envelope id to the ack body the app sent; `send_*` queue an envelope and send it on the live
    socket (or on the next one, when none is open)."""

    default_path = "/api/apps.connections.open"

    def __init__(self, app_token: str = "xapp-1-A0WATCHD01-1-testapptoken", bot_token: str = "xoxb-test-bot") -> None:
        super().__init__()
        self.app_token = app_token
        self.bot_token = bot_token
        self.connections: list[Connection] = []
        self.acks: dict[str, dict[str, Any]] = {}
        self.pending: dict[str, Envelope] = {}  # sent or queued, not acknowledged
        self.tickets: set[str] = set()
        self.ephemerals: list[dict[str, Any]] = []  # chat.postEphemeral bodies (with the bot token)
        self.hello = True  # False: connect and say nothing (a broken server)
        self._live: Connection | None = None
        self._connected = asyncio.Event()
        self._ids = itertools.count(1)

    # -- routes --

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/link/", self._socket)

    async def respond(self, req: Request) -> Reply:
        if req.path == "/api/chat.postEphemeral":  # the bot token's one use here
            if req.headers.get("Authorization") != f"Bearer {self.bot_token}":
                return Reply(json={"ok": False, "error": "invalid_auth"})
            self.ephemerals.append(req.json if isinstance(req.json, dict) else {})
            return Reply(json={"ok": True, "message_ts": f"{time.time():.6f}"})
        if req.path != "/api/apps.connections.open":
            return Reply(404, text="not found")
        auth = req.headers.get("Authorization", "")
        if not auth:
            return Reply(json={"ok": False, "error": "not_authed"})
        if auth.startswith("Bearer xoxb-") or auth.startswith("Bearer xoxp-"):
            return Reply(json={"ok": False, "error": "not_allowed_token_type"})
        if auth != f"Bearer {self.app_token}":
            return Reply(json={"ok": False, "error": "invalid_auth"})
        ticket = secrets.token_hex(8)
        self.tickets.add(ticket)
        url = f"ws://127.0.0.1:{self.port}/link/?ticket={ticket}&app_id={APP_ID}"
        return Reply(json={"ok": True, "url": url})

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        if ticket not in self.tickets:  # tickets are single-use
            return web.Response(status=401, text="invalid ticket")
        self.tickets.discard(ticket)
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        conn = Connection(ws, time.time())
        self.connections.append(conn)
        if self._live is not None:
            await self._live.ws.close()
        self._live = conn
        if self.hello:
            await ws.send_json(
                {
                    "type": "hello",
                    "num_connections": 1,
                    "debug_info": {"host": "applink-fake", "build_number": 1, "approximate_connection_time": 18060},
                    "connection_info": {"app_id": APP_ID},
                }
            )
        self._connected.set()
        for env in list(self.pending.values()):  # unacknowledged: Slack sends them again
            if env.sent:
                env.retry_attempt += 1
            await self._send(conn, env)
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                with contextlib.suppress(msgspec.DecodeError):
                    body = msgspec.json.decode(msg.data)
                    if isinstance(body, dict):
                        conn.received.append(body)
                        eid = body.get("envelope_id")
                        if isinstance(eid, str) and eid in self.pending:
                            self.acks[eid] = body
                            del self.pending[eid]
        finally:
            if self._live is conn:
                self._live = None
                self._connected = asyncio.Event()
        return ws

    async def _send(self, conn: Connection, env: Envelope) -> None:
        if not conn.ws.closed:
            env.sent += 1
            await conn.ws.send_json(env.wire())

    # -- what Slack sends --

    async def send(self, type_: str, payload: dict[str, Any]) -> str:
        """Queue an envelope and send it on the live socket, if any; returns its envelope_id."""
        env = Envelope(f"env-{next(self._ids):06d}-{secrets.token_hex(4)}", type_, payload)
        self.pending[env.envelope_id] = env
        if self._live is not None:
            await self._send(self._live, env)
        return env.envelope_id

    async def send_event(self, event: dict[str, Any], *, event_id: str | None = None) -> str:
        """An Events API callback wrapping `event` (a `message`, `app_mention`, …)."""
        n = next(self._ids)
        payload = {
            "token": "verification-token-unused-in-socket-mode",
            "team_id": TEAM_ID,
            "api_app_id": APP_ID,
            "event": event,
            "type": "event_callback",
            "event_id": event_id or f"Ev{n:08d}WATCHD",
            "event_time": int(time.time()),
            "authorizations": [{"team_id": TEAM_ID, "user_id": "U0BOT", "is_bot": True}],
            "is_ext_shared_channel": False,
            "event_context": f"4-eyJldCI6Im1lc3NhZ2UiLCJ0aWQiOiJ{n}",
        }
        return await self.send("events_api", payload)

    async def send_message(
        self,
        channel: str,
        user: str,
        text: str,
        *,
        thread_ts: str | None = None,
        event_id: str | None = None,
        subtype: str | None = None,
        bot_id: str | None = None,
    ) -> str:
        """Someone posts `text` in `channel` (a reply in a thread with `thread_ts`)."""
        ts = f"{time.time():.6f}"
        event: dict[str, Any] = {
            "type": "message",
            "channel": channel,
            "user": user,
            "text": text,
            "ts": ts,
            "event_ts": ts,
            "channel_type": "im" if channel.startswith("D") else "channel",
        }
        if thread_ts:
            event["thread_ts"] = thread_ts
        if subtype:
            event["subtype"] = subtype
        if bot_id:
            event["bot_id"] = bot_id
        return await self.send_event(event, event_id=event_id)

    async def send_block_action(
        self, value: str, *, user: str, channel: str, message_ts: str = "1700000000.000100", action_id: str = "ack"
    ) -> str:
        """Someone presses a button whose value is `value` under the app's message in `channel`."""
        payload = {
            "type": "block_actions",
            "user": {"id": user, "username": "ann", "name": "ann", "team_id": TEAM_ID},
            "api_app_id": APP_ID,
            "token": "verification-token-unused-in-socket-mode",
            "container": {"type": "message", "message_ts": message_ts, "channel_id": channel, "is_ephemeral": False},
            "trigger_id": f"{next(self._ids)}.{secrets.token_hex(6)}",
            "team": {"id": TEAM_ID, "domain": "watchd-test"},
            "channel": {"id": channel, "name": "ops"},
            "message": {"type": "message", "ts": message_ts, "text": "🔔 fired", "user": "U0BOT"},
            "response_url": f"http://127.0.0.1:{self.port}/actions/{TEAM_ID}/{secrets.token_hex(6)}",
            "actions": [
                {
                    "action_id": action_id,
                    "block_id": "watchd-answers",
                    "text": {"type": "plain_text", "text": action_id.title(), "emoji": True},
                    "value": value,
                    "type": "button",
                    "action_ts": f"{time.time():.6f}",
                }
            ],
        }
        return await self.send("interactive", payload)

    async def disconnect(self, reason: str = "refresh_requested", close_after_s: float = 0.0) -> None:
        """Say `disconnect` on the live socket, then close it after `close_after_s`."""
        conn = self._live
        if conn is None:
            return
        await conn.ws.send_json({"type": "disconnect", "reason": reason, "debug_info": {"host": "applink-fake"}})
        if close_after_s:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), close_after_s)
        await conn.ws.close()

    async def drop(self) -> None:
        """Close the live socket without a word (a network failure as the app sees it)."""
        if self._live is not None:
            await self._live.ws.close()

    # -- inspection --

    def acked(self, envelope_id: str) -> bool:
        return envelope_id in self.acks

    async def wait_connected(self, timeout_s: float = 30.0) -> Connection:
        await asyncio.wait_for(self._connected.wait(), timeout_s)
        assert self._live is not None
        return self._live

    @property
    def live(self) -> Connection | None:
        return self._live
