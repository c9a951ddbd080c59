"""The one helper every periodic loop and long-lived task uses: stop, interval, jitter, backoff on
failure, rate-limited logging, and counters for /metrics.

Written after the pollers of saq and arq: a loop runs one step, sleeps, and runs again until the
stop event; a step that raises is logged and counted, and the loop goes on after an exponential
backoff instead of ending. A task (`Upkeep.spawn`) that raises is started again the same way, so
no single failure takes the daemon down; only the failure of a *core* task (the engine, the
dispatcher) makes the daemon report itself unhealthy, while it lasts.

Everything is owned by one `Upkeep` object that the daemon (or a worker) makes and closes: no
module state, so two daemons in one process (tests) keep their counters apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger("watchd.upkeep")

Step = Callable[[], Awaitable[float | None]]
"""One round of a loop; returns how long to sleep before the next (None: the loop's interval)."""

LOG_EVERY_S = 60.0  # a failure that repeats is logged at most this often (with how often it happened)
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 60.0
HEALTHY_RUN_S = 60.0  # a task that ran this long before failing starts its backoff afresh


class Backoff:
    """Exponential delays with jitter: base, 2·base, 4·base … up to cap, each drawn from its upper
    half (so restarts of many loops do not fall in step) and reset by a success."""

    def __init__(self, base_s: float = BACKOFF_BASE_S, cap_s: float = BACKOFF_CAP_S) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.attempt = 0

    def next(self) -> float:
        ceiling = min(self.cap_s, self.base_s * 2.0**self.attempt)
        self.attempt += 1
        return ceiling / 2 + random.random() * ceiling / 2

    def reset(self) -> None:
        self.attempt = 0


class LogLimiter:
    """At most one line per key every `every_s`; the lines held back are counted into the next one,
    so a failure that repeats every second does not flood the journal but is never hidden."""

    def __init__(
        self,
        logger: logging.Logger = log,
        every_s: float = LOG_EVERY_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.every_s = every_s
        self.monotonic = monotonic
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args: object, exc_info: BaseException | None = None) -> bool:
        """Log unless `key` was logged less than `every_s` ago; True when the line was written."""
        now = self.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        held = self._held.pop(key, 0)
        if held:
            msg += f" (and {held} more time{'s' if held > 1 else ''} since the last report)"
        self._last[key] = now
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True

    def forget(self, key: str) -> None:
        """The failure is over: its next occurrence is logged at once."""
        self._last.pop(key, None)
        self._held.pop(key, None)


@dataclass
class LoopStats:
    """What /metrics and /healthz show of one loop or task."""

    name: str
    core: bool = False
    runs: int = 0  # steps that completed
    failures: int = 0  # steps (or task runs) that raised
    crashes: int = 0  # of those, the task runs: a failure its own loop did not handle
    restarts: int = 0  # times a task was started again after it crashed
    failing: bool = False  # the last attempt failed and no success has followed yet
    last_error: str = ""  # type and first line of the last failure (never a traceback)


@dataclass
class _Sleep:
    """Sleep `delay_s` (None: for ever) unless one of `events` is set first."""

    events: tuple[asyncio.Event, ...] = field(default_factory=tuple)

    async def __call__(self, delay_s: float | None) -> None:
        if delay_s is not None and delay_s <= 0:
            await asyncio.sleep(0)  # let others run: a loop that never waits would starve the event loop
            return
        waiters = [asyncio.ensure_future(e.wait()) for e in self.events]
        try:
            await asyncio.wait(waiters, timeout=delay_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()


def describe(exc: BaseException) -> str:
    """An exception as one short line for a counter's `last_error`."""
    text = str(exc).strip().splitlines()
    first = text[0][:200] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class Upkeep:
    """The loops and tasks of one daemon (or worker), with their counters; see the module doc."""

    def __init__(
        self,
        stop: asyncio.Event,
        *,
        logger: logging.Logger = log,
        log_every_s: float = LOG_EVERY_S,
        backoff_cap_s: float = BACKOFF_CAP_S,
    ) -> None:
        self.stop = stop
        self.logger = logger
        self.limiter = LogLimiter(logger, log_every_s)
        self.backoff_cap_s = backoff_cap_s
        self.stats: dict[str, LoopStats] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def _stats(self, name: str, core: bool) -> LoopStats:
        st = self.stats.get(name)
        if st is None:
            st = self.stats[name] = LoopStats(name, core)
        st.core = st.core or core
        return st

    # ---- failures ----

    def failed(self, name: str, exc: BaseException, *, retry_in_s: float, core: bool = False) -> None:
        """Count and log (rate-limited) one failure of `name`; the caller retries after retry_in_s."""
        st = self._stats(name, core)
        first = not st.failing  # a new run of failures: its first report carries the traceback
        st.failures += 1
        st.failing = True
        st.last_error = describe(exc)
        self.limiter.log(
            logging.ERROR,
            name,
            "%s failed (%s); retrying in %.1fs",
            name,
            st.last_error,
            retry_in_s,
            exc_info=exc if first else None,
        )

    def succeeded(self, name: str, core: bool = False) -> None:
        st = self._stats(name, core)
        st.runs += 1
        if st.failing:
            st.failing = False
            self.limiter.forget(name)
            self.logger.info("%s recovered", name)

    def restarted(self, name: str) -> None:
        """`name` (a task, or what a loop looks after: a child process, a source) was started again
        after a failure. Counted, and no longer failing until it fails again: a long-running thing
        has no other sign of success."""
        st = self._stats(name, False)
        st.restarts += 1
        st.failing = False
        self.logger.warning("%s restarted (restart %d)", name, st.restarts)

    def forget(self, name: str) -> None:
        """`name` is gone for good (a source a reload removed): its counters leave /metrics."""
        self.stats.pop(name, None)
        self.limiter.forget(name)

    # ---- loops ----

    async def every(
        self,
        name: str,
        step: Step,
        *,
        interval_s: float | None,
        jitter: float = 0.0,
        wake: asyncio.Event | None = None,
        core: bool = False,
        backoff: Backoff | None = None,
        sleep: Callable[[float | None], Awaitable[None]] | None = None,
    ) -> None:
        """Run `step` until stop. After a step, sleep the delay it returned (None: `interval_s`, spread
        by ±`jitter` of itself; an interval of None waits for `wake`), or until `wake` or stop is set.
        `wake` is cleared before each step, so a wake-up that comes during a step is not lost. A step
        that raises is counted, logged at a rate limit, and tried again after an exponential backoff
        (reset by the next success). `sleep` replaces the plain sleep (the scheduler's wall-clock
        timer); it must return when `wake` or stop is set."""
        backoff = backoff or Backoff(cap_s=self.backoff_cap_s)
        sleep = sleep or _Sleep((self.stop,) if wake is None else (self.stop, wake))
        self._stats(name, core)
        while not self.stop.is_set():
            if wake is not None:
                wake.clear()
            try:
                delay = await step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.stop.is_set():
                    return  # failures while stopping (a closed connection) are expected
                retry_s = backoff.next()
                self.failed(name, exc, retry_in_s=retry_s, core=core)
                await _Sleep((self.stop,))(retry_s)  # not cut short by `wake`: that would defeat the backoff
                continue
            backoff.reset()
            self.succeeded(name, core)
            if delay is None and interval_s is not None:
                delay = interval_s * (1 + jitter * (2 * random.random() - 1)) if jitter else interval_s
            await sleep(delay)

    # ---- tasks ----

    def spawn(
        self, name: str, factory: Callable[[], Awaitable[None]], *, core: bool = False, once: bool = False
    ) -> asyncio.Task[None]:
        """Run `factory()` as a task until stop. When it raises (or returns while the daemon is not
        stopping, unless it is a one-off job: `once`), it is counted, logged, and started again after
        a backoff."""
        self._stats(name, core)

        async def supervised() -> None:
            backoff = Backoff(cap_s=self.backoff_cap_s)
            loop = asyncio.get_running_loop()
            while not self.stop.is_set():
                began = loop.time()
                try:
                    await factory()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if self.stop.is_set():
                        return
                    error: BaseException = exc
                else:
                    if once or self.stop.is_set():
                        return
                    error = RuntimeError("the task ended while watchd runs")
                if loop.time() - began > HEALTHY_RUN_S:
                    backoff.reset()  # it ran fine for a while: this is a fresh failure
                retry_s = backoff.next()
                self.stats[name].crashes += 1
                self.failed(name, error, retry_in_s=retry_s, core=core)
                await _Sleep((self.stop,))(retry_s)
                if self.stop.is_set():
                    return
                self.restarted(name)

        task = asyncio.create_task(supervised(), name=name)
        self.tasks[name] = task
        return task

    async def close(self) -> None:
        """Cancel every task and wait for them to end."""
        tasks = list(self.tasks.values())
        self.tasks.clear()
        for t in tasks:
            t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)

    # ---- reporting ----

    def core_down(self) -> list[str]:
        """The core loops and tasks whose last attempt failed: the daemon is unhealthy while any is."""
        return sorted(st.name for st in self.stats.values() if st.core and st.failing)

    def crashed(self) -> dict[str, str]:
        """The tasks that crashed at least once, with their last error."""
        return {st.name: st.last_error for st in self.stats.values() if st.crashes}
