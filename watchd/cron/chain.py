"""Schedules that run after others: `after = ["report"]` with `on = "success" | "failure" | "always"`.

When an upstream's run for a tick ends for good (done, failed, or dead after its retries), each
schedule that names it runs once every upstream it names has ended for that same tick, if they
ended as `on` asks; otherwise its row says why it did not run. While an upstream still has retries
left, the downstream's row says it is waiting for them, so a report that fails at 06:00 and
succeeds at 06:02 still sends the email, and a report that never succeeds says so on the email.
A downstream's own failure retries the downstream alone: nothing here runs an upstream.

The downstream's run has a key of its own from the tick (`run_key(..., "after")`), so a replayed
upstream that now succeeds runs a downstream that had given up, and never one that ran.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import msgspec

from watchd.cron.payload import run_payload
from watchd.cron.ticks import Run, run_key
from watchd.model import iso
from watchd.store import schedules
from watchd.store.schedules import FINAL, TickClaim, TickRow

if TYPE_CHECKING:
    from watchd.cron.runner import Scheduler, Slot

log = logging.getLogger("watchd.scheduler")


async def upstream_ended(sched: Scheduler, name: str, r: Run, key: str, state: str) -> None:
    """Schedule `name`'s run `key` for `r.tick_at` ended an attempt in `state`."""
    for down in sched.downstream_of(name):
        try:
            await _follow(sched, down, name, r, key, state)
        except Exception:  # one downstream's trouble must not stop the others or the scheduler
            log.exception("schedule %s: could not follow %s's run %s", down.defn.name, name, key)


def _latest(rows: list[TickRow], name: str, key: str) -> dict[str, TickRow]:
    """Each upstream's row for the tick: the run that just ended for its own schedule, else the
    last started run (a skipped tick that shares the instant does not count)."""
    out: dict[str, TickRow] = {}
    for row in rows:
        if row.schedule == name and row.key != key:
            continue
        if row.state != "skipped" or row.schedule not in out:
            out[row.schedule] = row
    return out


def _waiting_for(sched: Scheduler, upstream: str, row: TickRow | None, tick_at: float) -> str:
    if row is None:
        return f"waiting for {upstream}'s run for {iso(tick_at)}"
    if row.state == "retrying":
        slot = sched.slots.get(upstream)
        tries = (slot.defn.schedule.retries + 1) if slot else row.attempt + 1
        return (
            f"waiting for {upstream}'s retries: attempt {row.attempt} of {tries} failed ({row.summary}); "
            f"next attempt at {iso(row.next_attempt_at)}"
        )
    return f"waiting for {upstream}'s run ({row.state})"


def _failure(upstream: str, row: TickRow) -> str:
    if row.state == "dead":
        n = row.attempt
        return f"{upstream} failed after {n} attempt{'s' if n != 1 else ''} ({row.summary}); dead letter {row.key}"
    return f"{upstream} failed ({row.summary})"


async def _follow(sched: Scheduler, down: Slot, name: str, r: Run, key: str, state: str) -> None:
    store, now, tick_at = sched.store, sched.clock(), r.tick_at
    dname, version = down.defn.name, down.version
    ups = list(down.defn.schedule.after or ())
    latest = _latest(await store.call(schedules.rows_at, ups, tick_at), name, key)
    upstream = tuple(
        {"schedule": u, "key": latest[u].key, "outcome": latest[u].state, "summary": latest[u].summary}
        for u in ups
        if u in latest
    )
    dkey = run_key(dname, version, tick_at, "after")
    run = Run(tick_at, now - tick_at, trigger="after", key=dkey, period=r.period, upstream=upstream)
    payload = msgspec.json.encode(run_payload(run)).decode()

    def row(state_: str, reason: str | None, summary: str | None) -> TickClaim:
        return TickClaim(dkey, dname, version, tick_at, state_, reason, now, summary, None, "after", payload)

    pending = [u for u in ups if u not in latest or latest[u].state not in FINAL]
    if pending:
        why = _waiting_for(sched, pending[0], latest.get(pending[0]), tick_at)
        if await store.call(schedules.set_waiting_or_skipped, row("waiting", "upstream", why)) and state == "retrying":
            log.info("schedule %s: %s", dname, why)
            await sched.emit(f"watchd.schedule.{dname}.waiting", _event(dname, dkey, tick_at, why, upstream))
        return
    ok = {u: latest[u].state == "done" for u in ups}
    on = down.defn.schedule.on
    go = all(ok.values()) if on == "success" else not all(ok.values()) if on == "failure" else True
    if go:
        if await store.call(schedules.claim_after, row("started", None, None)):
            log.info("schedule %s: runs after %s (%s)", dname, ", ".join(ups), iso(tick_at))
            sched.start_runs(down, [run])
        return
    if on == "success":
        detail = "; ".join(_failure(u, latest[u]) for u in ups if not ok[u])
    else:
        detail = f"{', '.join(ups)} succeeded"
    why = f"not run (on = {on}): {detail}"
    if await store.call(schedules.set_waiting_or_skipped, row("skipped", "upstream", why)):
        log.info("schedule %s: %s", dname, why)
        data = {**_event(dname, dkey, tick_at, why, upstream), "reason": "upstream", "count": 1}
        await sched.emit(f"watchd.schedule.{dname}.skipped", data)


def _event(name: str, key: str, tick_at: float, detail: str, upstream: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    return {"schedule": name, "tick": iso(tick_at), "key": key, "detail": detail, "upstream": list(upstream)}
