"""Slack: an incoming webhook (https://api.slack.com/messaging/webhooks), or a bot token and a
channel through `chat.postMessage` (https://api.slack.com/methods/chat.postMessage).

The webhook URL is itself the credential, so it is treated like the token: it never appears in a
detail, a log line or a repr. The Web API answers HTTP 200 with `{"ok": false, "error": "…"}` for
most failures, so those are classified by their error code, not their status.
"""

from __future__ import annotations

import logging
from typing import Any

from yarl import URL

from watchd.config import SlackNotifier as SlackConfig
from watchd.dispatch import Dead, Delivered, Outcome, Retry
from watchd.errors import WatchdError
from watchd.model import Handoff
from watchd.notify import buttons, http_client
from watchd.notify.http_client import DEFAULT_TIMEOUT_S, HttpClient, Response
from watchd.notify.render import TRUNCATED, render, truncate

log = logging.getLogger("watchd.notify.slack")

SERVICE = "Slack"
MAX_SECTION_TEXT = 3000  # a section block's text object (https://api.slack.com/reference/block-kit/blocks)
MAX_BLOCKS = 50  # per message
MAX_FALLBACK_TEXT = 3000  # the top-level text is the notification preview; Slack cuts at 40,000

# chat.postMessage error codes (https://api.slack.com/methods/chat.postMessage#errors) that a retry
# can cure; every other code is a request or configuration problem and dead-letters with its name.
RETRY_ERRORS = frozenset(
    {
        "ratelimited",
        "rate_limited",
        "internal_error",
        "fatal_error",
        "service_unavailable",
        "request_timeout",
        "team_added_to_org",
    }
)
AUTH_ERRORS = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "no_permission",
        "not_allowed_token_type",
        "ekm_access_denied",
    }
)
CHANNEL_ERRORS = frozenset(
    {
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "restricted_action",
        "cannot_reply_to_message",
        "team_access_not_granted",
    }
)


