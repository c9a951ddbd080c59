"""The dashboard mounted in the daemon: what its forms may change, done by the daemon's own code
(the answer API's `answer`, the scheduler, the outbox), never by calling the HTTP API over HTTP."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from watchd.errors import WatchdError

if TYPE_CHECKING:
    from watchd.answer_api import AnswerApi
    from watchd.daemon import Daemon

DASHBOARD_BY = "web"  # who an answer from the dashboard's forms is recorded as ("the dashboard")


class DaemonActions:
    """What the dashboard may change, done as the command line does it, on the daemon's writer thread."""

    def __init__(self, daemon: Daemon, answers: AnswerApi) -> None:
        self.daemon = daemon
        self.answers = answers

    async def answer(self, action: str, watch: str, key: str | None, duration: str | None) -> str:
        done = await self.answers.answer(action, watch, key=key, duration=duration, by=DASHBOARD_BY, via="web")
        if not done.applied:
            return f"{action} {watch}: sent, but watchd has not applied it yet (it will, in order)"
        # What the engine decided, in the command line's words: "disk-full [nas]: acked by …".
        said = [f"{_where(d['watch'], d['key'])}: {d['reason']}" for d in done.decisions]
        return "; ".join(said) or f"{action} {watch}: done"

    async def dlq(self, action: str, ref: str) -> str:
        from watchd.store.outbox import drop_dead, replay_dead
        from watchd.store.schedules import drop_dead_run

        store = self.daemon.store
        if store is None:
            raise WatchdError("watchd is still starting", hint="try again in a moment")
        if ref.startswith("t_"):  # a scheduled run's dead letter
            if action == "drop":
                row = await store.call(drop_dead_run, ref, self.daemon.clock())
                return f"dropped {row.key} (schedule {row.schedule})"
            scheduler = self.daemon.scheduler
            if scheduler is None:
                raise WatchdError("this watchd runs no schedules now", hint="try again in a moment")
            row = await scheduler.replay(ref)
            return f"replaying {row.key} (schedule {row.schedule}): it runs now with the same key"
        change = replay_dead if action == "replay" else drop_dead
        h = await store.call(change, ref, self.daemon.clock())
        self.daemon.wake()
        return f"{'replaying' if action == 'replay' else 'dropped'} {h.id} ({h.watch} → {h.target})"

    async def run_now(self, name: str, by: str) -> str:
        scheduler = self.daemon.scheduler
        if scheduler is None:
            raise WatchdError("this watchd runs no schedules now (starting, or standing by)", hint="try again later")
        key, _ = await scheduler.run_now(name, by)
        return f"running {name} now ({key})"

    async def release(self, action: str, agent: str, by: str) -> str:
        control = self.daemon.releases
        if control is None:
            raise WatchdError("this watchd delivers nothing now (starting, or standing by)", hint="try again later")
        if action == "promote":
            record = await control.promote(agent, by)
            return f"{record.agent}: promoted by {by}; its held handoffs are released"
        _, message = await control.rollback(agent, by)
        return message


def _where(watch: str, key: str | None) -> str:
    return watch if key is None else f"{watch} [{key}]"


# The pages and forms `Dashboard.routes()` serves, routed here without importing it: the page
# code and Jinja2 (~3 MB) are loaded by the first request, so a daemon nobody browses never has them.
ROUTES: tuple[tuple[str, str], ...] = (
    ("GET", "/"),
    ("GET", "/watches/{id}"),
    ("GET", "/schedules"),
    ("GET", "/schedules/{name}"),
    ("GET", "/handoffs"),
    ("GET", "/runs"),
    ("GET", "/runs/{id}"),
    ("GET", "/maintenance"),
    ("GET", "/favicon.ico"),
    ("GET", "/login"),
    ("POST", "/login"),
    ("POST", "/logout"),
    ("POST", "/actions/watches/{id}/{action}"),
    ("POST", "/actions/dlq/{id}/{action}"),
    ("POST", "/actions/schedules/{name}/run-now"),
    ("POST", "/actions/releases/{agent}/{action}"),
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class OnFirstRequest:
    """Routes whose handlers are built by the first request to any of them."""

    def __init__(self, build: Callable[[], list[web.RouteDef]]) -> None:
        self._build = build
        self._handlers: dict[tuple[str, str], Handler] | None = None

    def routes(self, table: tuple[tuple[str, str], ...]) -> list[web.RouteDef]:
        return [web.route(method, path, self.handle) for method, path in table]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self._handlers is None:
            self._handlers = {(r.method, r.path): r.handler for r in self._build()}
        route = request.match_info.route
        return await self._handlers[(route.method, route.resource.canonical if route.resource else "")](request)


def dashboard_routes(daemon: Daemon, token: str | None, answers: AnswerApi) -> list[web.RouteDef]:
    mode = daemon.loaded.config.http.dashboard
    if mode == "off":
        return []

    def build() -> list[web.RouteDef]:
        from watchd.web.access import Access
        from watchd.web.app import Dashboard

        dashboard = Dashboard(
            loaded=lambda: daemon.loaded,
            clock=daemon.clock,
            health=daemon.health,
            access=Access(token),
            actions=DaemonActions(daemon, answers),
            read_only=mode == "read-only",
        )
        return dashboard.routes()

    return OnFirstRequest(build).routes(ROUTES)
