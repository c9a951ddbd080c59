"""The daemon's side of answers (ack, snooze, mute, unmute): what they act on, how they reach the
engine, and the chat message edited once one is applied. The semantics are the engine's
(`watchd/engine/answers.py`).

Every answer reaches the engine one way: as a `watchd.answer` event on the stream, so it is stepped
in order with every other event and replays, `explain` and `watchd test` see it where it happened.
- The HTTP API (`api.py`; the command line posts to it) resolves what it names, publishes the
  event and waits until the engine has applied it.
- A press of a notification's button arrives as a `chat.answer` event from a source (Telegram
  `callback_query`, Slack interactivity). The daemon applies it only when its `source` names a
  configured chat source (type telegram or slack, or a webhook verified as Slack), which vets who
  may press; it then relays it as a `watchd.answer` whose id derives from the chat event's, so a
  redelivery is stored once. One it cannot apply is recorded as rejected, with the reason, for
  `explain --event`.
- Once the engine applied a relayed answer, the notification is edited to say who acted (Telegram
  editMessageText, Slack chat.update), by the notifier that sent it. Only the live daemon edits:
  a replay never does.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from nats.js import JetStreamContext

from watchd import bus
from watchd.config import Config
from watchd.engine import Decision, Verdict
from watchd.engine.answers import ACTIONS, ANSWER_SUBJECT, decode
from watchd.errors import UnknownTarget, WatchdError
from watchd.model import Event, Handoff, own_event, ts_from_iso
from watchd.notify.render import render
from watchd.sources.settings import SlackSettings, TelegramSettings, WebhookSettings
from watchd.store import Store
from watchd.store.outbox import find_handoff, get_handoff

log = logging.getLogger("watchd.answers")

CHAT_SUBJECT = "chat.answer"  # what chat sources publish for a button press
RELAYED_PREFIX = "answer-"  # the id of a relayed answer: this + the chat event's id
_BY = re.compile(r"[A-Za-z0-9_.@+-]{1,64}")
_MARKS = {Verdict.ACKED: "✅", Verdict.SNOOZED: "💤", Verdict.MUTED: "🔕", Verdict.UNMUTED: "🔔"}


class Editor(Protocol):
    """A notifier that can edit a message it sent (`chat`, `message` as the chat source gave them)."""

    async def edit_answered(self, chat: str, message: str, text: str) -> str | None:
        """None when edited, else why not (logged)."""
        ...


@dataclass(frozen=True)
class Resolved:
    """What an answer acts on: a watch (and key), and the handoff it names, if it names one."""

    watch: str
    key: str | None
    handoff: Handoff | None = None


def chat_sources(config: Config) -> set[str]:
    """The sources whose `chat.answer` events the daemon applies: they vet who may press."""
    return {
        name
        for name, source in config.source.items()
        if isinstance(source, TelegramSettings | SlackSettings)
        or (isinstance(source, WebhookSettings) and source.verify == "slack")  # Slack interactivity
    }


async def resolve(store: Store, watches: Iterable[str], target: str, *, exact: bool = False) -> Resolved:
    """A watch id, else a handoff id (or, unless `exact`, an unambiguous prefix of one)."""
    known = set(watches)
    if target in known:
        return Resolved(target, None)
    handoff = await store.call(get_handoff, target) if exact else await _find(store, target)
    if handoff is None or handoff.watch not in known:
        gone = f" (its watch {handoff.watch!r} no longer exists)" if handoff is not None else ""
        raise UnknownTarget(
            f"no watch or handoff named {target!r}{gone}",
            hint="`watchd status` lists the watches, `watchd handoffs` the handoffs and their ids",
        )
    return Resolved(handoff.watch, handoff.key, handoff)


async def _find(store: Store, ref: str) -> Handoff | None:
    try:
        return await store.call(find_handoff, ref)
    except WatchdError:
        return None


def answer_data(
    action: str,
    resolved: Resolved,
    *,
    by: str,
    key: str | None = None,
    duration: str | None = None,
    reply: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The data of a `watchd.answer` event, checked as the engine will decode it (WatchdError)."""
    if action not in ACTIONS:
        raise WatchdError(f"unknown action {action!r}", hint=f"one of: {', '.join(ACTIONS)}")
    h = resolved.handoff
    data: dict[str, Any] = {
        "action": action,
        "watch": resolved.watch,
        "key": key if key is not None else resolved.key,
        "duration": duration,
        "by": by,
    }
    if h is not None:
        data |= {"handoff": h.id, "fired_at": _instant(h.fired_at), "reason": h.reason}
    if reply is not None:
        data["reply"] = reply
    data = {k: v for k, v in data.items() if v is not None}
    if action in ("ack", "unmute") and duration is not None:
        raise WatchdError(
            f"{action} takes no duration", hint=f"`watchd {action} WATCH` (a duration is for snooze or mute)"
        )
    decode(data)  # a bad duration or shape is refused here, before anything is published
    return data


