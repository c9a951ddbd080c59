"""The outbox dispatcher: deliver each handoff with retries, backoff and dead letters.

Delivery never blocks the engine: it runs as its own task, reads due handoffs from the store,
and each target has its own concurrency limit, so a slow notifier holds up only itself.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from watchd.config import Quiet
from watchd.engine import Fire
from watchd.model import Handoff, Window, iso, ts_from_iso
from watchd.notify.render import render, render_template
from watchd.quiet import QUIET_PREFIX, quiet_hold
from watchd.store import Store
from watchd.upkeep import Backoff, Upkeep

if TYPE_CHECKING:
    from watchd.metrics import Metrics

log = logging.getLogger("watchd.dispatch")

MAX_ATTEMPTS = 8
BACKOFF_BASE_S = 2.0
BACKOFF_CAP_S = 600.0
POLL_S = 2.0  # the longest the dispatcher sleeps before looking at the outbox again
CLOSE_GRACE_S = 60.0  # how long a replaced target may finish its deliveries before it is closed


@dataclass(frozen=True)
class Delivered:
    detail: str = ""
    state: str = "delivered"  # delivered | accepted | done


@dataclass(frozen=True)
class Retry:
    detail: str
    retry_after_s: float | None = None
    # A wait, not a failure (an agent's daily token budget is spent): pending again after exactly
    # retry_after_s, uncapped, and no attempt is used up.
    wait: bool = False


@dataclass(frozen=True)
class Dead:
    detail: str


Outcome = Delivered | Retry | Dead


class Target(Protocol):
    async def deliver(self, handoff: Handoff) -> Outcome: ...


class Gate(Protocol):
    """What may stop or redirect deliveries to a target before they start (agents' releases,
    watchd/jobs/release.py)."""

    def paused(self, target: str) -> bool:
        """Claim nothing for `target` for now (its release is being checked): no trace, no attempt."""
        ...

    def route(self, target: str) -> Target | Retry | None:
        """None: deliver to the target; a Target: deliver there instead; a Retry: wait, as it says."""
        ...


def handoffs_from_fire(
    fire: Fire,
    template: str | None = None,
    *,
    quiet: Quiet | None = None,
    urgent: bool = False,
    zone: str = "UTC",
    holds: dict[str, float] | None = None,
) -> list[Handoff]:
    """One handoff per target; the watch's `message` template is filled here, once.

    With `quiet` hours (a default zone of `zone`), a handoff the window holds is marked late in its
    message, and its release instant goes into `holds` (id -> instant) for the store to schedule.
    """
    window = Window(iso(fire.window[0]), iso(fire.window[1])) if fire.window else None
    handoffs = []
    for target in fire.targets:
        h = Handoff(
            id=fire.handoff_id(target),
            watch=fire.watch,
            watch_version=fire.version,
            kind=fire.kind,
            key=fire.key,
            target=target,
            trigger=fire.trigger,
            reason=fire.reason,
            fired_at=iso(fire.fired_at) or "",
            window=window,
            evidence=fire.evidence,
        )
        if template:
            h.message = render_template(template, h)
        if quiet is not None:
            release = quiet_hold(target, fire.fired_at, quiet.from_, quiet.to, quiet.timezone or zone, urgent=urgent)
            if release is not None:
                h.message = QUIET_PREFIX + (h.message or render(h))
                if holds is not None:
                    holds[h.id] = release
        handoffs.append(h)
    return handoffs


def backoff_s(attempt: int, retry_after_s: float | None = None) -> float:
    """Exponential with full jitter; a server's retry-after is honoured but capped."""
    if retry_after_s is not None:
        return min(max(retry_after_s, 0.0), BACKOFF_CAP_S)
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2.0 ** (attempt - 1))
    return ceiling / 2 + random.random() * ceiling / 2


