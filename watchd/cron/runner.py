"""The schedule runner: the cron layer's I/O around the pure planner in `ticks.py`.

Each wake-up asks `ticks.plan` what is due, claims every tick it will run or skip in SQLite
(`schedule_ticks`, whose primary key is the tick key, inserted with INSERT OR IGNORE: a restart, a
second process or an overlapping wake can never run one tick twice), starts the runs, publishes
the outcomes as events, then sleeps until the next due tick and nothing else.

Between wake-ups it sleeps on a `WallTimer` (walltimer.py), which wakes at a wall-clock instant
even across a laptop's suspend, and never otherwise: no polling.

In a deployment of several instances, an instance runs the ticks of the schedules whose shard it
holds (`owns`), and claims them in NATS too (watchd/cron/shared.py). Runs it started, their
retries, and runs asked for (run now, replay) stay its own wherever the schedule's shard goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import msgspec

from watchd import history
from watchd.config import Loaded, effective_schedules
from watchd.cron import chain, jobrun
from watchd.cron.payload import payload_of, run_of_row, run_payload
from watchd.cron.ticks import (
    Definition,
    Due,
    OverlapAction,
    Run,
    Skip,
    State,
    define,
    next_run_at,
    overlap_action,
    period_of,
    plan,
    retry_delay,
    run_key,
    tick_key,
)
from watchd.cron.walltimer import WallTimer
from watchd.errors import WatchdError
from watchd.jobs import JobResult
from watchd.model import iso
from watchd.store import schedules
from watchd.store.schedules import TickClaim, TickRow
from watchd.upkeep import Backoff, Upkeep

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

    from watchd.cron.shared import SharedSchedules
    from watchd.dispatch import Target
    from watchd.notify.http_client import HttpClient
    from watchd.store import Store

log = logging.getLogger("watchd.scheduler")

Emit = Callable[[str, dict[str, Any]], Awaitable[None]]
KEEP_TICKS_S = 30 * 86400.0  # schedule_ticks rows kept for `explain --schedule`
STOP_GRACE_S = 3.0  # on stop, how long interrupted runs get to record themselves
RETRY_S = 5.0  # after a failed wake-up (the state db busy)


# ---- the runner -----------------------------------------------------------------------------------


@dataclass
class Slot:
    defn: Definition
    version: int
    state: State
    next_at: float | None = None
    active: dict[asyncio.Task[None], float] = field(default_factory=dict)  # runs under way -> their tick
    retries: dict[str, tuple[float, Run]] = field(default_factory=dict)  # key -> (next attempt due, its run)


class Scheduler:
    def __init__(
        self,
        store: Store,
        loaded: Loaded,
        *,
        emit: Emit,
        clock: Callable[[], float] = time.time,
        targets: dict[str, Target] | None = None,
        wake_dispatcher: Callable[[], None] = lambda: None,
        nc: Client | None = None,
        js: JetStreamContext | None = None,
        timer: WallTimer | None = None,
        in_daemon: bool = False,
        shared: SharedSchedules | None = None,
        owns: Callable[[str], bool] | None = None,
        http: HttpClient | None = None,
    ) -> None:
        self.store = store
        self.loaded = loaded
        self.emit = emit
        self.clock = clock
        self.targets = targets if targets is not None else {}
        self.wake_dispatcher = wake_dispatcher
        self.nc, self.js = nc, js
        self.timer = timer or WallTimer(clock)
        self.in_daemon = in_daemon
        self.http = http  # the daemon's HTTP client, for the jobs (the heartbeat's ping)
        # In a deployment of several instances (watchd/cron/shared.py): the ticks it handled, and
        # whether this instance runs a schedule's ticks now (the instance holding its shard does).
        self.shared = shared
        self.owns = owns
        self.owned: set[str] = set()  # the schedules this instance ran ticks of at its last wake-up
        self.slots: dict[str, Slot] = {}
        # Indexes over the slots, so a wake-up costs nothing for what has none: 1,000 schedules due
        # together end 1,000 runs, each of which wakes the runner. Set with the slots (install).
        self.retrying: set[str] = set()  # schedules that may have retries pending (never one less)
        self.downstream: dict[str, list[str]] = {}  # schedule -> those that run after it (`after`)
        self.wakeups = 0  # loop iterations: the idle benchmark counts them
        self._wake = asyncio.Event()
        self._started = asyncio.Event()  # the schedules are loaded: run-now and replay may act
        self._cancelled: dict[asyncio.Task[None], str] = {}  # why a run was cancelled
        self._pruned_at = 0.0

    # ---- life cycle ----

    async def start(self) -> None:
        """At start-up: runs a dead watchd left `started` are failed, then the schedules load."""
        store, now = self.store, self.clock()
        configured = effective_schedules(self.loaded.config)
        for key, name, tick_at, started, attempt in await store.call(schedules.recover_interrupted, now):
            log.warning("schedule %s: the run for %s was interrupted by a restart", name, iso(tick_at))
            info = {
                "schedule": name,
                "tick": iso(tick_at),
                "key": key,
                "reason": "interrupted by restart",
                "duration_s": round(now - started, 3),
                "attempt": attempt,
            }
            if name in configured and attempt <= configured[name].retries:
                await store.call(schedules.retry_interrupted, key, now)  # tried again at once
                info["retry_at"] = iso(now)
            await self.emit(f"watchd.schedule.{name}.failed", info)
        await self.install(self.loaded)
        for row in await store.call(schedules.retrying):
            if (slot := self.slots.get(row.schedule)) is not None:
                self._retry(slot, row.key, row.next_attempt_at or now, run_of_row(row))
        self._started.set()
        self._wake.set()

    async def install(self, loaded: Loaded) -> None:
        """(Re)load the schedules: a changed one gets a new version; runs under way carry on."""
        self.loaded = loaded
        defs = {n: define(n, s, loaded.zone()) for n, s in effective_schedules(loaded.config).items()}
        synced = await self.store.call(schedules.sync_definitions, {n: d.digest for n, d in defs.items()}, self.clock())
        versions = {name: v for name, (v, _) in synced.items()}
        await history.record(self.store, "schedule", history.schedules(loaded, defs, versions), self.clock())
        slots: dict[str, Slot] = {}
        for name, defn in defs.items():
            version, state = synced[name]
            old = self.slots.get(name)
            slot = Slot(defn, version, state, active=old.active if old else {}, retries=old.retries if old else {})
            slot.next_at = self._next_at(slot, -math.inf)  # from the last tick handled: overdue ones come due now
            slots[name] = slot
        self.slots = slots
        self.retrying = {name for name, slot in slots.items() if slot.retries}
        self.downstream = {}
        for name, slot in slots.items():
            for up in dict.fromkeys(slot.defn.schedule.after or ()):
                self.downstream.setdefault(up, []).append(name)
        self.owned = set()  # the state just read from the store: caught up again with the deployment's
        self._wake.set()

    async def run(self, stop: asyncio.Event, upkeep: Upkeep | None = None) -> None:
        await self.start()
        try:

            async def sleep(delay_s: float | None) -> None:
                await self.timer.sleep_until(None if delay_s is None else self.clock() + delay_s, self._wake, stop)

            upkeep = upkeep or Upkeep(stop)
            # A failed wake-up (e.g. the state db locked for long) is tried again within RETRY_S.
            await upkeep.every(
                "scheduler", self._wakeup, interval_s=None, wake=self._wake, backoff=Backoff(cap_s=RETRY_S), sleep=sleep
            )
        finally:
            await self.stop_runs("interrupted: watchd stopped")
            self.timer.close()

    def wake(self) -> None:
        """Look at the schedules now, as if the sleep had run out: for a clock that jumps (a test's)."""
        self._wake.set()

    async def _wakeup(self) -> float | None:
        """One wake-up: handle what is due; the delay until the next (None: until woken)."""
        self.wakeups += 1
        await self.step()
        wake_at = self.next_wake()
        return None if wake_at is None else wake_at - self.clock()

    async def stop_runs(self, reason: str) -> None:
        tasks = [t for s in self.slots.values() for t in s.active]
        for t in tasks:
            self._cancelled[t] = reason
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_GRACE_S)

    async def idle(self) -> None:
        """Until no run is under way (tests, benchmarks)."""
        while tasks := [t for s in self.slots.values() for t in s.active]:
            await asyncio.wait(tasks)

    def next_wake(self) -> float | None:
        owns = self.owns
        ticks = (s.next_at for n, s in self.slots.items() if s.next_at is not None and (owns is None or owns(n)))
        pending = (s for n in self.retrying if (s := self.slots.get(n)) is not None)
        retries = (at for s in pending for at, _ in s.retries.values())
        return min((*ticks, *retries), default=None)

    def _next_at(self, slot: Slot, now: float) -> float | None:
        if slot.defn.kind == "every" and slot.active:
            return None  # counts from the end of the run under way
        return next_run_at(slot.defn, slot.state, now)

    # ---- one wake-up ----

    async def step(self) -> None:
        """Handle everything due now: claim, skip (with events), start runs."""
        now = self.clock()
        await self._follow_owners()
        await self._start_retries(now)
        due = [s for n, s in self.slots.items() if s.next_at is not None and s.next_at <= now and n in self.owned]
        if not due:
            return
        fresh = await self.store.call(schedules.refresh, [(s.defn.name, s.state) for s in due])
        rows: list[TickClaim] = []
        batches: list[tuple[Slot, list[Run], bool, list[Skip]]] = []
        planned: list[tuple[Slot, State, Due, OverlapAction]] = []
        for slot, state in zip(due, fresh, strict=True):
            slot.state = state
            d = plan(slot.defn, state, now, expected=slot.next_at - slot.defn.jitter_s if slot.next_at else None)
            action = overlap_action(slot.defn.schedule.overlap, len(slot.active)) if d.runs else "run"
            if action == "skip":
                busy = ", ".join(sorted(iso(t) or "" for t in slot.active.values()))
                why = f"the run for {busy} is still going (overlap=forbid)"
                d.skips = sorted(
                    [*d.skips, *(Skip(r.tick_at, "overlap", why) for r in d.runs)], key=lambda k: k.tick_at
                )
                d.runs = []
            planned.append((slot, state, d, action))
        failure: BaseException | None = None
        for (slot, state, d, action), claimed in zip(planned, await self._claim_shared(planned), strict=True):
            if isinstance(claimed, BaseException):  # not handled now: planned again after the failure's backoff
                failure = failure or claimed
                continue
            ticks = [r.tick_at for r in d.runs] + [k.tick_at for k in d.skips]
            if ticks:
                slot.state = replace(state, last_tick=max(ticks))
            d = claimed  # without the ticks another instance handled: they are its to run or report
            name, v = slot.defn.name, slot.version
            for k in d.skips:
                data = msgspec.json.encode({"count": k.count, "wall": k.wall or None}).decode()
                rows.append(TickClaim(k.key(name, v), name, v, k.tick_at, "skipped", k.reason, now, k.detail, data))
            if d.runs:  # the first run is claimed now; the rest of a replay just before each runs
                t = d.runs[0].tick_at
                rows.append(TickClaim(tick_key(name, v, t), name, v, t, "started", None, now, None, None))
            batches.append((slot, d.runs, action == "replace", d.skips))
        owned = iter(await self.store.call(schedules.claim, rows))
        mine: list[tuple[Slot, list[Skip]]] = []
        for slot, runs, replacing, skips in batches:
            mine.append((slot, [k for k in skips if next(owned)]))
            if runs and next(owned) is True:
                if replacing:
                    self._replace(slot, runs[0].tick_at)
                self._start(slot, runs)
        await asyncio.sleep(0)  # the runs start before the bookkeeping below
        for slot, skipped in mine:
            slot.next_at = self._next_at(slot, now)
            if skipped:
                await self._emit_skips(slot, skipped)
        if now - self._pruned_at > 3600:
            self._pruned_at = now
            await self.store.call(schedules.prune, now - KEEP_TICKS_S)
        if failure is not None:
            raise failure

    async def _claim_shared(self, planned: list[tuple[Slot, State, Due, OverlapAction]]) -> list[Due | BaseException]:
        """The ticks of each plan that this instance handles (watchd/cron/shared.py), or why they
        could not be claimed. All at once: each claim is a round trip or two to NATS."""
        shared = self.shared
        if shared is None:
            return [d for _, _, d, _ in planned]

        async def claim(name: str, d: Due) -> Due:
            return await shared.claim(name, d) if d.runs or d.skips else d

        return await asyncio.gather(*(claim(s.defn.name, d) for s, _, d, _ in planned), return_exceptions=True)

    async def _follow_owners(self) -> None:
        """Which schedules this instance runs the ticks of now. One it has just come to run (at
        start, or its shard taken from another instance) first catches up with what the deployment
        handled: planned from this store's own record, the ticks run elsewhere would look missed."""
        owns = self.owns
        owned = set(self.slots) if owns is None else {name for name in self.slots if owns(name)}
        self.owned &= owned
        taken = sorted(owned - self.owned)
        if self.shared is not None:  # all at once: each is a round trip to NATS
            states = await asyncio.gather(*(self.shared.catch_up(n, self.slots[n].state) for n in taken))
            for name, state in zip(taken, states, strict=True):
                self.slots[name].state = state
        for name in taken:
            slot = self.slots[name]
            slot.next_at = self._next_at(slot, -math.inf)  # as install does: overdue ones come due now
            self.owned.add(name)

    async def _emit_skips(self, slot: Slot, skips: list[Skip]) -> None:
        """One event per reason, however many ticks: waking after a 3-day outage says so once."""
        by_reason: dict[str, list[Skip]] = {}
        for k in skips:
            by_reason.setdefault(k.reason, []).append(k)
        name = slot.defn.name
        for reason, group in by_reason.items():
            count = sum(k.count for k in group)
            log.info("schedule %s: skipped %d tick(s): %s", name, count, group[-1].detail)
            data: dict[str, Any] = {
                "schedule": name,
                "reason": reason,
                "count": count,
                "tick": iso(group[-1].tick_at),
                "first_tick": iso(group[0].tick_at),
                "detail": group[-1].detail,
            }
            await self.emit(f"watchd.schedule.{name}.skipped", data)

    def _replace(self, slot: Slot, tick_at: float) -> None:
        for task in slot.active:
            self._cancelled[task] = f"replaced by the run for {iso(tick_at)} (overlap=replace)"
            task.cancel()

    def _start(self, slot: Slot, runs: list[Run]) -> None:
        task = asyncio.create_task(self._run_batch(slot, runs), name=f"schedule-{slot.defn.name}")
        slot.active[task] = runs[0].tick_at

    async def _run_batch(self, slot: Slot, runs: list[Run]) -> None:
        """One wake-up's runs of one schedule, in order (replay), each claimed before it starts."""
        me = asyncio.current_task()
        assert me is not None
        try:
            for i, r in enumerate(runs):
                key = r.key_of(slot.defn.name, slot.version)
                if i:  # the first was claimed by the wake-up that planned it
                    name, v, now = slot.defn.name, slot.version, self.clock()
                    row = TickClaim(key, name, v, r.tick_at, "started", None, now, None, None)
                    if not (await self.store.call(schedules.claim, [row]))[0]:
                        continue  # another process has it
                slot.active[me] = r.tick_at
                await self._run_one(slot, r, key)
        finally:
            slot.active.pop(me, None)
            self._cancelled.pop(me, None)
            current = self._current(slot)
            current.next_at = self._next_at(current, self.clock())
            self._wake.set()

    def _current(self, slot: Slot) -> Slot:
        """The slot a run's schedule has now: a reload replaces slots while runs go on."""
        return self.slots.get(slot.defn.name, slot)

    async def _run_one(self, slot: Slot, r: Run, key: str) -> None:
        defn, name = slot.defn, slot.defn.name
        started = self.clock()
        info: dict[str, Any] = {
            "schedule": name,
            "version": slot.version,
            "tick": iso(r.tick_at),
            "key": key,
            "lateness_s": round(started - r.tick_at - defn.jitter_s, 3) if r.trigger == "schedule" else 0.0,
        }
        if r.backfill_from is not None:
            info["backfill_from"] = iso(r.backfill_from)
        period = period_of(defn, slot.state, r)
        r = replace(r, period=period)
        info.update(payload_of(r))
        published = asyncio.ensure_future(self.emit(f"watchd.schedule.{name}.started", info))  # beside the job
        reason: str | None = None
        try:
            result = await self._job(slot, r, key)
        except WatchdError as exc:  # e.g. a `then` handoff could not be stored
            result = JobResult(False, exc.message)
        except Exception as exc:
            log.exception("schedule %s: the run for %s failed", name, iso(r.tick_at))
            result = JobResult(False, f"{type(exc).__name__} (see the log)")
        except asyncio.CancelledError:
            why = self._cancelled.get(asyncio.current_task(), "interrupted: watchd stopped")  # type: ignore[arg-type]
            result, reason = JobResult(False, why), ("replaced" if why.startswith("replaced") else "interrupted")
            await self._record(slot, r, key, info, started, result, reason, published)
            raise
        await self._record(slot, r, key, info, started, result, reason, published)

    async def _record(
        self,
        slot: Slot,
        r: Run,
        key: str,
        info: dict[str, Any],
        started: float,
        result: JobResult,
        reason: str | None,
        published: asyncio.Future[None],
    ) -> None:
        name, ended = slot.defn.name, self.clock()
        current = self._current(slot)
        retries = current.defn.schedule.retries
        state = "done" if result.ok else "failed"
        retry_at: float | None = None
        if not result.ok and reason != "replaced" and r.attempt <= retries:
            # A stop's interrupted run is tried again when watchd starts (the attempt counts).
            retry_at = ended + retry_delay(current.defn.retry_backoff_s, r.attempt, random.random())
            state = "retrying"
        elif not result.ok and reason is None and retries:
            state = "dead"  # a dead letter: `watchd dlq replay` runs it again with the same key
        data = msgspec.json.encode(result.data)
        payload = msgspec.json.encode(run_payload(r)).decode()
        await self.store.call(
            schedules.finish,
            key,
            name,
            result.ok,
            ended,
            reason,
            result.summary,
            data,
            state=state,
            next_attempt_at=retry_at,
            payload=payload,
        )
        if reason != "interrupted":
            current.state = replace(current.state, completed_at=max(ended, current.state.completed_at or 0.0))
            if self.shared is not None and current.defn.kind == "every":  # it counts from this end
                await self.shared.record_completion(name, ended)
        if retry_at is not None and reason is None:
            self._retry(current, key, retry_at, replace(r, key=key, attempt=r.attempt + 1))
        (log.info if result.ok else log.warning)(
            "schedule %s: %s — %s%s",
            name,
            state,
            result.summary,
            f" (attempt {r.attempt} of {retries + 1}; next at {iso(retry_at)})" if retry_at else "",
        )
        with contextlib.suppress(Exception):
            await published
        event = {**info, "duration_s": round(ended - started, 3), "summary": result.summary}
        if not result.ok:
            event["reason"] = result.summary
            if retries:
                event.update(retries=retries, retry_at=iso(retry_at) if retry_at else None)
        if "output_tail" in result.data:
            event["output_tail"] = result.data["output_tail"]
        await self.emit(f"watchd.schedule.{name}.{'done' if result.ok else 'failed'}", event)
        if state == "dead":
            await self.emit(f"watchd.schedule.{name}.dead", event)
        if state != "retrying":  # a job's outcome is its last attempt's
            job = slot.defn.schedule.job or name
            outcome = "done" if result.ok else "failed"
            await self.emit(f"watchd.job.{job}.{outcome}", {"summary": result.summary, "schedule": name, **result.data})
        if reason is None:  # a run cut off by a stop or replaced is not its tick's outcome
            await chain.upstream_ended(self, name, r, key, state)

    # ---- retries, run now, replay ----

    async def _start_retries(self, now: float) -> None:
        """Start each run whose next attempt is due (after the run under way, unless overlap=allow)."""
        if not self.retrying:
            return
        pending = [s for n, s in self.slots.items() if n in self.retrying]  # in the slots' order
        self.retrying = {s.defn.name for s in pending if s.retries}
        for slot in pending:
            due = [(key, run) for key, (at, run) in slot.retries.items() if at <= now]
            for key, run in due:
                if overlap_action(slot.defn.schedule.overlap, len(slot.active)) != "run":
                    break  # its end wakes the scheduler again
                del slot.retries[key]
                attempt = await self.store.call(schedules.start_attempt, key, now)
                if attempt is not None:  # else another process took it, or it was dropped
                    self._start(slot, [replace(run, attempt=attempt)])

    def _retry(self, slot: Slot, key: str, at: float, run: Run) -> None:
        slot.retries[key] = (at, run)
        self.retrying.add(slot.defn.name)

    def downstream_of(self, name: str) -> list[Slot]:
        """The schedules that run after `name` (`after = [...]`), in the configuration's order."""
        return [self.slots[n] for n in self.downstream.get(name, ())]

    async def run_now(self, name: str, by: str) -> tuple[str, float]:
        """Run a schedule's job now through the path a tick takes, as a run of its own (trigger
        manual, key of its own): (its key, its instant). WatchdError when it cannot start."""
        await self._started.wait()  # a call that comes while watchd starts waits for the schedules
        slot = self.slots.get(name)
        if slot is None:
            known = ", ".join(sorted(self.slots)) or "none"
            if name in self.loaded.config.schedule:  # defined, but turned off
                raise UnknownSchedule(f"schedule {name!r} is disabled (enabled = false)", hint="enable it first")
            raise UnknownSchedule(f"no schedule named {name!r}", hint=f"known schedules: {known}")
        action = overlap_action(slot.defn.schedule.overlap, len(slot.active))
        if action == "skip":
            busy = ", ".join(sorted(iso(t) or "" for t in slot.active.values()))
            raise WatchdError(
                f"schedule {name}: the run for {busy} is still going (overlap=forbid)",
                hint=f"wait for it to end (`watchd explain --schedule {name}`), or set overlap",
            )
        now = self.clock()
        key = run_key(name, slot.version, now, "manual")
        run = Run(now, 0.0, trigger="manual", by=by, key=key)
        payload = msgspec.json.encode(run_payload(run)).decode()
        claim = TickClaim(key, name, slot.version, now, "started", None, now, None, None, "manual", payload)
        if not (await self.store.call(schedules.claim, [claim]))[0]:
            raise WatchdError(f"schedule {name}: a manual run started this very instant", hint="try again")
        log.info("schedule %s: run now, asked by %s", name, by)
        if action == "replace":
            self._replace(slot, now)
        self._start(slot, [run])
        return key, now

    async def replay(self, ref: str) -> TickRow:
        """A dead run runs again, with the same key, from attempt 1."""
        await self._started.wait()
        row = await self.store.call(schedules.replay_dead_run, ref, self.clock())
        slot = self.slots.get(row.schedule)
        if slot is not None:
            self._retry(slot, row.key, self.clock(), run_of_row(row))
        self._wake.set()
        return row

    async def _job(self, slot: Slot, r: Run, key: str) -> JobResult:
        return await jobrun.run_job(self, slot.defn, slot.version, r, key)

    def start_runs(self, slot: Slot, runs: list[Run]) -> None:
        self._start(slot, runs)


class UnknownSchedule(WatchdError):
    """run-now or replay named a schedule the daemon does not run."""
