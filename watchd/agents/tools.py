"""The tools an Anthropic agent may call, allow-listed per agent, with validated arguments.

`notify` (only to the notifiers the agent lists), `emit` (a follow-up event, never on `watchd.`),
`watch` (a temporary follow-up watch with an expiry), `read_state`/`write_state` (an agent with `state`:
its document across runs, agents/memory.py) and `done` (status + summary). A tool that is not
in the agent's `tools` is never offered and, if called anyway, refused. Invalid arguments go back to
the model as a tool_result error (and the step still counts against `max_steps`).

Each effect carries the handoff's key: a notification's handoff id, an emitted event's id and a
watch's id are all hashes of (handoff id, step, tool_use id), so a step resumed after a crash repeats
nothing — the outbox, the stream (Nats-Msg-Id) and the watch table each store the second copy once.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
from nats.js import JetStreamContext

from watchd import bus, expr
from watchd.agents import memory
from watchd.config import AbsentWatch, AnthropicAgent, MatchWatch, Pattern, Watch
from watchd.cron.schedule import parse_duration
from watchd.errors import WatchdError
from watchd.model import Handoff, iso, make_event, stable_hash
from watchd.store import Store, agent_state
from watchd.store.agent_state import Scope
from watchd.store.agent_watches import add_watch, next_watch_expiry
from watchd.store.db import Write
from watchd.store.outbox import enqueue_handoff
from watchd.store.runs import Step
from watchd.upkeep import Upkeep

MAX_EMIT_BYTES = 64 * 1024
ABSENT_GRACE_S = 60.0  # an absent follow-up lives this much past its silence, so it can fire before it expires
_PATTERN_RE = re.compile(r"^([A-Za-z0-9_-]+|\*|>)(\.([A-Za-z0-9_-]+|\*|>))*$")
_Text = Annotated[str, msgspec.Meta(min_length=1, max_length=4000)]


class NotifyArgs(msgspec.Struct, forbid_unknown_fields=True):
    to: str
    message: _Text


class EmitArgs(msgspec.Struct, forbid_unknown_fields=True):
    subject: Annotated[str, msgspec.Meta(max_length=200)]
    data: dict[str, Any] = msgspec.field(default_factory=dict)


class WatchArgs(msgspec.Struct, forbid_unknown_fields=True):
    kind: Literal["absent", "match"]
    subject: Annotated[str, msgspec.Meta(max_length=200)]
    within: str
    where: Annotated[str, msgspec.Meta(max_length=1000)] | None = None
    key: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    message: Annotated[str, msgspec.Meta(max_length=1000)] | None = None
    then: list[str] | None = None


class DoneArgs(msgspec.Struct, forbid_unknown_fields=True):
    status: Literal["resolved", "escalated", "ignored", "failed"]
    summary: _Text


class EscalateArgs(msgspec.Struct, forbid_unknown_fields=True):
    reason: _Text


class ReadStateArgs(msgspec.Struct, forbid_unknown_fields=True):
    pass


class WriteStateArgs(msgspec.Struct, forbid_unknown_fields=True):
    state: dict[str, Any]
    note: Annotated[str, msgspec.Meta(max_length=500)] | None = None


ARGS: dict[str, type[msgspec.Struct]] = {
    "notify": NotifyArgs,
    "emit": EmitArgs,
    "watch": WatchArgs,
    "read_state": ReadStateArgs,
    "write_state": WriteStateArgs,
    "escalate": EscalateArgs,
    "done": DoneArgs,
}
ORDER = ("notify", "emit", "watch", "read_state", "write_state", "escalate", "done")


class ToolUnavailable(WatchdError):
    """A tool's effect could not be carried out now (NATS down): the delivery is retried, the step resumed."""


@dataclass
class ToolOutcome:
    block: dict[str, Any]  # the tool_result for the model
    effect: Write | None = None  # written with the result, in one transaction
    done: DoneArgs | None = None
    watch_added: bool = False
    escalate: str | None = None  # the reason, for the runner to move the run to the next model


