"""The HTTP listener: event ingress (`POST /events/<subject>`, `/ping/<subject>`), /healthz, /metrics."""

from __future__ import annotations

import hmac
import json
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from watchd import bus
from watchd.config import resolve_secret
from watchd.errors import EventRejected, NatsUnavailable, WatchdError
from watchd.limits import is_loopback, split_listen
from watchd.model import encode, make_event

if TYPE_CHECKING:
    from watchd.daemon import Daemon

log = logging.getLogger("watchd.http")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class Ingress:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        cfg = daemon.loaded.config.http
        self.token = resolve_secret(cfg.token)
        self.max_body = cfg.max_body

    def _authorized(self, request: web.Request) -> bool:
        if self.token is None:
            return True
        given = request.headers.get("Authorization", "")
        return given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), self.token.encode())

    async def events(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "missing or wrong bearer token")
        too_big = f"over the {self.max_body}-byte limit"
        if (request.content_length or 0) > self.max_body:
            return _error(413, f"body is {request.content_length} bytes, {too_big}")
        try:
            body = await request.read() if request.can_read_body else b""
        except web.HTTPRequestEntityTooLarge:  # a chunked body past client_max_size
            return _error(413, f"body is {too_big}")
        if len(body) > self.max_body:
            return _error(413, f"body is {len(body)} bytes, {too_big}")
        data: Any = {}
        if body.strip():
            try:
                data = json.loads(body)
            except ValueError as exc:
                return _error(400, f"body is not valid JSON: {exc}")
        if not isinstance(data, dict):
            return _error(400, "body must be a JSON object (the event's data)")
        event_id = request.headers.get("Idempotency-Key") or request.query.get("id")
        try:
            event = make_event(request.match_info["subject"], data, id=event_id, source="http")
            # The engine rejects an envelope over max_event_bytes: refuse it here, unpublished.
            size, limit = len(encode(event)), self.daemon.loaded.config.engine.max_event_bytes
            if size > limit:
                return _error(413, f"the event would be {size} bytes, over the {limit}-byte event limit")
            assert self.daemon.js is not None
            ack = await bus.publish_event(self.daemon.js, event)
        except EventRejected as exc:
            return _error(400, exc.message)
        except NatsUnavailable as exc:
            return _error(503, exc.message)
        return web.json_response({"id": event.id, "seq": ack.seq, "duplicate": ack.duplicate}, status=202)

    async def healthz(self, request: web.Request) -> web.Response:
        health = self.daemon.health()
        return web.json_response(health, status=200 if health["ok"] else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        h = self.daemon.health()
        lines = [
            "# TYPE watchd_events_total counter",
            f"watchd_events_total {h['events']}",
            "# TYPE watchd_last_seq gauge",
            f"watchd_last_seq {h['last_seq']}",
            "# TYPE watchd_watches gauge",
            f"watchd_watches {h['watches']}",
            "# TYPE watchd_up gauge",
            f"watchd_up {1 if h['ok'] else 0}",
        ]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


async def start(daemon: Daemon) -> web.AppRunner:
    """Bind the listener; the daemon reports ready to systemd only after this succeeded."""
    cfg = daemon.loaded.config.http
    host, port = split_listen(cfg.listen, setting="[http] listen")
    ingress = Ingress(daemon)
    if not is_loopback(host) and ingress.token is None:
        raise WatchdError(
            f"[http] listen = {cfg.listen!r} is not loopback but no token is set",
            hint='set [http] token = "env:WATCHD_HTTP_TOKEN" before exposing the listener',
        )
    app = web.Application(client_max_size=cfg.max_body + 1024)
    app.add_routes(
        [
            web.post("/events/{subject}", ingress.events),
            web.get("/ping/{subject}", ingress.events),
            web.post("/ping/{subject}", ingress.events),
            web.get("/healthz", ingress.healthz),
            web.get("/metrics", ingress.metrics),
        ]
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise WatchdError(
            f"cannot listen on {cfg.listen}: {exc.strerror}", hint="set [http] listen to a free port"
        ) from None
    log.info("HTTP listening on %s", cfg.listen)
    return runner
