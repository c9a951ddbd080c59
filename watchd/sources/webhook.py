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
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl

from aiohttp import web

from watchd.errors import EventRejected, RequestRefused
from watchd.limits import MAX_HTTP_BODY_BYTES, NATS_MAX_PAYLOAD_BYTES, is_loopback
from watchd.model import Event, check_subject, is_reserved, make_event, parse_data
from watchd.sources.template import RequestFields, Template, TemplateError, TemplateMissing, compile_template
from watchd.sources.verify import HMAC_HEADER, HMAC_PREFIX, Scheme, Verifier

if TYPE_CHECKING:
    from watchd.ingress import Ingress

ANSWER_SUBJECT = "chat.answer"
_ANSWER_VALUE = re.compile(r"(ack|snooze|mute):([!-~]{1,128})")  # as the notifiers set a button's value
_JSON = "application/json"
_FORM = "application/x-www-form-urlencoded"


@dataclass
class WebhookHealth:
    """What `status` and /metrics show of one webhook source."""

    events: int = 0  # requests stored (duplicates included: the sender was answered 2xx)
    duplicates: int = 0
    rejections: Counter[str] = field(default_factory=Counter)
    last_event_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None


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
    health: WebhookHealth = field(default_factory=WebhookHealth)

    async def handle(self, request: web.Request, ingress: Ingress) -> web.Response:
        """Answer one request; a refusal is counted here and at the listener, and logged there."""
        try:
            return await self._handle(request, ingress)
        except RequestRefused as exc:
            refused = exc
        except EventRejected as exc:  # a subject or id the templates made, or data JSON cannot carry
            refused = RequestRefused(400, exc.reason, exc.message)
        self.health.rejections[refused.reason] += 1
        self.health.last_error = f"{refused.status} {refused.message}"
        self.health.last_error_at = self.clock()
        message = f"source {self.name!r}: {refused.message}"
        return ingress.error(refused.status, refused.reason, message, about=self.name)

    async def _handle(self, request: web.Request, ingress: Ingress) -> web.Response:
        if request.method != "POST":
            raise RequestRefused(405, "method", f"{request.method} is not allowed on a webhook: send POST")
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
        if answer is not None:
            event = make_event(ANSWER_SUBJECT, answer, id=_body_id(body), time_s=self.clock(), source=self.name)
        else:
            event = self._event(request, body, data)
        ack = await ingress.store(event)
        self.health.events += 1
        self.health.duplicates += int(ack.duplicate)
        self.health.last_event_at = self.clock()
        if answer is not None:
            return web.Response(status=200)  # Slack shows a body sent to a button press as an error
        return web.json_response({"id": event.id, "seq": ack.seq, "duplicate": ack.duplicate})

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


# ---- from settings ----


class WebhookSettings(Protocol):
    """The keys of a `[source.<name>]` table of type webhook that a route is compiled from."""

    path: str
    subject: str
    id: str | None
    verify: Scheme
    secret: str | None
    header: str | None
    prefix: str | None
    max_body: int | str | None


# Paths the listener answers itself (and the answers API's prefix): a webhook may not take them.
_OWN_PREFIXES = ("/events/", "/ping/", "/api/")
_OWN_PATHS = frozenset({"/", "/events", "/ping", "/api", "/healthz", "/metrics"})
_PATH_RE = re.compile(r"/[A-Za-z0-9._~/-]{0,200}")
_SIZE_RE = re.compile(r"\s*(\d+)\s*(B|KB|KiB|MB|MiB)?\s*", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2}


def parse_size(value: int | str) -> int:
    """Bytes from `262144`, `"256KiB"`, `"1MiB"`, `"500kB"`; ValueError otherwise."""
    if isinstance(value, int):
        return value
    m = _SIZE_RE.fullmatch(value)
    if m is None:
        raise ValueError(f'bad size {value!r}: a number of bytes, or with KiB, MiB, kB or MB, e.g. "1MiB"')
    return int(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()]


def webhook_problems(name: str, settings: WebhookSettings, listen_host: str) -> list[tuple[str, str]]:
    """What is wrong with a webhook source's settings, as (key, message) pairs; [] when it can run.
    Run by `validate` (each at its line) and again when the daemon builds the route."""
    problems: list[tuple[str, str]] = []
    path = settings.path
    if not _PATH_RE.fullmatch(path):
        problems.append(("path", f"bad path {path!r}: it starts with / and uses letters, digits and . _ ~ - /"))
    elif path in _OWN_PATHS or path.startswith(_OWN_PREFIXES):
        problems.append(("path", f"path {path!r} is the listener's own: use one of yours, e.g. /hooks/{name}"))
    for key in ("subject", "id"):
        text = getattr(settings, key)
        if text is None:
            continue
        try:
            template = compile_template(text)
        except TemplateError as exc:
            problems.append((key, str(exc)))
            continue
        sample = template.sample()
        if key == "subject":
            try:
                check_subject(sample)
            except EventRejected as exc:
                problems.append((key, f"subject template {text!r} cannot make a subject: {exc.message}"))
            if is_reserved(sample):
                problems.append((key, f"subject {text!r} is under watchd., which is watchd's own: pick another"))
    if settings.verify == "none":
        if not is_loopback(listen_host):
            problems.append(
                (
                    "verify",
                    f'verify = "none" on a listener that is not loopback ({listen_host}) would take events from '
                    "anyone: use github, slack, hmac-sha256 or token with a secret",
                )
            )
    elif not settings.secret:
        problems.append(("secret", f'verify = "{settings.verify}" needs a secret, e.g. secret = "env:WEBHOOK_SECRET"'))
    if settings.verify != "hmac-sha256":
        for key in ("header", "prefix"):
            if getattr(settings, key) is not None:
                problems.append((key, f'`{key}` is for verify = "hmac-sha256" only'))
    elif settings.header is not None and not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", settings.header):
        problems.append(("header", f"{settings.header!r} is not a header name"))
    if settings.max_body is not None:
        try:
            size = parse_size(settings.max_body)
        except ValueError as exc:
            problems.append(("max_body", str(exc)))
        else:
            if not 1 <= size <= NATS_MAX_PAYLOAD_BYTES:
                problems.append(("max_body", f"max_body must be from 1 byte to {NATS_MAX_PAYLOAD_BYTES} (1MiB)"))
    return problems


def compile_route(
    name: str,
    settings: WebhookSettings,
    *,
    secret: str | None,
    default_max_body: int = MAX_HTTP_BODY_BYTES,
    clock: Callable[[], float] = time.time,
) -> WebhookRoute:
    """The route of settings that `webhook_problems` passed, with the secret already resolved."""
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
    )