def caller(given: object, via: str) -> str:
    """Who answered through the API or the command line: `cli:alice`, `http:ops`. A chat user's
    identity (`telegram:…`) is only ever taken from a chat source."""
    text = given if isinstance(given, str) else ""
    prefix, _, name = text.partition(":")
    if prefix in ("cli", "http") and _BY.fullmatch(name):
        return text
    return f"{via}:{text}" if _BY.fullmatch(text) else via


def _instant(text: str) -> float | None:
    try:
        return ts_from_iso(text)
    except ValueError:
        return None


# ---- in the daemon ---------------------------------------------------------------------------


class Answers:
    """The daemon's answers: relays chat answers into the stream, and edits the chat message once
    a relayed answer is applied. `targets` are the dispatcher's (the notifiers that sent)."""

    def __init__(
        self,
        *,
        config: Callable[[], Config],
        store: Store,
        js: JetStreamContext,
        watches: Callable[[], Iterable[str]],
        targets: Mapping[str, object],
    ) -> None:
        self.config = config
        self.store = store
        self.js = js
        self.watches = watches
        self.targets = targets
        self._edits: set[asyncio.Task[None]] = set()

    async def relay(self, chat: list[tuple[Event, float, int]]) -> list[Decision]:
        """Each `chat.answer` (event, stream instant, seq) relayed as a `watchd.answer`; the ones
        that cannot be applied come back as `rejected` decisions saying why."""
        rejected: list[Decision] = []
        allowed = chat_sources(self.config())
        for event, at, seq in chat:
            try:
                data = await self._answer_of(event, allowed)
                relayed = own_event(ANSWER_SUBJECT, data, time_s=at, id=RELAYED_PREFIX + event.id)
                await bus.publish_event(self.js, relayed)
            except WatchdError as exc:
                log.warning("chat answer %s not applied: %s", event.id, exc.message)
                reason = f"chat answer not applied: {exc.message}"
                rejected.append(Decision(at, "", None, Verdict.REJECTED, reason, event.id, seq))
        return rejected

    async def _answer_of(self, event: Event, allowed: set[str]) -> dict[str, Any]:
        d = event.data
        source = d.get("source")
        if not isinstance(source, str) or source not in allowed:
            raise WatchdError(f"source {source!r} is not a configured telegram or slack source")
        target, by = d.get("target"), d.get("by")
        if not isinstance(target, str) or not isinstance(by, str) or not by:
            raise WatchdError("it names no target handoff, or no one who pressed")
        resolved = await resolve(self.store, self.watches(), target, exact=True)
        reply = None
        chat, message = d.get("chat"), d.get("message")
        if resolved.handoff is not None and chat is not None and message is not None:
            reply = {"target": resolved.handoff.target, "chat": str(chat), "message": str(message)}
        duration = d.get("duration") if isinstance(d.get("duration"), str) else None
        return answer_data(str(d.get("action")), resolved, by=by, duration=duration, reply=reply)

    def applied(self, events: Iterable[Event], decisions: list[Decision]) -> None:
        """After a commit: edit the chat messages of the relayed answers among `events`."""
        for event in events:
            reply = event.data.get("reply")
            if event.subject != ANSWER_SUBJECT or not isinstance(reply, dict):
                continue
            said = [d for d in decisions if d.event_id == event.id]
            task = asyncio.create_task(self._edit(event, reply, said))
            self._edits.add(task)
            task.add_done_callback(self._edits.discard)

    async def _edit(self, event: Event, reply: dict[str, Any], said: list[Decision]) -> None:
        target = self.targets.get(str(reply.get("target")))
        edit = getattr(target, "edit_answered", None)
        hid = event.data.get("handoff")
        if edit is None or not isinstance(hid, str):
            return
        try:
            handoff = await self.store.call(get_handoff, hid)
            if handoff is None:
                return
            why = await edit(str(reply.get("chat")), str(reply.get("message")), edited_text(handoff, said))
        except Exception:  # an edit is a courtesy: its failure must not touch the engine
            log.exception("editing the message of handoff %s failed", hid)
            return
        if why is not None:
            log.warning("could not edit the message of handoff %s: %s", hid, why)

    async def close(self) -> None:
        for task in list(self._edits):
            task.cancel()
        await asyncio.gather(*self._edits, return_exceptions=True)


def edited_text(handoff: Handoff, said: list[Decision]) -> str:
    """The notification as it was sent, and a last line saying who did what."""
    lines = []
    for d in said[:3]:
        mark = _MARKS.get(d.verdict, "⚠️")
        text = d.reason if d.verdict != Verdict.REJECTED else f"not applied: {d.reason}"
        lines.append(f"{mark} {text[:1].upper()}{text[1:]}")
    return render(handoff) + "\n\n" + ("\n".join(lines) or "✅ answered")
