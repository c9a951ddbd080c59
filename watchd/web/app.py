"""The dashboard's routes: pages rendered on the server from `reads`, and POST actions guarded by
`access`. It knows no daemon: what it reads comes through `loaded()`, `clock()` and `health()`,
what it changes through an `Actions`, so a test can mount it beside any state directory."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import jinja2
from aiohttp import web

from watchd import status
from watchd.config import Loaded
from watchd.errors import WatchdError
from watchd.model import iso
from watchd.web import reads
from watchd.web.access import SESSION_COOKIE, Access

log = logging.getLogger("watchd.web")

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("watchd.web", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
_templates.globals.update(source_state=status.source_state, source_events=status.source_events)


@jinja2.pass_context
def _short_time(ctx: jinja2.runtime.Context, at: str | None) -> str:
    """An RFC 3339 UTC instant in the configured zone, to the second: "2026-11-22 15:00:05 CET"
    (narrow enough for a table; the page says which zone)."""
    if not at:
        return "-"
    try:
        local = datetime.fromisoformat(at.replace("Z", "+00:00")).astimezone(ZoneInfo(ctx["zone"]))
    except ValueError:  # not an instant after all: shown as it is rather than failing the page
        return at
    return f"{local:%Y-%m-%d %H:%M:%S %Z}"


def _as_data(value: object) -> str:
    """A value as indented JSON text (a string as it is), for a <pre>: autoescaped like any text, so
    model output and event data show as data, never as markup."""
    return value if isinstance(value, str) else json.dumps(value, indent=1, ensure_ascii=False)


_templates.filters["t"] = _short_time
_templates.filters["data"] = _as_data


class Actions(Protocol):
    async def answer(self, action: str, watch: str, key: str | None, duration: str | None) -> str:
        """Ack, snooze, mute or unmute a watch (one key, or every key) as the answer API does;
        a sentence saying what the engine decided."""
        ...

    async def dlq(self, action: str, ref: str) -> str:
        """Replay or drop a dead handoff or scheduled run; a sentence saying what was done."""
        ...

    async def run_now(self, name: str, by: str) -> str:
        """Run a schedule's job now (trigger manual); a sentence saying what was done."""
        ...

    async def release(self, action: str, agent: str, by: str) -> str:
        """Promote an agent's held release, or roll it back; a sentence saying what was done."""
        ...


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Dashboard:
    def __init__(
        self,
        *,
        loaded: Callable[[], Loaded],
        clock: Callable[[], float],
        health: Callable[[], dict[str, Any]],
        access: Access,
        actions: Actions | None = None,
        read_only: bool = False,
    ) -> None:
        self.loaded = loaded
        self.clock = clock
        self.health = health
        self.access = access
        self.actions = actions
        self.read_only = read_only or actions is None

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.page(self.overview)),
            web.get("/watches/{id}", self.page(self.watch)),
            web.get("/schedules", self.page(self.schedules)),
            web.get("/schedules/{name}", self.page(self.schedule)),
            web.get("/handoffs", self.page(self.handoffs)),
            web.get("/runs", self.page(self.runs)),
            web.get("/runs/{id}", self.page(self.run)),
            web.get("/maintenance", self.page(self.maintenance)),
            web.get("/favicon.ico", self.no_icon),  # every browser asks: answered, not logged as a refusal
            web.get("/login", self.login_form),
            web.post("/login", self.login),
            web.post("/logout", self.logout),
            web.post("/actions/watches/{id}/{action}", self.action(self.answer_action)),
            web.post("/actions/dlq/{id}/{action}", self.action(self.dlq_action)),
            web.post("/actions/schedules/{name}/run-now", self.action(self.run_now_action)),
            web.post("/actions/releases/{agent}/{action}", self.action(self.release_action)),
        ]

    # ---- plumbing ----

    def _cookie(self, request: web.Request) -> str | None:
        return request.cookies.get(SESSION_COOKIE)

    def _allowed(self, request: web.Request) -> bool:
        return self.access.allowed(request.headers.get("Authorization"), self._cookie(request))

    def render(self, request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
        html = _templates.get_template(template).render(
            csrf=self.access.csrf_for(self._cookie(request)),
            read_only=self.read_only,
            signed_in=self.access.token is not None and self.access.session_valid(self._cookie(request)),
            notice=request.query.get("notice"),
            now=iso(self.clock()),
            zone=self.loaded().zone(),
            quote=urllib.parse.quote,
            **context,
        )
        return web.Response(text=html, content_type="text/html", status=status, headers=_SECURITY_HEADERS)

    def page(self, build: Callable[[web.Request], Awaitable[web.Response]]) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            if not self._allowed(request):
                raise web.HTTPSeeOther(f"/login?next={urllib.parse.quote(request.path_qs)}")
            try:
                return await build(request)
            except WatchdError as exc:
                return self.render(
                    request, "error.html", status=404, title="not found", message=exc.message, hint=exc.hint
                )

        return handler

    async def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)  # SQLite reads off the event loop

    # ---- pages ----

    async def overview(self, request: web.Request) -> web.Response:
        report = await self._read(reads.overview, self.loaded(), self.health(), self.clock())
        return self.render(request, "overview.html", title="watchd", r=report)

    async def watch(self, request: web.Request) -> web.Response:
        wid, key = request.match_info["id"], request.query.get("key") or None
        page = await self._read(reads.watch_page, self.loaded(), wid, self.clock(), key)
        return self.render(
            request,
            "watch.html",
            title=f"watch {wid}",
            w=page.report,
            svg=page.svg,
            key=key,
            holds=page.holds,
            incidents=page.incidents,
        )

    async def schedules(self, request: web.Request) -> web.Response:
        data = await self._read(reads.schedules_page, self.loaded(), self.clock())
        return self.render(request, "schedules.html", title="schedules", s=data)

    async def schedule(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        data = await self._read(reads.schedule_detail, self.loaded(), name, self.clock())
        return self.render(request, "schedule.html", title=f"schedule {name}", s=data)

    async def handoffs(self, request: web.Request) -> web.Response:
        state = request.query.get("state") or None
        rows = await self._read(reads.handoffs_page, self.loaded(), state)
        return self.render(request, "handoffs.html", title="handoffs", rows=rows, state=state)

    async def runs(self, request: web.Request) -> web.Response:
        rows = await self._read(reads.runs_page, self.loaded())
        return self.render(request, "runs.html", title="agent runs", rows=rows)

    async def run(self, request: web.Request) -> web.Response:
        data = await self._read(reads.run_detail, self.loaded(), request.match_info["id"])
        if data is None:
            raise WatchdError(f"no agent run {request.match_info['id']!r}", hint="the runs page lists them")
        return self.render(request, "run.html", title="agent run", d=data)

    async def maintenance(self, request: web.Request) -> web.Response:
        data = await self._read(reads.maintenance, self.loaded())
        return self.render(request, "maintenance.html", title="backups and canaries", m=data)

    async def no_icon(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers={"Cache-Control": "max-age=86400"})

    # ---- signing in ----

    async def login_form(self, request: web.Request) -> web.Response:
        return self.render(request, "login.html", title="sign in", next=request.query.get("next", "/"), failed=False)

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        target = _local_path(str(form.get("next", "/")))
        if self.access.token is None:
            raise web.HTTPSeeOther(target)
        if not self.access.token_matches(str(form.get("token", ""))):
            return self.render(request, "login.html", status=401, title="sign in", next=target, failed=True)
        response = web.HTTPSeeOther(target)
        response.set_cookie(SESSION_COOKIE, self.access.new_session(), httponly=True, samesite="Strict", path="/")
        raise response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        response = web.HTTPSeeOther("/login")
        response.del_cookie(SESSION_COOKIE, path="/")
        raise response

    # ---- actions ----

    async def answer_action(self, request: web.Request) -> web.StreamResponse:
        form = await self._checked_form(request)
        action, wid = request.match_info["action"], request.match_info["id"]
        if action not in ANSWERS:
            raise web.HTTPNotFound()
        key = str(form.get("key", "")) or None
        default = ANSWERS[action]
        duration = (str(form.get("duration", "")) or default) if default else None  # ack and unmute take none
        assert self.actions is not None  # _checked_form refuses in read-only mode
        try:
            notice = await self.actions.answer(action, wid, key, duration)
        except WatchdError as exc:
            notice = exc.message
        log.info("dashboard: %s %s%s: %s", action, wid, f" [{key}]" if key else "", notice)
        back = str(form.get("back", "")) or f"/watches/{urllib.parse.quote(wid, safe='')}"
        raise web.HTTPSeeOther(_with_notice(_local_path(back), notice))

    async def dlq_action(self, request: web.Request) -> web.StreamResponse:
        form = await self._checked_form(request)
        action, ref = request.match_info["action"], request.match_info["id"]
        if action not in ("replay", "drop"):
            raise web.HTTPNotFound()
        assert self.actions is not None  # _checked_form refuses in read-only mode
        try:
            notice = await self.actions.dlq(action, ref)
        except WatchdError as exc:
            notice = exc.message
        log.info("dashboard: dlq %s %s: %s", action, ref, notice)
        raise web.HTTPSeeOther(_with_notice(_local_path(str(form.get("back", "/handoffs?state=dead"))), notice))

    async def run_now_action(self, request: web.Request) -> web.StreamResponse:
        await self._checked_form(request)
        name = request.match_info["name"]
        assert self.actions is not None  # _checked_form refuses in read-only mode
        try:
            notice = await self.actions.run_now(name, "http:dashboard")
        except WatchdError as exc:
            notice = exc.message
        log.info("dashboard: run now %s: %s", name, notice)
        raise web.HTTPSeeOther(_with_notice(f"/schedules/{urllib.parse.quote(name, safe='')}", notice))

    async def release_action(self, request: web.Request) -> web.StreamResponse:
        await self._checked_form(request)
        agent, action = request.match_info["agent"], request.match_info["action"]
        if action not in ("promote", "rollback"):
            raise web.HTTPNotFound()
        assert self.actions is not None  # _checked_form refuses in read-only mode
        try:
            notice = await self.actions.release(action, agent, "http:dashboard")
        except WatchdError as exc:
            notice = exc.message
        log.info("dashboard: release %s %s: %s", action, agent, notice)
        raise web.HTTPSeeOther(_with_notice("/maintenance", notice))

    def action(self, act: Handler) -> Handler:
        """A POST form's handler: a refusal is a page saying why (with its status), for a person."""

        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                return await act(request)
            except FormRefused as exc:
                log.info("dashboard: %s %s refused: %s", request.method, request.path[:100], exc.message)
                return self.render(
                    request, "error.html", status=exc.status, title="refused", message=exc.message, hint=exc.hint
                )

        return handler

    async def _checked_form(self, request: web.Request) -> Any:
        if not self._allowed(request):
            raise FormRefused(401, "sign in first", hint="the token is asked for at /login")
        if self.read_only:
            raise FormRefused(403, 'the dashboard is read-only ([http] dashboard = "read-only")')
        form = await request.post()
        if not self.access.csrf_valid(self._cookie(request), str(form.get("csrf", "")) or None):
            raise FormRefused(403, "the form's CSRF token is missing or stale", hint="reload the page and try again")
        return form


class FormRefused(WatchdError):
    """A form the dashboard will not act on, and the status to answer."""

    def __init__(self, status: int, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.status = status


# The answers the forms offer, with the duration a button gives (ack and unmute take none).
ANSWERS: dict[str, str | None] = {"ack": None, "snooze": "1h", "mute": "24h", "unmute": None}

_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _local_path(target: str) -> str:
    """Only a path on this listener: never an open redirect to another site."""
    parts = urllib.parse.urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


def _with_notice(path: str, notice: str) -> str:
    sep = "&" if "?" in path else "?"
    return f"{path}{sep}notice={urllib.parse.quote(notice)}"
