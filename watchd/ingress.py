"""The HTTP listener's requests: event ingress (`POST /events/<subject>`, `/ping/<subject>`),
/healthz, /metrics.

Who may call. The listener is loopback by default and trusts local programs, but a web browser on
the same machine is not a local program: any page it opens could post to 127.0.0.1, or reach it
through DNS rebinding under a name of its own. So every request
- names the listener in its Host header (a loopback name or address, the configured listen host,
  the address the connection arrived on, or one of `[http] allowed_hosts` for a reverse proxy);
- carries no Origin but the listener's own, and no `Sec-Fetch-Site` of another site;
- with a body, sends `Content-Type: application/json` (which a page cannot send cross-site without
  a preflight watchd never grants), unless a bearer token already proved who it is.
`GET /ping/<subject>` and a body-less `POST /ping/<subject>` are the one deliberate exception to
"GET changes nothing": like Healthchecks' ping URLs, they store an event with empty data.

Every refusal is JSON `{"error": "..."}` with its status, counted per reason in `Ingress.errors`
and logged at a rate limit, never with a header value (the token) in it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec
from aiohttp import web
from yarl import URL

from watchd import bus
from watchd.config import resolve_secret
from watchd.dashboard import dashboard_routes
from watchd.errors import EventRejected, NatsUnavailable, RequestRefused, WatchdError
from watchd.limits import HTTP_BODY_TIMEOUT_S, default_max_connections, is_loopback, split_listen
from watchd.listener import ConnectionLimits, ListenerSite, stored_answer, track_requests
from watchd.metrics import CONTENT_TYPE, Metrics, health_families, store_families
from watchd.model import Event, encode, make_event, parse_data

if TYPE_CHECKING:
    from watchd.answer_api import AnswerApi
    from watchd.daemon import Daemon
    from watchd.jspublish import PublishEvent
    from watchd.sources.webhook import WebhookRoute

SOURCE_RE = re.compile(r"[A-Za-z0-9._:/-]{1,64}")
log = logging.getLogger("watchd.http")

# How the /api/ routes (answer_api, schedule_api, release_api) read a request and refuse one.
ApiFields = Callable[[web.BaseRequest, str], Awaitable[dict[str, Any]]]
Refuse = Callable[[int, str, str], web.Response]
Health = Callable[[], dict[str, Any]]

API_MAX_BODY = 4096  # an /api/ request names a watch, a schedule or an agent: a few hundred bytes
NAMED_HOSTS = 64  # Host header values remembered as naming the listener
LOG_EVERY_S = 60.0  # per reason: the first refusal is logged, then at most one line a minute

# A Host header: a name or an IPv4 address, or an IPv6 address in brackets; an optional port.
_HOST_RE = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9._-]+))(?::[0-9]{1,5})?")
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})
_STATUS_REASONS = {404: "not_found", 405: "method", 413: "too_large"}
_ENDPOINTS = (
    "POST /events/<subject>, GET|POST /ping/<subject>, GET /healthz, GET /metrics, "
    "POST /api/ack|snooze|mute|unmute, POST /api/run-now|replay, GET / (dashboard)"
)


def host_name(value: str) -> str | None:
    """The host of a Host header (`localhost:8787`, `[::1]:8787`), lowercased; None if malformed."""
    m = _HOST_RE.fullmatch(value.strip())
    if m is None:
        return None
    return (m.group("v6") or m.group("name")).lower().rstrip(".")


class Ingress:
    """Answers the listener's requests. It knows no daemon: it publishes through `publish` and
    reports `health()`, so it runs as well beside a fixture nats-server in a test."""

    def __init__(
        self,
        *,
        publish: PublishEvent,
        health: Health,
        token: str | None = None,
        max_body: int,
        max_event_bytes: Callable[[], int],  # read per request: a reload may change it
        listen_host: str = "127.0.0.1",
        allowed_hosts: Iterable[str] = (),
        body_timeout_s: float = HTTP_BODY_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self.publish = publish
        self.health = health
        self.token = token
        self.max_body = max_body
        self.max_event_bytes = max_event_bytes
        self.body_timeout_s = body_timeout_s
        self.clock = clock
        names = {listen_host, *allowed_hosts} - _WILDCARDS
        self.allowed_hosts = {n.strip("[]").lower().rstrip(".") for n in names}
        self.errors: Counter[str] = Counter()  # refusals per reason, since start
        self.scrape = metrics or Metrics()
        self.scrape.add_state(lambda: health_families(self.health(), self.errors))
        # Webhook sources by path: replaced as a whole on reload (routes of a built aiohttp app
        # cannot change), and looked up before the app's own routes.
        self.webhooks: Mapping[str, WebhookRoute] = {}
        # Host header values that name this listener whatever the connection (a loopback or allowed
        # name): checked once. Bounded, and refusals are never kept, so odd names cannot grow it.
        self._named: set[str] = set()
        self._seen: Counter[str] = Counter()  # refusals per reason/about, for the log's rate limit
        self._logged: dict[str, tuple[float, int]] = {}  # reason/about -> (last logged at, count then)

    # ---- refusals ----

    def refused(self, reason: str, message: str, *, about: str = "") -> None:
        """Count a refusal; log it unless one of the same reason (and the same `about`: a webhook
        source, so one noisy sender does not hide another's) was logged less than a minute ago."""
        self.errors[reason] += 1
        key = f"{reason}/{about}"
        self._seen[key] += 1
        now = self.clock()
        last = self._logged.get(key)
        if last is not None and now - last[0] < LOG_EVERY_S:
            return
        skipped = self._seen[key] - 1 - (last[1] if last else 0)
        more = f" (and {skipped} more like it since the last report)" if skipped > 0 else ""
        log.warning("HTTP refused (%s): %s%s", reason, message, more)
        self._logged[key] = (now, self._seen[key])

    def error(
        self, status: int, reason: str, message: str, headers: dict[str, str] | None = None, *, about: str = ""
    ) -> web.Response:
        self.refused(reason, f"{status} {message}", about=about)
        return web.json_response({"error": message}, status=status, headers=headers)

    # ---- who may call ----

    def _names_listener(self, header: str, request: web.BaseRequest) -> bool:
        if header in self._named:
            return True
        host = host_name(header)
        if host is None:
            return False
        if host in self.allowed_hosts or host == "localhost" or host.endswith(".localhost") or is_loopback(host):
            if len(self._named) < NAMED_HOSTS:
                self._named.add(header)
            return True
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        return sockname is not None and host == str(sockname[0]).lower()  # the address it came in on

    def caller_refusal(self, request: web.BaseRequest) -> web.Response | None:
        """403 for a request a web page could have sent on someone's behalf, else None."""
        headers = request.headers
        header = headers.get("Host")
        if header is not None and not self._names_listener(header, request):
            return self.error(
                403,
                "host",
                f"Host {header[:100]!r} does not name this listener: a proxy's public name goes in "
                "[http] allowed_hosts",
            )
        origin = headers.get("Origin")
        if origin is not None:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or header is None or parts.netloc.lower() != header.lower():
                refused = f"Origin {origin[:100]!r} is not this listener's: cross-site requests are refused"
                return self.error(403, "origin", refused)
        if headers.get("Sec-Fetch-Site", "").lower() in ("cross-site", "same-site"):
            return self.error(403, "cross_site", "a browser request from another site is refused")
        return None

    def _authorized(self, request: web.BaseRequest) -> bool:
        if self.token is None:
            return True
        given = request.headers.get("Authorization", "")
        # Header bytes that are not UTF-8 arrive as surrogate escapes: compared as the bytes they were.
        sent = given[7:].encode("utf-8", "surrogateescape")
        return given.startswith("Bearer ") and hmac.compare_digest(sent, self.token.encode())

    @web.middleware
    async def guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Caller checks for every route, and errors as JSON: aiohttp's own (404, 405, 413) and a
        defect's (500, with its traceback in the log)."""
        refusal = self.caller_refusal(request)
        if refusal is not None:
            return refusal
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            path = request.rel_url.raw_path[:100]
            if exc.status == 404:
                hooks = "".join(f", POST {p}" for p in sorted(self.webhooks)[:10])
                message = f"no endpoint at {path} (there are: {_ENDPOINTS}{hooks})"
            elif exc.status == 405:
                message = f"{request.method} is not allowed on {path} (allowed: {exc.headers.get('Allow', 'none')})"
            else:
                message = exc.reason
            allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return self.error(exc.status, _STATUS_REASONS.get(exc.status, "http"), message, allow)
        except Exception:
            log.exception("internal error while handling %s %s", request.method, request.rel_url.raw_path[:100])
            return self.error(500, "internal", "internal error")

    # ---- routes ----

    async def events(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self.error(401, "auth", "missing or wrong bearer token")
        try:
            body = await self.read_body(request, self.max_body)
            data: dict[str, Any] = {}
            if body.strip():
                unsupported = self._content_type_problem(request)
                if unsupported is not None:
                    raise RequestRefused(415, "content_type", unsupported)
                data = parse_data(body)
            # A key that is given but empty (HTTP strips the spaces of "Idempotency-Key:  ") is refused
            # as a bad id rather than replaced by a new one: the sender meant a re-send to be stored once.
            event_id = request.headers.get("Idempotency-Key", request.query.get("id"))
            source = request.query.get("source", "http")  # `watchd emit` says "cli" (or its --source)
            if not SOURCE_RE.fullmatch(source):
                raise RequestRefused(400, "source", "bad source: 1 to 64 of letters, digits and . _ - : /")
            event = make_event(request.match_info["subject"], data, id=event_id, source=source)
            ack = await self.store(event)
        except RequestRefused as exc:
            return self.error(exc.status, exc.reason, exc.message)
        except EventRejected as exc:
            return self.error(400, exc.reason, exc.message)
        return stored_answer(event.id, ack.seq, ack.duplicate, status=202)

    async def api_fields(self, request: web.BaseRequest, shape: str, max_body: int = API_MAX_BODY) -> dict[str, Any]:
        """The JSON object an /api/ request sends, once its caller passed: the bearer token when one is
        set; else a JSON content type, which a web page cannot send cross-site without a preflight
        (as for events). `shape` says what to send, for the refusals. RequestRefused."""
        if not self._authorized(request):
            raise RequestRefused(401, "auth", "missing or wrong bearer token")
        if self.token is None and request.content_type != "application/json":
            raise RequestRefused(415, "content_type", "send the body as JSON (Content-Type: application/json)")
        body = await self.read_body(request, max_body)
        try:
            fields = msgspec.json.decode(body) if body.strip() else {}
        except msgspec.DecodeError:
            raise RequestRefused(400, "json", f"the body is not JSON: send {shape}") from None
        if not isinstance(fields, dict):
            raise RequestRefused(400, "json", f"the body is not a JSON object: send {shape}")
        return fields

    async def read_body(self, request: web.BaseRequest, max_body: int) -> bytes:
        """The whole body, within `max_body` bytes and the body deadline, uncompressed; else
        RequestRefused (413, 415, 408)."""
        too_big = f"over the {max_body}-byte limit"
        if (request.content_length or 0) > max_body:
            raise RequestRefused(413, "too_large", f"body is {request.content_length} bytes, {too_big}")
        if request.headers.get("Content-Encoding", "identity").lower() != "identity":
            raise RequestRefused(415, "content_type", "compressed bodies are not accepted: send plain JSON")
        content = request.content
        if content.is_eof():  # it all arrived with the head (most webhooks): nothing to wait for
            body = content.read_nowait()
            if len(body) > max_body:
                raise RequestRefused(413, "too_large", f"body is {too_big}")
            return body
        # Read here, not by request.read(): a chunked body is cut off at this route's limit, which
        # may differ from the application's client_max_size.
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.body_timeout_s):
                while request.can_read_body and (chunk := await request.content.readany()):
                    size += len(chunk)
                    if size > max_body:
                        raise RequestRefused(413, "too_large", f"body is {too_big}")
                    chunks.append(chunk)
        except TimeoutError:
            raise RequestRefused(
                408, "slow_client", f"the body did not arrive within {self.body_timeout_s:g}s"
            ) from None
        return b"".join(chunks)

    async def store(self, event: Event) -> bus.PubAckInfo:
        """Publish an event built at this edge, or RequestRefused (413 over the event limit, 503
        without NATS)."""
        # The engine rejects an envelope over max_event_bytes: refuse it here, unpublished. The
        # encoding measured is the one published.
        body = encode(event)
        size, limit = len(body), self.max_event_bytes()
        if size > limit:
            too_big = f"the event would be {size} bytes, over the {limit}-byte event limit"
            raise RequestRefused(413, "too_large", too_big)
        try:
            return await self.publish(event, body)
        except NatsUnavailable as exc:
            raise RequestRefused(503, "nats", exc.message) from None

    def _content_type_problem(self, request: web.BaseRequest) -> str | None:
        """A body must say it is JSON: a web page cannot send that cross-site without a preflight.
        A verified bearer token already proves the caller, so then any type is read as JSON."""
        if self.token is not None:
            return None
        given = request.headers.get("Content-Type")
        if request.content_type != "application/json":
            return (
                f"Content-Type {given[:100]!r} is not application/json: send the header "
                "(curl: -H 'Content-Type: application/json')"
                if given
                else "a body needs Content-Type: application/json (curl: -H 'Content-Type: application/json')"
            )
        if (request.charset or "utf-8").lower() not in ("utf-8", "utf8"):
            return f"charset {request.charset!r} is not accepted: JSON bodies are UTF-8"
        return None

    async def healthz(self, request: web.Request) -> web.Response:
        health = self.health()
        return web.json_response(health, status=200 if health["ok"] else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        body = await asyncio.to_thread(self.scrape.exposition)  # the state part reads SQLite
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    def app(self, extra: Iterable[web.RouteDef] = ()) -> web.Application:
        app = web.Application(client_max_size=self.max_body + 1024, middlewares=[track_requests, self.guard])
        app.add_routes(list(extra))  # the dashboard's pages
        app.add_routes(
            [
                web.post("/events/{subject}", self.events),
                web.get("/ping/{subject}", self.events, allow_head=False),  # HEAD must not store an event
                web.post("/ping/{subject}", self.events),
                web.get("/healthz", self.healthz),
                web.get("/metrics", self.metrics),
            ]
        )
        app.router.register_resource(WebhookResource(self))
        return app

    async def webhook(self, request: web.Request) -> web.Response:
        return await self.webhooks[request.path].handle(request, self)


class WebhookResource(web.AbstractResource):
    """The webhook routes, as the one router resource that matches whatever paths `ingress.webhooks`
    holds now: the routes of a running aiohttp app are frozen, a reload's are not. Indexed under
    "/", it is tried only when no route of the listener's own matched."""

    def __init__(self, ingress: Ingress) -> None:
        super().__init__()
        self.ingress = ingress
        self.route = web.ResourceRoute("POST", ingress.webhook, self)

    @property
    def canonical(self) -> str:
        return "/"

    def url_for(self, **kwargs: str) -> URL:
        raise NotImplementedError("webhook paths come from the config")

    async def resolve(self, request: web.Request) -> tuple[web.UrlMappingMatchInfo | None, set[str]]:
        if request.path not in self.ingress.webhooks:
            return None, set()
        if request.method != "POST":
            return None, {"POST"}  # 405, with Allow: POST
        return web.UrlMappingMatchInfo({}, self.route), {"POST"}

    def add_prefix(self, prefix: str) -> None:
        raise NotImplementedError("the listener's app is not mounted under a prefix")

    def get_info(self) -> dict[str, Any]:  # type: ignore[override]  # aiohttp types it with a private TypedDict
        return {}

    def raw_match(self, path: str) -> bool:
        return False  # never the resource a new route is added to

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[web.AbstractRoute]:
        return iter([self.route])


async def serve(
    ingress: Ingress, host: str, port: int, limits: ConnectionLimits, extra: Iterable[web.RouteDef] = ()
) -> tuple[web.AppRunner, int]:
    """Bind the listener; (its runner, the bound port). Raises OSError when the port is taken."""
    runner = web.AppRunner(ingress.app(extra), access_log=None)
    await runner.setup()
    site = ListenerSite(runner, host, port, limits, ingress.refused)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    return runner, site.port


def webhook_routes(daemon: Daemon) -> dict[str, WebhookRoute]:
    """The webhook sources of the daemon's config as routes (WatchdError when one cannot run),
    recording their health where the daemon keeps every source's."""
    from watchd.sources.webhook import build_routes

    cfg = daemon.loaded.config
    sources = daemon.sources
    return build_routes(
        cfg.source,
        listen_host=split_listen(cfg.http.listen, setting="[http] listen")[0],
        default_max_body=cfg.http.max_body,
        clock=daemon.clock,
        health_of=lambda name: sources.health.get(name) if sources is not None else None,
    )


async def start(daemon: Daemon) -> tuple[web.AppRunner, Ingress]:
    """Bind the listener; the daemon reports ready to systemd only after this succeeded."""
    cfg = daemon.loaded.config.http
    host, port = split_listen(cfg.listen, setting="[http] listen")
    token = resolve_secret(cfg.token)
    if not is_loopback(host) and token is None:
        raise WatchdError(
            f"[http] listen = {cfg.listen!r} is not loopback but no token is set",
            hint='set [http] token = "env:WATCHD_HTTP_TOKEN" before exposing the listener',
        )

    ingress = Ingress(
        publish=daemon.publish,  # through the daemon: a failure to store makes it unhealthy
        health=daemon.health,
        token=token,
        max_body=cfg.max_body,
        max_event_bytes=lambda: daemon.loaded.config.engine.max_event_bytes,
        listen_host=host,
        allowed_hosts=cfg.allowed_hosts,
        metrics=daemon.metrics,
    )
    daemon.metrics.add_state(lambda: store_families(daemon.loaded))
    ingress.webhooks = webhook_routes(daemon)  # before it listens: a webhook that cannot run stops the start
    limits = ConnectionLimits(max_connections=cfg.max_connections or default_max_connections())
    try:
        answers = answer_api(daemon, ingress)
        extra = [*answers.routes(), *schedule_routes(daemon, ingress), *release_routes(daemon, ingress)]
        extra += [*dashboard_routes(daemon, token, answers)]
        runner, _port = await serve(ingress, host, port, limits, extra)
    except OSError as exc:
        raise WatchdError(
            f"cannot listen on {cfg.listen}: {exc.strerror}", hint="set [http] listen to a free port"
        ) from None
    log.info("HTTP listening on %s (at most %d connections)", cfg.listen, limits.max_connections)
    return runner, ingress


def answer_api(daemon: Daemon, ingress: Ingress) -> AnswerApi:
    """POST /api/ack|snooze|mute|unmute (answer_api.py), vetted by this listener's token; the
    dashboard's answer forms go through the same object."""
    from watchd.answer_api import AnswerApi

    return AnswerApi(
        store=lambda: daemon.store,
        watches=daemon.watch_ids,
        publish=ingress.store,
        applied=daemon.applied_seq,
        fields=ingress.api_fields,
        refuse=ingress.error,
        clock=daemon.clock,
    )


def schedule_routes(daemon: Daemon, ingress: Ingress) -> list[web.RouteDef]:
    """POST /api/run-now and /api/replay (schedule_api.py), vetted by this listener's token."""
    from watchd.schedule_api import ScheduleApi

    api = ScheduleApi(
        scheduler=lambda: daemon.scheduler,
        fields=ingress.api_fields,
        refuse=ingress.error,
    )
    return api.routes()


def release_routes(daemon: Daemon, ingress: Ingress) -> list[web.RouteDef]:
    """POST /api/release (release_api.py), vetted by this listener's token."""
    from watchd.release_api import ReleaseApi

    api = ReleaseApi(
        releases=lambda: daemon.releases,
        fields=ingress.api_fields,
        refuse=ingress.error,
    )
    return api.routes()
