"""Running sources: one task per source, restarted with a backoff when it fails, and the daemon's
watch over their silence.

A source that raises is logged, counted (`restarts`, `last_error`; in /metrics also as the loop
`source-<name>`) and started again after a backoff from 1 s doubling up to 60 s (back to 1 s once
it ran a minute): one broken source never stops the daemon or the other sources. In the daemon,
`SourceSet` also turns a silence longer than a source's `expect_every` into
`watchd.source.<name>.silent`, once per silence, and `watchd.source.<name>.recovered` when events
return (watchd's own events, which only the daemon may publish).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from watchd.errors import WatchdError
from watchd.jspublish import PublishEvents
from watchd.model import Event, iso, own_event, stable_hash
from watchd.sources import make_source
from watchd.sources.base import Source, SourceContext
from watchd.sources.health import SourceHealth
from watchd.sources.publish import Publisher
from watchd.sources.settings import SourceSettings, type_name
from watchd.sources.state import PositionStore
from watchd.upkeep import Backoff, Upkeep

log = logging.getLogger("watchd.sources")

BACKOFF_BASE_S = 1.0  # the first restart waits 0.5-1 s; each next one twice as long ...
BACKOFF_CAP_S = 60.0  # ... up to a minute
HEALTHY_RUN_S = 60.0  # a run this long resets the backoff


def new_health(name: str, settings: SourceSettings, now: float) -> SourceHealth:
    expect = None
    if settings.expect_every:
        from watchd.cron.schedule import parse_duration

        expect = parse_duration(settings.expect_every)
    return SourceHealth(name=name, type=type_name(settings), expect_every_s=expect, started_at=now)


def loop_name(source: str) -> str:
    """The source's loop in the daemon's Upkeep (and /metrics)."""
    return f"source-{source}"


async def supervised(
    source: Source, ctx: SourceContext, positions: PositionStore | None = None, upkeep: Upkeep | None = None
) -> None:
    """Run `source` until `ctx.stop`, starting it again after each failure; with `positions`,
    holding its lock while it runs. An Upkeep loop (`source-<name>`), as every loop of the daemon:
    each failure is logged (rate-limited), counted in /metrics, recorded in the source's health and
    followed by a backoff from 1 s up to 60 s, begun afresh after a run of a minute. Without
    `upkeep` (`watchd source run`), one of its own on `ctx.stop`."""
    backoff = Backoff(BACKOFF_BASE_S, BACKOFF_CAP_S)
    upkeep = upkeep or Upkeep(ctx.stop, logger=log)

    name = loop_name(source.name)
    runs = 0

    async def step() -> None:
        nonlocal runs
        if runs:
            upkeep.restarted(name)
        runs += 1
        await run_once(source, ctx, positions, backoff)  # returns only once ctx.stop is set

    # interval None: after the run returned (its stop), wait for the daemon's stop, or for the
    # cancel of a source a reload removed; a run never returns otherwise.
    await upkeep.every(name, step, interval_s=None, backoff=backoff)


async def run_once(source: Source, ctx: SourceContext, positions: PositionStore | None, backoff: Backoff) -> None:
    """One run of `source`: returns when stopped, else raises SourceStopped with why (the reason is
    in its health too). Only the message of a WatchdError, or an exception's type, is kept: an
    exception's text may hold a URL with a token in it."""
    started = time.monotonic()
    lock: int | None = None
    try:
        if positions is not None:
            lock = positions.lock(source.name)
            ctx.position = positions.load(source.name)  # as the last holder left it
        await source.run(ctx)
        if ctx.stop.is_set():
            return
        message = "its run ended by itself"
    except asyncio.CancelledError:
        raise
    except WatchdError as exc:
        message = exc.message
    except Exception as exc:
        message = f"unexpected {type(exc).__name__}"
        log.debug("source %s failed", source.name, exc_info=True)
    finally:
        if lock is not None:
            os.close(lock)
    if ctx.stop.is_set():
        return  # a failure while stopping (a closed connection) is no failure of the source
    ctx.health.failed(message, ctx.clock())
    ctx.health.restarts += 1
    if time.monotonic() - started >= HEALTHY_RUN_S:
        backoff.reset()  # it ran fine for a while: this is a fresh failure
    raise SourceStopped(f"source {source.name} stopped: {message}")


class SourceStopped(WatchdError):
    """A source's run ended without being stopped; its message is safe to log."""


