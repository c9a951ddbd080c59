"""The schedule runner: the cron layer's I/O around the pure planner in `ticks.py`.

Each wake-up asks `ticks.plan` what is due, claims every tick it will run or skip in SQLite
(`schedule_ticks`, whose primary key is the tick key, inserted with INSERT OR IGNORE: a restart, a
second process or an overlapping wake can never run one tick twice), starts the runs, publishes
the outcomes as events, then sleeps until the next due tick and nothing else.

Between wake-ups it sleeps on a `WallTimer` (walltimer.py), which wakes at a wall-clock instant
even across a laptop's suspend, and never otherwise: no polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import msgspec

from watchd.config import Loaded, effective_schedules
from watchd.cron.proc import run_in_group, signal_name
from watchd.cron.schedule import format_duration
from watchd.cron.ticks import Definition, Run, Skip, State, define, next_run_at, overlap_action, plan, tick_key
from watchd.cron.walltimer import WallTimer
from watchd.dispatch import handoffs_from_fire
from watchd.engine import Fire
from watchd.errors import WatchdError
from watchd.jobs import JobContext, JobResult, builtin
from watchd.model import iso
from watchd.store import schedules
from watchd.store.schedules import TickClaim
from watchd.upkeep import Backoff, Upkeep

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

    from watchd.dispatch import Target
    from watchd.store import Store

log = logging.getLogger("watchd.scheduler")

Emit = Callable[[str, dict[str, Any]], Awaitable[None]]
KEEP_TICKS_S = 30 * 86400.0  # schedule_ticks rows kept for `explain --schedule`
STOP_GRACE_S = 3.0  # on stop, how long interrupted runs get to record themselves
RETRY_S = 5.0  # after a failed wake-up (the state db busy)


# ---- the runner -----------------------------------------------------------------------------------


@dataclass
class _Slot:
    defn: Definition
    version: int
    state: State
    next_at: float | None = None
    active: dict[asyncio.Task[None], float] = field(default_factory=dict)  # runs under way -> their tick


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
        claim_tick: Callable[[str, float], Awaitable[bool]] | None = None,
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
        self.claim_tick = claim_tick  # a tick is run once cluster-wide: by the instance that claims it
        self.slots: dict[str, _Slot] = {}
        self.wakeups = 0  # loop iterations: the idle benchmark counts them
        self._wake = asyncio.Event()
        self._cancelled: dict[asyncio.Task[None], str] = {}  # why a run was cancelled
        self._pruned_at = 0.0

    # ---- life cycle ----

    async def start(self) -> None:
        """At start-up: runs a dead watchd left `started` are failed, then the schedules load."""
        store, now = self.store, self.clock()
        for key, name, tick_at, started in await store.call(schedules.recover_interrupted, now):
            log.warning("schedule %s: the run for %s was interrupted by a restart", name, iso(tick_at))
            info = {
                "schedule": name,
                "tick": iso(tick_at),
                "key": key,
                "reason": "interrupted by restart",
                "duration_s": round(now - started, 3),
            }
            await self.emit(f"watchd.schedule.{name}.failed", info)
        await self.install(self.loaded)

    async def install(self, loaded: Loaded) -> None:
        """(Re)load the schedules: a changed one gets a new version; runs under way carry on."""
        self.loaded = loaded
        defs = {n: define(n, s, loaded.zone()) for n, s in effective_schedules(loaded.config).items()}
        synced = await self.store.call(schedules.sync_definitions, {n: d.digest for n, d in defs.items()}, self.clock())
        slots: dict[str, _Slot] = {}
        for name, defn in defs.items():
            version, state = synced[name]
            old = self.slots.get(name)
            slot = _Slot(defn, version, state, active=old.active if old else {})
            slot.next_at = self._next_at(slot, -math.inf)  # from the last tick handled: overdue ones come due now
            slots[name] = slot
        self.slots = slots
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
        return min((s.next_at for s in self.slots.values() if s.next_at is not None), default=None)

    def _next_at(self, slot: _Slot, now: float) -> float | None:
        if slot.defn.kind == "every" and slot.active:
            return None  # counts from the end of the run under way
        return next_run_at(slot.defn, slot.state, now)

    # ---- one wake-up ----

    async def step(self) -> None:
        """Handle everything due now: claim, skip (with events), start runs."""
        now = self.clock()
        due = [s for s in self.slots.values() if s.next_at is not None and s.next_at <= now]
        if not due:
            return
        fresh = await self.store.call(schedules.refresh, [(s.defn.name, s.state) for s in due])
        rows: list[TickClaim] = []
        batches: list[tuple[_Slot, list[Run], bool, list[Skip]]] = []
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
            ticks = [r.tick_at for r in d.runs] + [k.tick_at for k in d.skips]
            if ticks:
                slot.state = replace(state, last_tick=max(ticks))
            if self.claim_tick is not None:  # ticks another instance claimed are its to run
                name = slot.defn.name
                d.runs = [r for r in d.runs if await self.claim_tick(name, r.tick_at)]
            name, v = slot.defn.name, slot.version
            for k in d.skips:
                data = msgspec.json.encode({"count": k.count, "wall": k.wall or None}).decode()
                rows.append(TickClaim(k.key(name, v), name, v, k.tick_at, "skipped", k.reason, now, k.detail, data))
            if d.runs:  # the first run is claimed now; the rest of a replay just before each runs
                t = d.runs[0].tick_at
                rows.append(TickClaim(tick_key(name, v, t), name, v, t, "started", None, now, None, None))
            batches.append((slot, d.runs, action == "replace", d.skips))
        owned = iter(await self.store.call(schedules.claim, rows))
        mine: list[tuple[_Slot, list[Skip]]] = []
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

    async def _emit_skips(self, slot: _Slot, skips: list[Skip]) -> None:
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

    def _replace(self, slot: _Slot, tick_at: float) -> None:
        for task in slot.active:
            self._cancelled[task] = f"replaced by the run for {iso(tick_at)} (overlap=replace)"
            task.cancel()

    def _start(self, slot: _Slot, runs: list[Run]) -> None:
        task = asyncio.create_task(self._run_batch(slot, runs), name=f"schedule-{slot.defn.name}")
        slot.active[task] = runs[0].tick_at

    async def _run_batch(self, slot: _Slot, runs: list[Run]) -> None:
        """One wake-up's runs of one schedule, in order (replay), each claimed before it starts."""
        me = asyncio.current_task()
        assert me is not None
        try:
            for i, r in enumerate(runs):
                key = tick_key(slot.defn.name, slot.version, r.tick_at)
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

    def _current(self, slot: _Slot) -> _Slot:
        """The slot a run's schedule has now: a reload replaces slots while runs go on."""
        return self.slots.get(slot.defn.name, slot)

    async def _run_one(self, slot: _Slot, r: Run, key: str) -> None:
        defn, name = slot.defn, slot.defn.name
        started = self.clock()
        info: dict[str, Any] = {
            "schedule": name,
            "version": slot.version,
            "tick": iso(r.tick_at),
            "key": key,
            "lateness_s": round(started - r.tick_at - defn.jitter_s, 3),
        }
        if r.backfill_from is not None:
            info["backfill_from"] = iso(r.backfill_from)
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
            await self._record(slot, key, info, started, result, reason, published)
            raise
        await self._record(slot, key, info, started, result, reason, published)

    async def _record(
        self,
        slot: _Slot,
        key: str,
        info: dict[str, Any],
        started: float,
        result: JobResult,
        reason: str | None,
        published: asyncio.Future[None],
    ) -> None:
        name, ended = slot.defn.name, self.clock()
        outcome = "done" if result.ok else "failed"
        data = msgspec.json.encode(result.data)
        await self.store.call(schedules.finish, key, name, result.ok, ended, reason, result.summary, data)
        if reason != "interrupted":
            current = self._current(slot)
            current.state = replace(current.state, completed_at=max(ended, current.state.completed_at or 0.0))
        (log.info if result.ok else log.warning)("schedule %s: %s — %s", name, outcome, result.summary)
        with contextlib.suppress(Exception):
            await published
        event = {**info, "duration_s": round(ended - started, 3), "summary": result.summary}
        if not result.ok:
            event["reason"] = result.summary
        if "output_tail" in result.data:
            event["output_tail"] = result.data["output_tail"]
        await self.emit(f"watchd.schedule.{name}.{outcome}", event)
        job = slot.defn.schedule.job or name
        await self.emit(f"watchd.job.{job}.{outcome}", {"summary": result.summary, "schedule": name, **result.data})

    # ---- the jobs ----

    async def _job(self, slot: _Slot, r: Run, key: str) -> JobResult:
        s = slot.defn.schedule
        result: JobResult | None = None
        if s.job:
            result = await self._builtin(s.job, slot.defn)
        elif s.run:
            result = await self._command(slot.defn, r, key)
        if s.then:
            ids = await self._hand_off(slot, r, key, result)
            if result is None:
                result = JobResult(True, f"handed off to {', '.join(s.then)}", {"handoffs": ids})
            else:
                result.data.setdefault("handoffs", ids)
        assert result is not None  # config.load insists on job, run or then
        return result

    async def _builtin(self, name: str, defn: Definition) -> JobResult:
        try:
            job = builtin(name)
        except (KeyError, ImportError):
            return JobResult(False, f"job {name} is not available in this watchd")
        ctx = JobContext(
            name=name,
            loaded=self.loaded,
            store=self.store,
            clock=self.clock,
            emit=self.emit,
            timeout_s=defn.timeout_s,
            nc=self.nc,
            js=self.js,
            targets=self.targets,
            wake_dispatcher=self.wake_dispatcher,
            in_daemon=self.in_daemon,
        )
        try:
            async with asyncio.timeout(defn.timeout_s):
                return await job(ctx)
        except TimeoutError:
            return JobResult(False, f"timed out after {format_duration(defn.timeout_s)}")
        except WatchdError as exc:
            return JobResult(False, exc.message)
        except Exception as exc:  # a job's bug fails its run, never the scheduler
            log.exception("job %s failed", name)
            return JobResult(False, f"job {name} crashed: {type(exc).__name__} (see the log)")

    async def _command(self, defn: Definition, r: Run, key: str) -> JobResult:
        argv = list(defn.schedule.run or [])
        if "/" in argv[0] and not os.path.isabs(argv[0]):  # relative to the config file (SPEC 3)
            argv[0] = str(self.loaded.base_dir / argv[0])
        env = {**os.environ, "WATCHD_SCHEDULE": defn.name, "WATCHD_TICK": iso(r.tick_at) or "", "WATCHD_TICK_KEY": key}
        started = self.clock()
        try:
            done = await run_in_group(argv, env=env, timeout_s=defn.timeout_s)
        except FileNotFoundError:
            return JobResult(False, f"command not found: {argv[0]}", {"exit_code": 127})
        except PermissionError:
            return JobResult(False, f"{argv[0]} is not executable", {"exit_code": 126})
        except OSError as exc:
            return JobResult(False, f"cannot start {argv[0]}: {exc.strerror}", {"exit_code": 127})
        data = {"exit_code": done.code, "duration_s": round(self.clock() - started, 3), "output_tail": done.tail}
        last = done.tail.splitlines()[-1] if done.tail else "no output"
        if done.code is None:
            return JobResult(False, f"timed out after {format_duration(defn.timeout_s)}: {last}", data)
        if done.code < 0:
            return JobResult(False, f"killed by {signal_name(done.code)}: {last}", data)
        return JobResult(done.code == 0, f"exit {done.code}" + ("" if done.code == 0 else f": {last}"), data)

    async def _hand_off(self, slot: _Slot, r: Run, key: str, result: JobResult | None) -> list[str]:
        """`then`: one handoff per target through the outbox, as a watch's fire makes them; the id
        comes from the tick key, so a tick hands off once whatever happens."""
        defn, now = slot.defn, self.clock()
        reason = f"schedule {defn.name}: tick {iso(r.tick_at)} ({defn.timing} in {defn.zone})"
        data: dict[str, Any] = {"schedule": defn.name, "tick": iso(r.tick_at)}
        if result is not None:
            reason += f"; {'done' if result.ok else 'failed'}: {result.summary}"
            data.update(ok=result.ok, summary=result.summary, result=result.data)
        evidence = {
            "id": key,
            "subject": f"watchd.schedule.{defn.name}.tick",
            "time": iso(r.tick_at),
            "source": "watchd",
            "data": data,
        }
        window = (r.backfill_from, r.tick_at) if r.backfill_from is not None else None
        fire = Fire(
            watch=f"schedule:{defn.name}",
            version=slot.version,
            kind="schedule",
            key=None,
            logical=key,
            fired_at=now,
            reason=reason,
            targets=list(defn.schedule.then or []),
            window=window,
            evidence=[evidence],
            late_s=max(0.0, now - r.tick_at),
            trigger="schedule",
        )
        handoffs = handoffs_from_fire(fire)
        if await self.store.run(self.store.add_handoffs, handoffs, now):
            self.wake_dispatcher()
        return [h.id for h in handoffs]
