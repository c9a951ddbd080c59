"""The answer buttons under a notification (SPEC section 8): Ack, Snooze 1h, Mute 24h.

A button carries `<action>:<handoff id>` (Telegram `callback_data`, at most 64 bytes; Slack's
button `value`); the chat source turns a press into a `chat.answer` event, and the snooze and
mute durations are the engine's defaults for a press (watchd/engine/answers.py). Only a watch's
handoffs carry them: a schedule's or a canary's has no incident to answer.
"""

from __future__ import annotations

from typing import Any

from watchd.model import Handoff

BUTTONS = (("ack", "Ack"), ("snooze", "Snooze 1h"), ("mute", "Mute 24h"))
MAX_CALLBACK_BYTES = 64  # Telegram's limit on callback_data


def values(handoff: Handoff) -> list[tuple[str, str]] | None:
    """(label, value) per button, or None when the handoff takes no answers."""
    if handoff.trigger != "watch":
        return None
    found = [(label, f"{action}:{handoff.id}") for action, label in BUTTONS]
    if any(len(value.encode()) > MAX_CALLBACK_BYTES for _, value in found):
        return None  # never with watchd's ids; a button that cannot carry its id is left out
    return found


def telegram_keyboard(handoff: Handoff) -> dict[str, Any] | None:
    """An inline keyboard of one row (https://core.telegram.org/bots/api#inlinekeyboardmarkup)."""
    found = values(handoff)
    if found is None:
        return None
    return {"inline_keyboard": [[{"text": label, "callback_data": value} for label, value in found]]}


def slack_actions(handoff: Handoff) -> dict[str, Any] | None:
    """An actions block (https://api.slack.com/reference/block-kit/blocks#actions)."""
    found = values(handoff)
    if found is None:
        return None
    return {
        "type": "actions",
        "block_id": "watchd_answer",
        "elements": [
            {
                "type": "button",
                "text": {"type": "plain_text", "text": label},
                "action_id": f"watchd_{value.partition(':')[0]}",
                "value": value,
            }
            for label, value in found
        ],
    }
