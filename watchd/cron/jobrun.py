"""A scheduled run's work: a built-in job, a command (with the run's payload in its environment),
and the `then` handoffs through the outbox. Called by the runner for every trigger alike."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any

import msgspec

from watchd.cron.payload import payload_of
from watchd.cron.proc import run_in_group, signal_name
from watchd.cron.schedule import format_duration
from watchd.cron.ticks import Definition, Run
from watchd.dispatch import handoffs_from_fire
from watchd.engine import Fire
from watchd.errors import WatchdError
from watchd.jobs import JobContext, JobResult, builtin
from watchd.model import iso

if TYPE_CHECKING:
    from watchd.cron.runner import Scheduler

log = logging.getLogger("watchd.scheduler")


async def run_job(sched: Scheduler, defn: Definition, version: int, r: Run, key: str) -> JobResult:
    """A run's work: the built-in job, the command, then the `then` handoffs."""
    s = defn.schedule
    result: JobResult | None = None
    if s.job:
        result = await _builtin(sched, s.job, defn)
    elif s.run:
        result = await _command(sched, defn, r, key)
    # A failed attempt that will be tried again hands off nothing: the handoff says how the run ended.
    if s.then and (result is None or result.ok or r.attempt > s.retries):
        ids = await _hand_off(sched, defn, version, r, key, result)
        if result is None:
            result = JobResult(True, f"handed off to {', '.join(s.then)}", {"handoffs": ids})
        else:
            result.data.setdefault("handoffs", ids)
    assert result is not None  # config.load insists on job, run or then
    return result


async def _builtin(sched: Scheduler, name: str, defn: Definition) -> JobResult:
    try:
        job = builtin(name)
    except (KeyError, ImportError):
        return JobResult(False, f"job {name} is not available in this watchd")
    ctx = JobContext(
        name=name,
        loaded=sched.loaded,
        store=sched.store,
        clock=sched.clock,
        emit=sched.emit,
        timeout_s=defn.timeout_s,
        nc=sched.nc,
        js=sched.js,
        targets=sched.targets,
        wake_dispatcher=sched.wake_dispatcher,
        in_daemon=sched.in_daemon,
        http=sched.http,
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


async def _command(sched: Scheduler, defn: Definition, r: Run, key: str) -> JobResult:
    argv = list(defn.schedule.run or [])
    if "/" in argv[0] and not os.path.isabs(argv[0]):  # relative to the config file (SPEC 3)
        argv[0] = str(sched.loaded.base_dir / argv[0])
    payload = payload_of(r)
    env = {
        **os.environ,
        "WATCHD_SCHEDULE": defn.name,
        "WATCHD_TICK": iso(r.tick_at) or "",
        "WATCHD_TICK_KEY": key,
        "WATCHD_TRIGGER": r.trigger,
        "WATCHD_ATTEMPT": str(r.attempt),
        "WATCHD_PERIOD_START": payload.get("period_start") or "",
        "WATCHD_PERIOD_END": payload.get("period_end") or "",
        "WATCHD_UPSTREAM_KEY": ",".join(u["key"] for u in r.upstream),
        "WATCHD_PAYLOAD": msgspec.json.encode(
            {"schedule": defn.name, "tick": iso(r.tick_at), "key": key, **payload}
        ).decode(),
    }
    started = sched.clock()
    try:
        done = await run_in_group(argv, env=env, timeout_s=defn.timeout_s)
    except FileNotFoundError:
        return JobResult(False, f"command not found: {argv[0]}", {"exit_code": 127})
    except PermissionError:
        return JobResult(False, f"{argv[0]} is not executable", {"exit_code": 126})
    except OSError as exc:
        return JobResult(False, f"cannot start {argv[0]}: {exc.strerror}", {"exit_code": 127})
    data = {"exit_code": done.code, "duration_s": round(sched.clock() - started, 3), "output_tail": done.tail}
    last = done.tail.splitlines()[-1] if done.tail else "no output"
    if done.code is None:
        return JobResult(False, f"timed out after {format_duration(defn.timeout_s)}: {last}", data)
    if done.code < 0:
        return JobResult(False, f"killed by {signal_name(done.code)}: {last}", data)
    return JobResult(done.code == 0, f"exit {done.code}" + ("" if done.code == 0 else f": {last}"), data)


async def _hand_off(
    sched: Scheduler, defn: Definition, version: int, r: Run, key: str, result: JobResult | None
) -> list[str]:
    """`then`: one handoff per target through the outbox, as a watch's fire makes them; the id
    comes from the tick key, so a tick hands off once whatever happens."""
    now = sched.clock()
    reason = f"schedule {defn.name}: tick {iso(r.tick_at)} ({defn.timing} in {defn.zone})"
    data: dict[str, Any] = {"schedule": defn.name, "tick": iso(r.tick_at), "key": key, **payload_of(r)}
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
        version=version,
        kind="schedule",
        key=None,
        # With retries, a run that died and was replayed may end well after all: that is news too.
        logical=f"{key}:{'done' if result is None or result.ok else 'failed'}" if defn.schedule.retries else key,
        fired_at=now,
        reason=reason,
        targets=list(defn.schedule.then or []),
        window=window,
        evidence=[evidence],
        late_s=max(0.0, now - r.tick_at),
        trigger="manual" if r.trigger == "manual" else "schedule",
    )
    handoffs = handoffs_from_fire(fire)
    if await sched.store.run(sched.store.add_handoffs, handoffs, now):
        sched.wake_dispatcher()
    return [h.id for h in handoffs]
