"""The HTTP API for answers, on the listener: `POST /api/ack`, `/api/snooze`, `/api/mute`,
`/api/unmute`, each with a JSON body (`watchd ack|snooze|mute|unmute` post here).

    {"target": "<watch id> | <handoff id or a prefix of one>",
     "key": "<key>",            # optional: one key; else the handoff's key, or every key
     "duration": "1h",          # snooze and mute (default 1h and 24h)
     "by": "cli:alice"}         # optional: who, shown by explain ("alice (command line)")

The answer is published as a `watchd.answer` event and the call returns once the engine applied
it: 200 `{"applied": true, "id", "decisions": [{"watch", "key", "verdict", "reason"}]}`, or 202
`{"applied": false, "id"}` when it is queued but not applied within a few seconds. Refusals are
`{"error", "hint"}`: 400 a bad body or duration, 401 a missing bearer token (when `[http] token`
is set, it is required here as on every route), 404 no such watch or handoff, 415 a body that
is not JSON, 503 no NATS. Callers are vetted as the listener vets every request (ingress.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from watchd import answers
from watchd.engine.answers import ACTIONS, ANSWER_SUBJECT
from watchd.errors import RequestRefused, UnknownTarget, WatchdError
from watchd.model import Event, own_event
from watchd.store import Store
from watchd.store.decisions import event_decisions

if TYPE_CHECKING:
    from watchd.ingress import ApiFields, Refuse

APPLY_WAIT_S = 5.0  # how long a call waits for the engine to apply the answer before answering 202
_SHAPE = '{"target": "WATCH or HANDOFF", "duration": "1h"}'


@dataclass(frozen=True)
class Answered:
    """An answer published: applied by the engine (with its decisions), or still queued."""

    id: str
    applied: bool
    decisions: list[dict[str, Any]] = field(default_factory=list)


class AnswerApi:
    """The routes. `publish` stores an event (RequestRefused on failure), `applied` is the last
    stream sequence the engine committed, `refuse` answers and counts a refusal (the listener's)."""

    def __init__(
        self,
        *,
        store: Callable[[], Store | None],
        watches: Callable[[], Iterable[str]],
        publish: Callable[[Event], Awaitable[Any]],
        applied: Callable[[], int],
        fields: ApiFields,
        refuse: Refuse,
        clock: Callable[[], float],
        apply_wait_s: float = APPLY_WAIT_S,
    ) -> None:
        self.store = store
        self.watches = watches
        self.publish = publish
        self.applied = applied
        self.fields = fields
        self.refuse = refuse
        self.clock = clock
        self.apply_wait_s = apply_wait_s

    def routes(self) -> list[web.RouteDef]:
        return [web.post(f"/api/{action}", self.handle) for action in ACTIONS]

    async def handle(self, request: web.Request) -> web.Response:
        action = request.path.rsplit("/", 1)[-1]
        try:
            fields = await self._fields(request)
            done = await self.answer(
                action, fields["target"], key=fields.get("key"), duration=fields.get("duration"), by=fields.get("by")
            )
        except RequestRefused as exc:
            return self.refuse(exc.status, exc.reason, exc.message)
        except UnknownTarget as exc:
            return self._error(404, "unknown", exc)
        except WatchdError as exc:
            return self._error(400, "answer", exc)
        if not done.applied:
            return web.json_response({"applied": False, "id": done.id}, status=202)
        return web.json_response({"applied": True, "id": done.id, "decisions": done.decisions})

    async def answer(
        self,
        action: str,
        target: str,
        *,
        key: str | None = None,
        duration: str | None = None,
        by: str | None = None,
        via: str = "http",
    ) -> Answered:
        """Resolve the target, publish the answer and wait until the engine applied it: the one way
        an answer comes through the listener, from the API and from the dashboard's forms.
        RequestRefused (no store yet, no NATS), UnknownTarget, WatchdError (a bad duration)."""
        store = self.store()
        if store is None:
            raise RequestRefused(503, "starting", "watchd is still starting: try again in a moment")
        resolved = await answers.resolve(store, self.watches(), target)
        who = (by or via) if via == "web" else answers.caller(by, via)  # the dashboard names itself; callers cannot
        data = answers.answer_data(action, resolved, by=who, key=key, duration=duration)
        event = own_event(ANSWER_SUBJECT, data, time_s=self.clock())
        ack = await self.publish(event)
        deadline = time.monotonic() + self.apply_wait_s
        while self.applied() < ack.seq:
            if time.monotonic() > deadline:
                return Answered(event.id, applied=False)
            await asyncio.sleep(0.02)
        said = await store.call(event_decisions, event.id)
        shown = [{"watch": d.watch, "key": d.key, "verdict": d.verdict, "reason": d.reason} for d in said]
        return Answered(event.id, applied=True, decisions=shown)

    async def _fields(self, request: web.Request) -> dict[str, Any]:
        fields = await self.fields(request, _SHAPE)
        if not isinstance(fields.get("target"), str) or not fields["target"]:
            raise RequestRefused(400, "answer", f"the body names no target: send {_SHAPE}")
        for name in ("key", "duration", "by"):
            if fields.get(name) is not None and not isinstance(fields[name], str):
                raise RequestRefused(400, "answer", f"`{name}` must be a string")
        return fields

    def _error(self, status: int, reason: str, exc: WatchdError) -> web.Response:
        response = self.refuse(status, reason, exc.message)
        if exc.hint:
            response.body = msgspec.json.encode({"error": exc.message, "hint": exc.hint})
        return response
