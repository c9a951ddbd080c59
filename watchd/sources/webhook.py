"""The webhook source: a route on the HTTP listener that turns a signed request into an event.

One request, in order: the listener's caller checks (ingress.py: Host, Origin), the body within
the route's `max_body`, the signature (verify.py) over the raw body, the body's type (JSON, or a
form whose `payload` field is JSON, as GitHub and Slack can send), then the subject and id
templates, then the publish with the id as `Nats-Msg-Id`. Each refusal answers its status (401 a
bad signature, 413 too large, 415 a wrong type, 400 bad JSON or a template field the request
lacks), is counted in this source's health by reason, and publishes nothing.

Event ids (SPEC section 8): the `id` template when one is set; else GitHub's `X-GitHub-Delivery`,
Slack's `event_id`; else the sha256 of the body. A redelivery carries the same id, so JetStream
stores it once and the answer says `duplicate`.

Slack: a `url_verification` request is answered with its challenge; a button press
(interactivity, `payload={"type": "block_actions", …}`) whose value is `ack|snooze|mute:<handoff
id>` becomes a `chat.answer` event, which the daemon applies to the incident.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl

from aiohttp import web

from watchd.config import resolve_secret
from watchd.errors import EventRejected, RequestRefused, WatchdError
from watchd.limits import MAX_HTTP_BODY_BYTES
from watchd.listener import stored_answer
from watchd.model import Event, make_event, parse_data
from watchd.sources.base import Source, SourceContext
from watchd.sources.health import SourceHealth
from watchd.sources.settings import SourceSettings, WebhookSettings
from watchd.sources.template import RequestFields, Template, TemplateMissing, compile_template
from watchd.sources.verify import HMAC_HEADER, HMAC_PREFIX, Verifier
from watchd.sources.webhook_check import parse_size, webhook_problems

if TYPE_CHECKING:
    from watchd.ingress import Ingress

ANSWER_SUBJECT = "chat.answer"
_ANSWER_VALUE = re.compile(r"(ack|snooze|mute):([!-~]{1,128})")  # as the notifiers set a button's value
_JSON = "application/json"
_FORM = "application/x-www-form-urlencoded"


@dataclass
class WebhookRoute:
    """One `[source.<name>]` of type webhook, compiled: its templates and its check built once."""

    name: str
    path: str
    subject: Template
    verifier: Verifier
    max_body: int
    id: Template | None = None
    clock: Callable[[], float] = time.time
    health: SourceHealth = field(default_factory=lambda: SourceHealth("webhook", "webhook"))
    senders: frozenset[str] = frozenset()  # Slack users who may press watchd's buttons (empty: any)
    channels: frozenset[str] = frozenset()  # and the channels where (empty: any)

    async def handle(self, request: web.Request, ingress: Ingress) -> web.Response:
        """Answer one request; a refusal is counted here and at the listener, and logged there."""
        try:
            return await self._handle(request, ingress)
        except RequestRefused as exc:
            refused = exc
        except EventRejected as exc:  # a subject or id the templates made, or data JSON cannot carry
            refused = RequestRefused(400, exc.reason, exc.message)
        self.health.rejected(refused.reason, f"{refused.status} {refused.message}", self.clock())
        message = f"source {self.name!r}: {refused.message}"
        return ingress.error(refused.status, refused.reason, message, about=self.name)

    async def _handle(self, request: web.Request, ingress: Ingress) -> web.Response:
        body = await ingress.read_body(request, self.max_body)
        self.verifier.check(request.headers, request.query, body, self.clock())
        data = self._parse(request, body)
        slack = self.verifier.scheme == "slack"
        if slack and data.get("type") == "url_verification":
            challenge = data.get("challenge")
            if not isinstance(challenge, str):
                raise RequestRefused(400, "json", "url_verification without a string challenge")
            return web.json_response({"challenge": challenge})
        answer = slack_answer(data, self.name) if slack else None
        if answer is not None and (dropped := self._not_allowed(answer)) is not None:
            reason, message = dropped
            self.health.rejected(reason, message, self.clock())
            ingress.refused(reason, f"source {self.name!r}: {message}", about=self.name)
            return web.Response(status=200)  # nothing acts; Slack would show another status as a failure
        if answer is not None:
            event = make_event(ANSWER_SUBJECT, answer, id=_body_id(body), time_s=self.clock(), source=self.name)
        else:
            event = self._event(request, body, data)
        ack = await ingress.store(event)
        self.health.published(self.clock(), ack.duplicate)
        if answer is not None:
            return web.Response(status=200)  # Slack shows a body sent to a button press as an error
        return stored_answer(event.id, ack.seq, ack.duplicate)

    def _not_allowed(self, answer: Mapping[str, Any]) -> tuple[str, str] | None:
        """(reason, message) when the press comes from a user or channel outside the allow-lists."""
        user = str(answer["by"]).removeprefix("slack:")
        if self.senders and user not in self.senders:
            return "sender", f"a button press by Slack user {user[:40]!r}, who is not in `senders`, was dropped"
        if self.channels and answer["chat"] not in self.channels:
            return "channel", f"a button press in channel {str(answer['chat'])[:40]!r}, not in `channels`, was dropped"
        return None

    def _parse(self, request: web.Request, body: bytes) -> dict[str, Any]:
        """The body as the event's data: a JSON object, or a signed form (its `payload` field's JSON,
        or its fields). An unsigned route reads only JSON: a web page can post a form cross-site
        without asking, but not a JSON body."""
        if not body.strip():
            return {}
        ctype = request.content_type
        if ctype == _JSON:
            return parse_data(body)
        if ctype == _FORM and self.verifier.scheme != "none":
            try:
                pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
            except (UnicodeDecodeError, ValueError):
                raise RequestRefused(400, "form", "the form body is not valid UTF-8 url-encoding") from None
            form = dict(pairs)
            if "payload" in form:
                return parse_data(form["payload"], what="the form's payload field")
            return form
        accepted = _JSON if self.verifier.scheme == "none" else f"{_JSON} or {_FORM}"
        given = request.headers.get("Content-Type")
        shown = f"Content-Type {given[:100]!r}" if given else "a body without Content-Type"
        raise RequestRefused(415, "content_type", f"{shown} is not accepted here: send {accepted}")

    def _event(self, request: web.Request, body: bytes, data: dict[str, Any]) -> Event:
        fields = RequestFields(request.headers, request.query, data)
        try:
            subject = self.subject.render(fields)
            event_id = self.id.render(fields) if self.id is not None else self._default_id(request, body, data)
        except TemplateMissing as exc:
            raise RequestRefused(400, "template", exc.message) from None
        # The data came from parse_data or a strictly decoded form: already checked.
        return make_event(subject, data, id=event_id, time_s=self.clock(), source=self.name, parsed=True)

    def _default_id(self, request: web.Request, body: bytes, data: Mapping[str, Any]) -> str:
        if self.verifier.scheme == "github" and (delivery := request.headers.get("X-GitHub-Delivery")):
            return delivery
        if self.verifier.scheme == "slack" and isinstance(event_id := data.get("event_id"), str) and event_id:
            return event_id
        return _body_id(body)


def _body_id(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def slack_answer(payload: Mapping[str, Any], source: str) -> dict[str, Any] | None:
    """A Slack button press on a watchd notification, as the data of a `chat.answer` event; None for
    anything else (another app's button, an event callback), which is stored as an ordinary event."""
    if payload.get("type") != "block_actions":
        return None
    actions = payload.get("actions")
    first = actions[0] if isinstance(actions, list) and actions else None
    value = first.get("value") if isinstance(first, dict) else None
    m = _ANSWER_VALUE.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        return None
    user, channel = payload.get("user"), payload.get("channel")
    container, message = payload.get("container"), payload.get("message")
    ts = _get(container, "message_ts") or _get(message, "ts")
    return {
        "action": m.group(1),
        "target": m.group(2),
        "duration": None,  # the button's own (Snooze 1h, Mute 24h): the action names it
        "by": f"slack:{_get(user, 'id') or 'unknown'}",
        "chat": _get(channel, "id") or _get(container, "channel_id"),
        "message": ts,
        "source": source,
    }


def _get(node: object, key: str) -> str | None:
    value = node.get(key) if isinstance(node, dict) else None
    return value if isinstance(value, str) else None


def compile_route(
    name: str,
    settings: WebhookSettings,
    *,
    secret: str | None,
    default_max_body: int = MAX_HTTP_BODY_BYTES,
    clock: Callable[[], float] = time.time,
    health: SourceHealth | None = None,
) -> WebhookRoute:
    """The route of settings that `webhook_problems` passed, with the secret already resolved."""
    assert settings.subject is not None, "validate requires a webhook's subject"
    return WebhookRoute(
        name=name,
        path=settings.path,
        subject=compile_template(settings.subject),
        id=compile_template(settings.id) if settings.id is not None else None,
        verifier=Verifier(
            settings.verify,
            (secret or "").encode(),
            header=settings.header or HMAC_HEADER,
            prefix=HMAC_PREFIX if settings.prefix is None else settings.prefix,
        ),
        max_body=default_max_body if settings.max_body is None else parse_size(settings.max_body),
        clock=clock,
        health=health or SourceHealth(name, "webhook"),
        senders=frozenset(settings.senders),
        channels=frozenset(settings.channels),
    )


def build_routes(
    sources: Mapping[str, SourceSettings],
    *,
    listen_host: str,
    default_max_body: int,
    clock: Callable[[], float],
    health_of: Callable[[str], SourceHealth | None] = lambda _name: None,
) -> dict[str, WebhookRoute]:
    """The listener's webhook routes by path, from every `type = "webhook"` source; a source's
    health is `health_of(name)` (the daemon's, which `status` and the silence check read), else
    its own. WatchdError when one cannot run: settings `validate` refuses (an unsigned route on a
    listener others can reach), or a secret that cannot be read."""
    routes: dict[str, WebhookRoute] = {}
    for name, settings in sources.items():
        if not isinstance(settings, WebhookSettings):
            continue
        problems = webhook_problems(name, settings, listen_host)
        if problems:
            key, message = problems[0]
            raise WatchdError(f"[source.{name}] {key}: {message}", hint="`watchd validate` lists every problem")
        try:
            secret = resolve_secret(settings.secret)
        except WatchdError as exc:
            raise WatchdError(f"[source.{name}] secret: {exc.message}", hint=exc.hint) from None
        routes[settings.path] = compile_route(
            name,
            settings,
            secret=secret,
            default_max_body=default_max_body,
            clock=clock,
            health=health_of(name),
        )
    return routes


class WebhookSource(Source):
    """A webhook is a route on the daemon's HTTP listener (`build_routes`), not a task of its own."""

    type_name: ClassVar[str] = "webhook"
    on_listener: ClassVar[bool] = True

    async def run(self, ctx: SourceContext) -> None:
        raise WatchdError(
            f"source {self.name} is a webhook: the HTTP listener of `watchd run` serves it",
            hint="start the daemon (`watchd run`) with this config",
        )

    async def once(self, ctx: SourceContext) -> None:
        """`watchd source test`: a webhook has nothing to fetch; it waits for its senders."""
        assert isinstance(self.settings, WebhookSettings)
        raise WatchdError(
            f"source {self.name} is a webhook: it publishes what its senders POST to {self.settings.path} "
            "on the listener of `watchd run`",
            hint="`watchd check --json` shows its events and refusals by reason",
        )