class SourceSet:
    """The daemon's sources: their tasks, their health, and the silence check."""

    def __init__(
        self,
        sources: dict[str, SourceSettings],
        *,
        publish: PublishEvents,
        positions: PositionStore,
        base_dir: Any,
        clock: Callable[[], float],
        max_event_bytes: int,
        heard: dict[str, float] | None = None,
        max_wait_s: float = 60.0,
        publish_own: Callable[[Event], Awaitable[Any]] | None = None,
    ) -> None:
        self.publish = publish  # the sources' events
        self.positions = positions
        self.base_dir = base_dir
        self.clock = clock
        self.max_event_bytes = max_event_bytes
        self.max_wait_s = max_wait_s
        self.publish_own = publish_own
        self.health: dict[str, SourceHealth] = {}
        self._settings: dict[str, SourceSettings] = {}
        self._tasks: dict[str, tuple[asyncio.Task[None], asyncio.Event]] = {}
        self._heard = dict(heard or {})
        self._wake = asyncio.Event()
        self._started = False
        self._upkeep: Upkeep | None = None  # the daemon's, from `run`: the sources are its loops
        self.update(sources)

    # ---- life cycle ----

    def update(self, sources: dict[str, SourceSettings]) -> None:
        """Start new sources, restart changed ones, stop removed ones (a reload)."""
        now = self.clock()
        for name in list(self._settings):
            if name not in sources or sources[name] != self._settings[name]:
                self._stop_one(name)
                del self._settings[name]
                if name not in sources:
                    self.health.pop(name, None)
                    if self._upkeep is not None:
                        self._upkeep.forget(loop_name(name))
        for name, settings in sources.items():
            if name in self._settings:
                continue
            old = self.health.get(name)
            health = new_health(name, settings, now)
            if old is not None:  # a changed source keeps its counts
                health.events, health.rejections, health.last_event_at = old.events, old.rejections, old.last_event_at
            elif name in self._heard:
                health.last_event_at = self._heard[name]
            self.health[name] = health
            self._settings[name] = settings
            if self._started:
                self._start_one(name)
        self._wake.set()

    def _start_one(self, name: str) -> None:
        settings = self._settings[name]
        try:
            source = make_source(name, settings)
        except WatchdError as exc:
            self.health[name].failed(exc.message, self.clock())
            log.error("source %s cannot start: %s", name, exc.message)
            return
        if source.on_listener:
            return  # served by the HTTP listener, which records its health here
        stop = asyncio.Event()
        health = self.health[name]
        publisher = Publisher(
            name,
            self.publish,
            self.positions,
            health,
            self.clock,
            max_bytes=self.max_event_bytes,
            on_published=lambda _e: self._wake.set(),
        )
        ctx = SourceContext(
            name=name,
            base_dir=self.base_dir,
            position={},  # read once the lock is held
            outlet=publisher,
            health=health,
            clock=self.clock,
            stop=stop,
            max_wait_s=self.max_wait_s,
        )
        task = asyncio.create_task(supervised(source, ctx, self.positions, self._upkeep), name=f"source-{name}")
        self._tasks[name] = (task, stop)

    def _stop_one(self, name: str) -> None:
        entry = self._tasks.pop(name, None)
        if entry is not None:
            entry[1].set()
            entry[0].cancel()

    async def run(self, stop: asyncio.Event, upkeep: Upkeep | None = None) -> None:
        """Run every source and the silence check until `stop`."""
        self._started = True
        self._upkeep = upkeep = upkeep or Upkeep(stop)
        for name in self._settings:
            self._start_one(name)
        try:
            await self._silence_loop(upkeep)
        finally:
            tasks = [t for t, _ in self._tasks.values()]
            for name in list(self._tasks):
                self._stop_one(name)
            await asyncio.gather(*tasks, return_exceptions=True)

    # ---- silence ----

    async def _silence_loop(self, upkeep: Upkeep) -> None:
        async def step() -> float:
            due = await self.check_silence()
            return self.max_wait_s if due is None else min(self.max_wait_s, max(0.0, due - self.clock()))

        # A failed check (it publishes) is counted and tried again with backoff: it never stops the sources.
        await upkeep.every("source-silence", step, interval_s=self.max_wait_s, wake=self._wake)

    async def check_silence(self) -> float | None:
        """Publish `.silent` for each source quiet past its `expect_every` and `.recovered` for each
        that spoke again; the next instant a silence could begin (None: no source expects events)."""
        now = self.clock()
        nearest: float | None = None
        for name, h in list(self.health.items()):
            if h.expect_every_s is None:
                continue
            since = h.last_event_at if h.last_event_at is not None else (h.started_at or now)
            if h.silent_since is not None:
                if h.last_event_at is not None and h.last_event_at > h.silent_since:
                    await self._own(name, "recovered", h, {"silent_s": round(h.last_event_at - h.silent_since)})
                    h.silent_since = None
                continue
            due = since + h.expect_every_s
            if now >= due:
                h.silent_since = now
                await self._own(name, "silent", h, {"silent_s": round(now - since)})
            else:
                nearest = due if nearest is None else min(nearest, due)
        return nearest

    async def _own(self, name: str, what: str, h: SourceHealth, extra: dict[str, Any]) -> None:
        if self.publish_own is None:
            return
        data = {
            "source": name,
            "type": h.type,
            "last_event_at": iso(h.last_event_at),
            "expect_every_s": h.expect_every_s,
            **extra,
        }
        # The id is fixed by the silence it is about (the last event before it), so a restart while
        # still silent does not announce the same silence again.
        event = own_event(f"watchd.source.{name}.{what}", data, time_s=self.clock())
        event.id = stable_hash("source", name, what, repr(h.last_event_at))
        log.warning("source %s: %s", name, what if what == "recovered" else f"silent for {extra['silent_s']}s")
        with contextlib.suppress(WatchdError):
            await self.publish_own(event)

    def view(self) -> list[dict[str, Any]]:
        return [h.as_dict() for _, h in sorted(self.health.items())]