def escape(text: str) -> str:
    """Slack mrkdwn/text needs only these three escaped (https://api.slack.com/reference/surfaces/formatting)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _chunks(text: str, limit: int) -> list[str]:
    """Split at line breaks where possible, so no chunk is over `limit` characters."""
    out: list[str] = []
    while len(text) > limit:
        cut = text.rfind("\n", 0, limit + 1)
        if cut <= 0:
            cut = limit
        out.append(text[:cut])
        text = text[cut:].lstrip("\n")
    if text:
        out.append(text)
    return [c for c in out if c.strip()] or ["(empty message)"]


def build_payload(text: str, footer: str | None = None, actions: dict[str, Any] | None = None) -> dict[str, Any]:
    """`text` (the notification fallback) and `blocks`: plain-text sections of at most 3000
    characters, at most 50 blocks in all (the last section cut with a visible marker), a
    context footer, and the answer buttons (`actions`)."""
    room = MAX_BLOCKS - (1 if footer else 0) - (1 if actions else 0)
    chunks = _chunks(text, MAX_SECTION_TEXT)
    if len(chunks) > room:
        chunks = chunks[:room]
        chunks[-1] = chunks[-1][: MAX_SECTION_TEXT - len(TRUNCATED)].rstrip() + TRUNCATED
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "plain_text", "text": c, "emoji": True}} for c in chunks
    ]
    if actions:
        blocks.append(actions)
    if footer:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": escape(footer)[:3000]}]})
    return {"text": escape(truncate(text, MAX_FALLBACK_TEXT)), "blocks": blocks}


def _footer(handoff: Handoff) -> str:
    return f"watchd · {handoff.watch} v{handoff.watch_version} · {handoff.kind} · handoff {handoff.id}"


class SlackNotifier:
    """A Slack message per handoff. `name` is the target name (`notify.team`) used in every detail."""

    def __init__(
        self,
        cfg: SlackConfig,
        *,
        http: HttpClient,
        name: str = "notify.slack",
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.http = http  # the daemon's client session: shared, closed by its owner
        self.name = name
        self.timeout_s = timeout_s
        self.channel = cfg.channel
        self.buttons = cfg.buttons
        if cfg.token and cfg.webhook_url:
            raise WatchdError(f"{name}: set either webhook_url, or token and channel, not both")
        if cfg.token:
            if not cfg.channel:
                raise WatchdError(f"{name}: a Slack token needs a channel", hint='set channel = "#alerts" (or its id)')
            self.mode = "api"
            self._ref = http_client.secret_ref(cfg.token, "token")
            self._token = http_client.resolve(name, cfg.token, "token") or ""
            if not self._token:
                raise WatchdError(f"{name}: the Slack token is empty", hint=f"set {self._ref}")
            http_client.check_http_url(name, cfg.api_base, "api_base")
            self._api_base = cfg.api_base.rstrip("/")
            self._webhook_url = ""
            self._secrets = [self._token]
        elif cfg.webhook_url:
            self.mode = "webhook"
            self._ref = http_client.secret_ref(cfg.webhook_url, "webhook_url")
            self._webhook_url = http_client.resolve(name, cfg.webhook_url, "webhook_url") or ""
            if not self._webhook_url:
                raise WatchdError(f"{name}: the Slack webhook_url is empty", hint=f"set {self._ref}")
            http_client.check_http_url(name, self._webhook_url, "webhook_url", secret=True)
            self._token = ""
            self._api_base = ""
            self._secrets = http_client.url_secrets(self._webhook_url)
        else:
            raise WatchdError(
                f"{name}: Slack needs webhook_url, or token and channel", hint='webhook_url = "env:SLACK_WEBHOOK_URL"'
            )

    def __repr__(self) -> str:
        return f"SlackNotifier({self.name!r}, mode={self.mode!r})"

    async def deliver(self, handoff: Handoff) -> Outcome:
        actions = buttons.slack_actions(handoff) if self.buttons else None
        payload = build_payload(render(handoff), _footer(handoff), actions)
        if self.mode == "api":
            payload = {"channel": self.channel, **payload, "unfurl_links": False, "unfurl_media": False}
            resp = await self._api("chat.postMessage", payload)
            outcome = resp if not isinstance(resp, Response) else self._classify_api(resp)
        else:
            resp = await self.http.send(
                "POST",
                self._webhook_url,
                name=self.name,
                service=SERVICE,
                secrets=self._secrets,
                timeout_s=self.timeout_s,
                json=payload,
            )
            outcome = resp if not isinstance(resp, Response) else self._classify_webhook(resp)
        if not isinstance(outcome, Delivered):
            log.info("%s: %s", self.name, outcome.detail)
        return outcome

    async def edit_answered(self, chat: str, message: str, text: str) -> str | None:
        """`chat.update` after someone answered from the chat: the new text, and no buttons. None
        when done, else why not. An incoming webhook cannot edit what it posted."""
        if self.mode != "api":
            return f"{self.name}: an incoming webhook cannot edit its messages (set token and channel for that)"
        payload = {"channel": chat, "ts": message, **build_payload(text)}
        resp = await self._api("chat.update", payload)
        outcome = resp if not isinstance(resp, Response) else self._classify_api(resp)
        return None if isinstance(outcome, Delivered) else outcome.detail

    async def probe(self) -> tuple[bool, str]:
        """Token mode: `auth.test`. Webhook mode: its host accepts a connection (TLS checked); the
        webhook itself cannot be checked without posting a message, so it is not."""
        if self.mode == "webhook":
            from watchd.notify.webhook import reachable  # a connect check, shared with the webhook notifier

            host = URL(self._webhook_url).host
            ok, detail = await reachable(
                self.name, self._webhook_url, "the Slack webhook host", self._secrets, self.timeout_s
            )
            note = "" if host == "hooks.slack.com" else f"; its host is {host}, not hooks.slack.com"
            return ok, f"{detail} (the webhook itself is not checked without posting{note})" if ok else detail
        resp = await self._api("auth.test", {})
        if not isinstance(resp, Response):
            return False, resp.detail
        outcome = self._classify_api(resp)
        if not isinstance(outcome, Delivered):
            return False, outcome.detail
        data: dict[str, Any] = resp.data if isinstance(resp.data, dict) else {}
        return True, f"{self.name}: Slack token works (user {data.get('user', '?')} in team {data.get('team', '?')})"

    async def _api(self, method: str, payload: dict[str, Any]) -> Response | Retry | Dead:
        return await self.http.send(
            "POST",
            f"{self._api_base}/{method}",
            name=self.name,
            service=SERVICE,
            secrets=self._secrets,
            timeout_s=self.timeout_s,
            json=payload,
            headers={"Authorization": f"Bearer {self._token}"},
        )

    def _classify_api(self, resp: Response) -> Outcome:
        body: dict[str, Any] = resp.data if isinstance(resp.data, dict) else {}
        hints = {401: f"check {self._ref}", 403: f"check {self._ref}", 404: "check api_base"}
        error = http_client.scrub(http_client.first_line(str(body.get("error") or ""), 80), self._secrets)
        if not (200 <= resp.status < 300):
            return http_client.classify(
                resp, name=self.name, service=SERVICE, hints=hints, secrets=self._secrets, reason=error
            )
        if body.get("ok") is True:
            ts = body.get("ts")
            return Delivered(f"Slack message {ts} in {self.channel}" if ts else "Slack accepted it")
        error = error or "unknown_error"
        if error in RETRY_ERRORS:
            return Retry(f"{self.name}: Slack answered {error}", resp.retry_after_s)
        if error in AUTH_ERRORS:
            return Dead(f"{self.name}: Slack rejected the token ({error}): check {self._ref}")
        if error in CHANNEL_ERRORS:
            return Dead(
                f"{self.name}: Slack cannot post to {self.channel} ({error}): "
                "check channel and invite the bot to it (/invite @bot)"
            )
        if error == "missing_scope":
            return Dead(f"{self.name}: the Slack token lacks a scope (missing_scope): add chat:write to the app")
        if not body and resp.body:
            return Dead(f"{self.name}: Slack answered something that is not the Web API: check api_base")
        return Dead(f"{self.name}: Slack refused the message ({error})")

    def _classify_webhook(self, resp: Response) -> Outcome:
        # Incoming webhooks answer `ok`, or a status and a short error code as text.
        code = resp.text_excerpt(self._secrets, 80)
        hints = {
            400: "check the message (template) or create a new webhook",
            403: f"check {self._ref}: the webhook may be revoked",
            404: f"check {self._ref}: the webhook was removed or disabled",
            410: "the webhook's channel is archived: unarchive it or make a new webhook",
            0: f"check {self._ref}",
        }
        outcome = http_client.classify(
            resp,
            name=self.name,
            service=SERVICE,
            hints=hints,
            secrets=self._secrets,
            reason="" if 200 <= resp.status < 300 else code,
        )
        if isinstance(outcome, Delivered):
            return Delivered("Slack webhook accepted it")
        return outcome
