"""Turning a handoff into the text a person reads.

`render_template` is a deliberately small substitution, not `str.format`: format strings can walk
attributes and indexes (`{watch.__class__.__init__.__globals__}`), and a message template is
config a user copies from somewhere. Here a placeholder is a dotted path looked up only in plain
dicts and lists built from the handoff; anything else renders visibly as `{path?}`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import msgspec

from watchd.model import Handoff

TRUNCATED = "… (truncated)"

# `{{` and `}}` are literal braces, as in str.format; a placeholder is a dotted path of names
# (or list indexes after the first step). Anything else in braces is left exactly as written.
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*)\}")
_MISSING = object()


def template_context(handoff: Handoff) -> dict[str, Any]:
    """The names a message template can use, as plain data."""
    window = handoff.window
    ctx: dict[str, Any] = {
        "id": handoff.id,
        "watch": handoff.watch,
        "version": handoff.watch_version,
        "kind": handoff.kind,
        "key": handoff.key,
        "target": handoff.target,
        "trigger": handoff.trigger,
        "reason": handoff.reason,
        "fired_at": handoff.fired_at,
        "attempt": handoff.attempt,
        "count": len(handoff.evidence),
        "deadline": window.end if window else None,
        "window": {"start": window.start, "end": window.end} if window else None,
        "evidence": list(handoff.evidence),
    }
    if handoff.evidence:
        ctx["event"] = handoff.evidence[-1]  # the latest: evidence is kept in arrival order
    return ctx


def render_template(template: str, context: Handoff | Mapping[str, Any]) -> str:
    """Fill `{watch}`, `{key}`, `{reason}`, `{deadline}`, `{count}`, `{fired_at}`, `{event.data.x}`…

    Never raises: a missing (or null) value renders as `{event.data.x?}` so the gap is visible.
    """
    ctx: Mapping[str, Any] = template_context(context) if isinstance(context, Handoff) else context

    def fill(m: re.Match[str]) -> str:
        whole = m.group(0)
        if whole == "{{":
            return "{"
        if whole == "}}":
            return "}"
        path = m.group(1)
        value = _lookup(ctx, path)
        if value is _MISSING or value is None:
            return "{" + path + "?}"
        return _text(value)

    return _PLACEHOLDER.sub(fill, template)


def _lookup(ctx: Mapping[str, Any], path: str) -> Any:
    cur: Any = ctx
    for part in path.split("."):
        # Only plain containers: never getattr, never a user type's __getitem__.
        if isinstance(cur, Mapping):
            if part not in cur:
                return _MISSING
            cur = cur[part]
        elif isinstance(cur, list | tuple) and part.isdigit():
            idx = int(part)
            if idx >= len(cur):
                return _MISSING
            cur = cur[idx]
        else:
            return _MISSING
    return cur


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    try:
        return msgspec.json.encode(value).decode()  # numbers, booleans, objects and lists as JSON
    except (TypeError, msgspec.EncodeError):
        return str(value)


def render(handoff: Handoff) -> str:
    """The message for a person: the watch's own `message` template if it has one, else a default
    that says what fired, why, over which window, when, and how to ask watchd about it."""
    if handoff.message:
        # Filled once, when the handoff was made (dispatch.handoffs_from_fire): a second pass
        # would substitute `{…}` text that arrived inside event data.
        return handoff.message
    head = f"🔔 {handoff.watch} fired"
    if handoff.key is not None:
        head += f" (key {handoff.key})"
    lines = [head, handoff.reason]
    if handoff.window is not None and (handoff.window.start or handoff.window.end):
        lines.append(f"window: {handoff.window.start or '…'} → {handoff.window.end or '…'}")
    lines.append(f"fired at {handoff.fired_at}")
    if handoff.evidence:
        latest = handoff.evidence[-1]
        n = len(handoff.evidence)
        about = f"evidence: {n} event{'s' if n != 1 else ''}"
        if isinstance(latest, dict) and latest.get("subject"):
            about += f", latest {latest['subject']}"
            if latest.get("time"):
                about += f" at {_text(latest['time'])}"
        lines.append(about)
    lines.append(f"why: watchd explain {handoff.watch}")
    return "\n".join(lines)


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, the unit Telegram counts its 4096 in (an emoji is two)."""
    return len(text.encode("utf-16-le")) // 2


def truncate(text: str, limit: int, *, utf16: bool = False, marker: str = TRUNCATED) -> str:
    """Cut text to at most `limit` (characters, or UTF-16 units) with a visible marker at the end."""
    size = utf16_len if utf16 else len
    if size(text) <= limit:
        return text
    budget = limit - size(marker)
    if budget <= 0:
        return marker[:limit]
    if not utf16:
        return text[:budget].rstrip() + marker
    out: list[str] = []
    used = 0
    for ch in text:  # never split a surrogate pair
        w = 2 if ord(ch) > 0xFFFF else 1
        if used + w > budget:
            break
        out.append(ch)
        used += w
    return "".join(out).rstrip() + marker
