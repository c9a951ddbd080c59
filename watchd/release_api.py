"""The HTTP API for agents' releases, on the listener (`watchd release promote|rollback` post here):

    POST /api/release   {"agent": "claw", "action": "promote" | "rollback", "by": "cli:alice"}
        200 {"agent", "action", "by", "message", "record"}: done (a rollback has run and been
        canaried by then; `record` is the agent's release record as `watchd release --json` shows it).

Refusals are `{"error", "hint"}`: 400 a bad body, 401 a missing bearer token (when `[http] token` is
set), 404 no such agent, 409 nothing to act on (no release recorded, no rollback configured), 415 a
body that is not JSON, 503 while watchd starts or on an instance that stands by. Callers are vetted
as the listener vets every request (ingress.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec
from aiohttp import web

from watchd import answers
from watchd.errors import RequestRefused, WatchdError

if TYPE_CHECKING:
    from watchd.ingress import ApiFields, Refuse
    from watchd.jobs.release import ReleaseControl

ACTIONS = ("promote", "rollback")


class ReleaseApi:
    def __init__(
        self,
        *,
        releases: Callable[[], ReleaseControl | None],
        fields: ApiFields,
        refuse: Refuse,
    ) -> None:
        self.releases = releases
        self.fields = fields
        self.refuse = refuse

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/api/release", self.act)]

    async def act(self, request: web.Request) -> web.Response:
        from watchd.jobs.release import UnknownAgent

        try:
            agent, action, by, control = await self._fields(request)
            if action == "promote":
                record = await control.promote(agent, by)
                message = f"{record.agent}: promoted by {by}; its held handoffs are released"
            else:
                record, message = await control.rollback(agent, by)
        except RequestRefused as exc:
            return self.refuse(exc.status, exc.reason, exc.message)
        except WatchdError as exc:
            response = self.refuse(404 if isinstance(exc, UnknownAgent) else 409, "release", exc.message)
            response.body = msgspec.json.encode({"error": exc.message, "hint": exc.hint})
            return response
        body = {"agent": record.agent, "action": action, "by": by, "message": message, "record": record}
        return web.Response(body=msgspec.json.encode(body), content_type="application/json")

    async def _fields(self, request: web.Request) -> tuple[str, str, str, ReleaseControl]:
        fields = await self.fields(request, '{"agent": "NAME", "action": "promote" | "rollback"}')
        if not isinstance(fields.get("agent"), str) or not fields["agent"]:
            raise RequestRefused(400, "release", 'the body names no agent: send {"agent": "NAME", "action": …}')
        if fields.get("action") not in ACTIONS:
            raise RequestRefused(400, "release", '`action` must be "promote" or "rollback"')
        control = self.releases()
        if control is None:
            raise RequestRefused(503, "starting", "this watchd delivers nothing now (starting, or standing by)")
        return fields["agent"], fields["action"], answers.caller(fields.get("by"), "http"), control
