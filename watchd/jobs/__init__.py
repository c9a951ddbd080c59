"""Maintenance jobs the cron layer runs: heartbeat, backup and canary.

Every job is an async function taking a `JobContext` and returning a `JobResult`. The scheduler (or
`watchd backup|canary` from the command line) runs it and publishes its outcome as
`watchd.job.<name>.done` or `watchd.job.<name>.failed` with `JobResult.data`, so watches can watch
watchd itself. A job never raises for an expected failure: it returns `ok=False` with the reason.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

    from watchd.config import Loaded
    from watchd.dispatch import Target
    from watchd.notify.http_client import HttpClient
    from watchd.store import Store

Emit = Callable[[str, dict[str, Any]], Awaitable[None]]


@dataclass
class JobContext:
    """What a job may use. In the daemon all of it is live; from the CLI `targets` are built fresh
    and `wake_dispatcher` does nothing (the running daemon's dispatcher polls the outbox itself)."""

    name: str  # the job's name as it appears in events: heartbeat | backup | canary
    loaded: Loaded
    store: Store
    clock: Callable[[], float]
    emit: Emit  # publish one of watchd's own events
    timeout_s: float = 3600.0
    nc: Client | None = None
    js: JetStreamContext | None = None
    targets: dict[str, Target] = field(default_factory=dict)
    wake_dispatcher: Callable[[], None] = lambda: None
    in_daemon: bool = False
    http: HttpClient | None = None  # the owner's HTTP client (the heartbeat's ping); None: the job makes its own


@dataclass
class JobResult:
    ok: bool
    summary: str  # one line for logs, `status` and `explain --schedule`
    data: dict[str, Any] = field(default_factory=dict)  # the event's data; never a secret


Job = Callable[[JobContext], Awaitable[JobResult]]

BUILTIN = ("heartbeat", "backup", "canary")


def builtin(name: str) -> Job:
    """The built-in job called `name` (imported lazily: a CLI call needs only its own)."""
    if name not in BUILTIN:
        raise KeyError(name)
    module = importlib.import_module(f"watchd.jobs.{name}")
    job: Job = module.run
    return job
