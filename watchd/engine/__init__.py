"""The pure core: watches × (event | clock tick) → decisions and fires (see `core`), one module
per watch kind (`match`, `count`, `absent`, `deadline`, registered in `kinds`), the subject
index, and the one vocabulary of verdicts."""

from watchd.engine.base import (
    WHERE_FALSE,
    Decision,
    EventInput,
    Fire,
    KeyState,
    Outputs,
    Situation,
    Tick,
    WatchLogic,
    WatchMeta,
    failed_reason,
    failure,
    for_key,
)
from watchd.engine.core import Engine
from watchd.engine.kinds import compile_watch
from watchd.engine.verdict import DECISIVE, FIRES, MISSES, Verdict

__all__ = [
    "DECISIVE",
    "FIRES",
    "MISSES",
    "WHERE_FALSE",
    "Decision",
    "Engine",
    "EventInput",
    "Fire",
    "KeyState",
    "Outputs",
    "Situation",
    "Tick",
    "Verdict",
    "WatchLogic",
    "WatchMeta",
    "compile_watch",
    "failed_reason",
    "failure",
    "for_key",
]
