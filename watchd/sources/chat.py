"""What the chat sources (telegram, slack) share: who may speak and act, and the `chat.answer`
event a press of one of watchd's buttons becomes.

A button carries `<action>:<handoff id>` (notify/buttons.py). A press becomes (the contract the
daemon's answers.py reads):

    subject "chat.answer", data {"action": "ack"|"snooze"|"mute", "target": "<handoff id>",
    "duration": null, "by": "telegram:<user id>"|"slack:<user id>", "chat": "<chat>",
    "message": "<message id or ts>", "source": "<source name>"}

The duration is the button's own (Snooze 1h, Mute 24h: the engine's defaults for a press).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

ANSWER_SUBJECT = "chat.answer"
BUTTON_VALUE = re.compile(r"(ack|snooze|mute):([!-~]{1,128})")  # as notify/buttons.py writes it


def parse_button(value: object) -> tuple[str, str] | None:
    """(action, handoff id) of a watchd button's value; None for anything else."""
    m = BUTTON_VALUE.fullmatch(value) if isinstance(value, str) else None
    return (m.group(1), m.group(2)) if m else None


def answer_data(action: str, target: str, *, by: str, chat: str, message: str, source: str) -> dict[str, Any]:
    return {
        "action": action,
        "target": target,
        "duration": None,
        "by": by,
        "chat": chat,
        "message": message,
        "source": source,
    }


@dataclass(frozen=True)
class AllowList:
    """Chats (or channels) and senders that may reach watchd. An empty list allows any; a sender
    given as `@name` matches that username (case-insensitive), otherwise the id."""

    chats: frozenset[str]
    senders: frozenset[str]

    @classmethod
    def of(cls, chats: Iterable[str], senders: Iterable[str]) -> AllowList:
        return cls(frozenset(str(c).strip() for c in chats), frozenset(str(s).strip() for s in senders))

    def refusal(self, chat: str, sender: str | None, username: str | None = None) -> str | None:
        """The reason word (`chat`, `sender`) when the message or press must be dropped, else None."""
        if self.chats and chat not in self.chats:
            return "chat"
        if self.senders:
            names = {f"@{username.lower()}"} if username else set()
            allowed = {s.lower() if s.startswith("@") else s for s in self.senders}
            if sender is None or (sender not in allowed and not names & allowed):
                return "sender"
        return None
