"""Handoffs as the engine makes them, for tests that start past the engine (a store, a target)."""

from __future__ import annotations

from typing import Any

import msgspec

from watchd.model import Handoff

DEFAULTS: dict[str, Any] = {
    "id": "h_0123456789",
    "watch": "w",
    "watch_version": 1,
    "kind": "match",
    "key": None,
    "target": "notify.console",
    "trigger": "watch",
    "reason": "r",
    "fired_at": "2026-11-22T00:00:00Z",
}


def make_handoff(**fields: Any) -> Handoff:
    """A handoff with `fields` over plain defaults; evidence and window may be given as plain JSON."""
    return msgspec.convert({**DEFAULTS, **fields}, Handoff)