class Dispatcher:
    def __init__(
        self,
        store: Store,
        targets: dict[str, Target],
        *,
        clock: Callable[[], float] = time.time,
        per_target: int = 4,
        metrics: Metrics | None = None,
        gate: Gate | None = None,
    ) -> None:
        self.metrics = metrics
        self.gate = gate
        self.store = store
        self.targets = targets
        self.clock = clock
        self.per_target = per_target
        self._in_flight: Counter[str] = Counter()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event, upkeep: Upkeep | None = None) -> None:
        """Deliver until `stop`: look at the outbox, start what is due, sleep until the next is due
        or `wake()`. A failed look (the store busy) is retried with backoff by `upkeep`."""
        await self.store.run(self.store.recover_in_flight, self.clock())
        upkeep = upkeep or Upkeep(stop)
        await upkeep.every(
            "dispatcher", self.step, interval_s=POLL_S, wake=self._wake, core=True, backoff=Backoff(cap_s=POLL_S * 5)
        )

    async def step(self) -> float:
        """Start the due deliveries there is room for; the delay until the outbox needs a look again."""
        for handoff in await self.store.run(self.store.claim_due, self.clock(), self._room()):
            self._in_flight[handoff.target] += 1
            task = asyncio.create_task(self._deliver(handoff))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        nxt = await self.store.run(self.store.next_attempt_at, self._room())
        # Capped at POLL_S: `watchd dlq replay` (another process) makes handoffs due by writing
        # to the same SQLite, and is picked up at the next look without any signalling.
        return POLL_S if nxt is None else max(0.0, min(POLL_S, nxt - self.clock()))

    def replace_targets(self, targets: dict[str, Target], grace_s: float = CLOSE_GRACE_S) -> None:
        """Deliver to `targets` from now on. The old targets that are not among them are closed once
        the deliveries under way (on the old ones) have ended, or after grace_s."""
        old, self.targets = self.targets, targets
        gone = [t for name, t in old.items() if targets.get(name) is not t]
        running = list(self._tasks)

        async def close_old() -> None:
            if running:
                await asyncio.wait(running, timeout=grace_s)
            for target in gone:
                close = getattr(target, "close", None)
                if close is None:
                    continue
                try:
                    await close()
                except Exception:  # the old target is dropped either way
                    log.exception("closing the replaced target %r failed", target)

        task = asyncio.create_task(close_old(), name="close-replaced-targets")
        self._tasks.add(task)  # a stop waits for it as for a delivery (drain)
        task.add_done_callback(self._tasks.discard)
        self.wake()  # handoffs that waited for a target added now

    async def drain(self, timeout_s: float) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_s)

    def _room(self) -> dict[str, int]:
        """How many more deliveries each target may start: its own limit, so a slow one holds up only itself."""
        gate = self.gate
        return {
            name: 0 if gate is not None and gate.paused(name) else self.per_target - self._in_flight[name]
            for name in self.targets
        }

    async def _deliver(self, h: Handoff) -> None:
        try:
            await self._deliver_one(h)
        except Exception:  # e.g. the store failed to record the outcome: the handoff stays claimed
            log.exception("recording the delivery of %s to %s failed", h.id, h.target)
        finally:
            self._in_flight[h.target] -= 1
            self.wake()  # a slot is free: claim the target's next due handoff

    async def _deliver_one(self, h: Handoff) -> None:
        target = self.targets.get(h.target)
        if target is None:
            await self.store.run(self.store.finish, h.id, "dead", self.clock(), no_target(h))
            return
        outcome = await gated_attempt(self.gate, target, h)
        now = self.clock()
        if self.metrics is not None:
            latency = fired_ago_s(h, now) if isinstance(outcome, Delivered) else None
            self.metrics.delivered(h.target, outcome_label(outcome), latency)
        state, detail, next_at = settlement(h, outcome, now)
        if state == "dead":
            log.warning("handoff %s to %s dead-lettered: %s", h.id, h.target, detail)
        await self.store.run(self.store.finish, h.id, state, now, detail, next_at)


def no_target(h: Handoff) -> str:
    return f"no target named {h.target} in the config"


async def attempt(target: Target, h: Handoff) -> Outcome:
    """One delivery attempt; an unexpected failure is retried, with its type, never a secret."""
    try:
        return await target.deliver(h)
    except Exception as exc:
        log.exception("delivery of %s to %s failed", h.id, h.target)
        return Retry(f"unexpected error: {type(exc).__name__}")


async def gated_attempt(gate: Gate | None, target: Target, h: Handoff) -> Outcome:
    """One attempt through the gate: held (a wait, as it says), redirected, or to the target itself."""
    routed = gate.route(h.target) if gate is not None else None
    if isinstance(routed, Retry):
        return routed
    return await attempt(routed or target, h)


def settlement(h: Handoff, outcome: Outcome, now: float) -> tuple[str, str | None, float | None]:
    """What an attempt's outcome makes of the handoff: its state, the detail recorded, and when it is
    tried next (None: not again)."""
    if isinstance(outcome, Delivered):
        return outcome.state, outcome.detail or None, None
    if isinstance(outcome, Retry) and outcome.wait:
        return "pending", outcome.detail, now + (outcome.retry_after_s or 0.0)
    if isinstance(outcome, Dead) or h.attempt >= MAX_ATTEMPTS:
        if isinstance(outcome, Dead):
            return "dead", outcome.detail, None
        return "dead", f"gave up after {h.attempt} attempts: {outcome.detail}", None
    return "retrying", outcome.detail, now + backoff_s(h.attempt, outcome.retry_after_s)


def outcome_label(outcome: object) -> str:
    return {Delivered: "delivered", Dead: "dead"}.get(type(outcome), "retry")


def fired_ago_s(h: Handoff, now: float) -> float | None:
    """Seconds since the handoff's watch fired (its delivery latency once delivered)."""
    try:
        return now - ts_from_iso(h.fired_at)
    except ValueError:
        return None