def _result(tool_use_id: str, text: str, *, error: bool = False) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_use_id, "content": text}
    if error:
        block["is_error"] = True
    return block


def content_blocks(content: Any) -> list[dict[str, Any]]:
    """The answer's content as plain blocks we can send back: text and tool_use (thinking is not used)."""
    out: list[dict[str, Any]] = []
    for b in content:
        kind = getattr(b, "type", None)
        if kind == "text":
            out.append({"type": "text", "text": b.text})
        elif kind == "tool_use":
            out.append({"type": "tool_use", "id": b.id, "name": b.name, "input": b.input})
    return out


def text_of(blocks: list[dict[str, Any]]) -> str:
    return " ".join(b["text"].strip() for b in blocks if b.get("type") == "text" and b["text"].strip())


def done_of(step: Step) -> DoneArgs | None:
    """The accepted `done` call of a step, if any (its result is not an error)."""
    for b in step.tool_uses():
        result = step.tool_results.get(b["id"])
        if b["name"] == "done" and result is not None and not result.get("is_error"):
            with contextlib.suppress(msgspec.ValidationError):
                return msgspec.convert(b["input"], DoneArgs)
    return None


class Toolbox:
    def __init__(
        self, cfg: AnthropicAgent, *, agent: str, js: JetStreamContext | None = None, store: Store | None = None
    ) -> None:
        self.cfg = cfg
        self.agent = agent  # "agent.<name>"
        self.js = js
        self.store = store
        self.notifiers = sorted({t for t in cfg.tools if t.startswith("notify.")})
        self.allowed = {"done"} | ({"notify"} if self.notifiers else set()) | {t for t in cfg.tools if t in ARGS}
        if cfg.state is not None and store is not None:  # the state tools come with `state`, not from `tools`
            self.allowed |= {"read_state", "write_state"}
        if len(cfg.models) > 1:  # tiers to climb: the built-in `escalate` comes with them
            self.allowed.add("escalate")
        self.max_watch_s = parse_duration(cfg.max_watch_for)

    def specs(self) -> list[dict[str, Any]]:
        """The tool definitions offered to the model: only the allowed ones."""
        every = {
            "notify": {
                "description": "Send a message to the user through one of the listed notifiers.",
                "input_schema": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["to", "message"],
                    "properties": {
                        "to": {"type": "string", "enum": self.notifiers},
                        "message": {"type": "string", "maxLength": 4000},
                    },
                },
            },
            "emit": {
                "description": "Publish a follow-up event (a dot-separated subject, not under watchd.).",
                "input_schema": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["subject"],
                    "properties": {"subject": {"type": "string"}, "data": {"type": "object"}},
                },
            },
            "watch": {
                "description": (
                    "Create a temporary follow-up watch. kind=absent: fire if no event matching subject/where "
                    "arrives within `within` (e.g. '2d': 'tell me if there is no reply in 2 days'). kind=match: "
                    "fire on each matching event during `within`. `where` is a CEL expression over the event, "
                    'e.g. data.thread == "abc". It wakes you again unless `then` names one of your notifiers.'
                ),
                "input_schema": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["kind", "subject", "within"],
                    "properties": {
                        "kind": {"type": "string", "enum": ["absent", "match"]},
                        "subject": {"type": "string"},
                        "within": {"type": "string"},
                        "where": {"type": "string"},
                        "key": {"type": "string"},
                        "message": {"type": "string"},
                        "then": {"type": "array", "items": {"type": "string", "enum": [self.agent, *self.notifiers]}},
                    },
                },
            },
            "read_state": {
                "description": "Read your saved state: the JSON document you wrote in earlier runs (null if none).",
                "input_schema": {"type": "object", "additionalProperties": False, "properties": {}},
            },
            "write_state": {
                "description": (
                    "Save your state for the next runs: a JSON object replacing the previous one (every version "
                    "is kept). Save what the next run must know, e.g. today's baseline."
                ),
                "input_schema": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["state"],
                    "properties": {"state": {"type": "object"}, "note": {"type": "string", "maxLength": 500}},
                },
            },
            "escalate": {
                "description": (
                    "Hand this run to a more capable model: call it alone when the task is beyond you, with the "
                    "reason. The conversation so far goes with it."
                ),
                "input_schema": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["reason"],
                    "properties": {"reason": {"type": "string", "maxLength": 4000}},
                },
            },
            "done": {
                "description": "Finish: a status and a short summary of what you found and did.",
                "input_schema": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["status", "summary"],
                    "properties": {
                        "status": {"type": "string", "enum": ["resolved", "escalated", "ignored", "failed"]},
                        "summary": {"type": "string", "maxLength": 4000},
                    },
                },
            },
        }
        return [{"name": name, **every[name]} for name in ORDER if name in self.allowed]

    async def run(self, h: Handoff, n: int, block: dict[str, Any], now: float) -> ToolOutcome:
        """Validate and carry out one tool_use block of step n. Never raises for the model's mistakes."""
        name, tid = str(block.get("name")), str(block.get("id"))
        if name not in self.allowed:
            return ToolOutcome(_result(tid, f"refused: tool {name!r} is not available to this agent", error=True))
        try:
            args = msgspec.convert(block.get("input"), ARGS[name])
        except msgspec.ValidationError as exc:
            return ToolOutcome(_result(tid, f"invalid arguments: {exc}", error=True))
        key = stable_hash(h.id, n, tid)
        try:
            if isinstance(args, NotifyArgs):
                return self._notify(h, args, tid, key, now)
            if isinstance(args, EmitArgs):
                return await self._emit(args, tid, key, now)
            if isinstance(args, WatchArgs):
                return self._watch(h, args, tid, key, now)
            if isinstance(args, ReadStateArgs):
                return await self._read_state(h, tid)
            if isinstance(args, WriteStateArgs):
                return self._write_state(h, args, tid, key, now)
            if isinstance(args, EscalateArgs):
                return ToolOutcome(_result(tid, "escalating"), escalate=args.reason)
        except WatchdError as exc:
            if isinstance(exc, ToolUnavailable):
                raise
            return ToolOutcome(_result(tid, f"invalid arguments: {exc.message}", error=True))
        assert isinstance(args, DoneArgs)
        return ToolOutcome(_result(tid, "ok"), done=args)

    def _notify(self, h: Handoff, args: NotifyArgs, tid: str, key: str, now: float) -> ToolOutcome:
        if args.to not in self.notifiers:
            allowed = ", ".join(self.notifiers)
            return ToolOutcome(
                _result(tid, f"refused: {args.to!r} is not one of this agent's notifiers ({allowed})", error=True)
            )
        note = Handoff(
            id="h_" + stable_hash(key, args.to),
            watch=h.watch,
            watch_version=h.watch_version,
            kind=h.kind,
            key=h.key,
            target=args.to,
            trigger="agent",
            reason=f"{self.agent} on handoff {h.id}",
            fired_at=iso(now) or "",
            window=h.window,
            evidence=h.evidence,
            message=f"[{self.agent}] {args.message}",
        )
        return ToolOutcome(_result(tid, f"queued for {args.to} (handoff {note.id})"), enqueue_handoff(note, now))

    async def _emit(self, args: EmitArgs, tid: str, key: str, now: float) -> ToolOutcome:
        # make_event refuses watchd.* subjects and checks the subject and data as every edge does;
        # its EventRejected reaches the model as "invalid arguments: <reason>".
        event = make_event(args.subject, args.data, id="ev_" + key, time_s=now, source=self.agent)
        if len(msgspec.json.encode(event)) > MAX_EMIT_BYTES:
            return ToolOutcome(_result(tid, f"invalid arguments: the event is over {MAX_EMIT_BYTES} bytes", error=True))
        if self.js is None:
            return ToolOutcome(_result(tid, "emit is unavailable here (no NATS connection)", error=True))
        try:
            ack = await bus.publish_event(self.js, event)
        except Exception as exc:  # NATS down or slow: retry the delivery; the same id is stored once
            raise ToolUnavailable(f"emit {args.subject}: {type(exc).__name__}") from None
        return ToolOutcome(_result(tid, f"published {args.subject} (event {event.id}, seq {ack.seq})"))

    def _scope(self, h: Handoff) -> Scope:
        assert self.cfg.state is not None
        return memory.scope_of(self.cfg.state, self.agent, h)

    async def _read_state(self, h: Handoff, tid: str) -> ToolOutcome:
        assert self.store is not None
        v = await self.store.call(agent_state.current, self._scope(h))
        if v is None:
            return ToolOutcome(_result(tid, "no state saved yet (version 0): null"))
        return ToolOutcome(_result(tid, f"version {v.version}: {msgspec.json.encode(v.doc).decode()}"))

    def _write_state(self, h: Handoff, args: WriteStateArgs, tid: str, key: str, now: float) -> ToolOutcome:
        size = len(msgspec.json.encode(args.state))
        if size > memory.MAX_STATE_BYTES:
            raise WatchdError(f"the state is {size} bytes, over the limit of {memory.MAX_STATE_BYTES}")
        scope = self._scope(h)
        effect = agent_state.write_version(scope, args.state, now, handoff_id=h.id, write_id=key, note=args.note)
        return ToolOutcome(_result(tid, f"saved a new version of {scope.describe()}'s state"), effect)

    def _watch(self, h: Handoff, args: WatchArgs, tid: str, key: str, now: float) -> ToolOutcome:
        within_s = parse_duration(args.within)
        if within_s > self.max_watch_s:
            raise WatchdError(f"within {args.within} is longer than this agent's limit ({self.cfg.max_watch_for})")
        if not _PATTERN_RE.match(args.subject) or ">." in args.subject:
            raise WatchdError(f"bad subject pattern {args.subject!r}: dot-separated tokens, `*` or a final `>`")
        for source in (args.where, args.key):
            if source is not None:
                expr.compile_expr(source)
        then = args.then or [self.agent]
        refused = [t for t in then if t != self.agent and t not in self.notifiers]
        if refused:
            return ToolOutcome(
                _result(
                    tid,
                    f"refused: `then` may name only {self.agent} or this agent's notifiers, not {', '.join(refused)}",
                    error=True,
                )
            )
        slug = re.sub(r"[^a-z0-9_-]", "-", self.agent.removeprefix("agent.").lower())
        pattern = Pattern(subject=args.subject, where=args.where, key=args.key)
        common: dict[str, Any] = {
            "id": f"agent-{slug}-{key[:12]}",
            "description": f"follow-up by {self.agent} for handoff {h.id}",
            "then": then,
            "message": args.message,
            "mode": self.cfg.watch_mode,
        }
        watch: Watch
        if args.kind == "absent":
            watch = AbsentWatch(expect=pattern, for_=args.within, **common)
            expires = now + within_s + ABSENT_GRACE_S
        else:
            watch = MatchWatch(on=pattern, **common)
            expires = now + within_s
        text = f"watch {watch.id} ({self.cfg.watch_mode}) until {iso(expires)}"
        effect = add_watch(watch, self.agent, h.id, now, expires)
        return ToolOutcome(_result(tid, text), effect, watch_added=True)


async def follow_watches(
    store: Store,
    reinstall: Callable[[], Awaitable[None]],
    changed: asyncio.Event,
    stop: asyncio.Event,
    clock: Callable[[], float],
    upkeep: Upkeep | None = None,
) -> None:
    """Re-install the engine's definitions when an agent adds a follow-up watch (`changed`) and when one
    expires: the daemon sleeps until the next expiry, nothing polls."""
    installed = True  # the daemon installed them at start

    async def step() -> float | None:
        nonlocal installed
        if not installed:
            await reinstall()
            installed = True
        nxt = await store.call(next_watch_expiry, clock())
        installed = False  # whatever wakes the loop next (a change, an expiry) needs an install
        return None if nxt is None else max(0.0, nxt - clock()) + 0.01

    await (upkeep or Upkeep(stop)).every("agent-watches", step, interval_s=None, wake=changed)
