"""The HTTP API for scheduling control, on the listener (`watchd run-now` and `watchd dlq replay`
post here, as `watchd ack` posts to the answers API):

    POST /api/run-now   {"schedule": "report", "by": "cli:alice"}
        202 {"key", "schedule", "tick", "trigger": "manual", "by"}: the run has started, through
        the path a tick takes, with a key of its own; `explain --schedule` shows it.
    POST /api/replay    {"id": "t_3f2a…"}     (a dead scheduled run, or a unique prefix of its key)
        202 {"key", "schedule", "tick"}: it runs again now with the same key, from attempt 1.

Refusals are `{"error", "hint"}`: 400 a bad body, 401 a missing bearer token (when `[http] token`
is set), 404 no such schedule or dead run, 409 a run of the schedule still going with
overlap = "forbid", 415 a body that is not JSON, 503 while watchd starts or on an instance that
stands by. Callers are vetted as the listener vets every request (ingress.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec
from aiohttp import web

from watchd import answers
from watchd.errors import RequestRefused, WatchdError
from watchd.model import iso

if TYPE_CHECKING:
    from watchd.cron.runner import Scheduler
    from watchd.ingress import ApiFields, Refuse


class ScheduleApi:
    def __init__(
        self,
        *,
        scheduler: Callable[[], Scheduler | None],
        fields: ApiFields,
        refuse: Refuse,
    ) -> None:
        self.scheduler = scheduler
        self.fields = fields
        self.refuse = refuse

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/api/run-now", self.run_now), web.post("/api/replay", self.replay)]

    async def run_now(self, request: web.Request) -> web.Response:
        try:
            fields, sched = await self._fields(request, "schedule", '{"schedule": "NAME"}')
            by = answers.caller(fields.get("by"), "http")
            key, at = await sched.run_now(fields["schedule"], by)
        except RequestRefused as exc:
            return self.refuse(exc.status, exc.reason, exc.message)
        except WatchdError as exc:
            return self._error(exc)
        body = {"key": key, "schedule": fields["schedule"], "tick": iso(at), "trigger": "manual", "by": by}
        return web.json_response(body, status=202)

    async def replay(self, request: web.Request) -> web.Response:
        try:
            fields, sched = await self._fields(request, "id", '{"id": "t_…"}')
            row = await sched.replay(fields["id"])
        except RequestRefused as exc:
            return self.refuse(exc.status, exc.reason, exc.message)
        except WatchdError as exc:
            return self._error(exc)
        return web.json_response({"key": row.key, "schedule": row.schedule, "tick": iso(row.tick_at)}, status=202)

    async def _fields(self, request: web.Request, name: str, shape: str) -> tuple[dict[str, str], Scheduler]:
        fields = await self.fields(request, shape)
        if not isinstance(fields.get(name), str) or not fields[name]:
            raise RequestRefused(400, "schedule", f"the body names no {name}: send {shape}")
        if fields.get("by") is not None and not isinstance(fields["by"], str):
            raise RequestRefused(400, "schedule", "`by` must be a string")
        sched = self.scheduler()
        if sched is None:
            raise RequestRefused(503, "starting", "this watchd runs no schedules now (starting, or standing by)")
        return fields, sched

    def _error(self, exc: WatchdError) -> web.Response:
        from watchd.cron.runner import UnknownSchedule

        missing = isinstance(exc, UnknownSchedule) or exc.message.startswith("no dead scheduled run")
        status = 404 if missing else 409
        response = self.refuse(status, "schedule", exc.message)
        response.body = msgspec.json.encode({"error": exc.message, "hint": exc.hint})
        return response
