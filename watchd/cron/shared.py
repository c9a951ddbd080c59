"""Schedules in a deployment of several instances (SPEC section 9): which ticks the deployment
has handled, recorded in NATS, so that a schedule can change instances without a tick run or
reported twice.

Each schedule belongs to a shard (watchd/shards.py, `schedule_shards`) and is run by the instance
that holds it; the shard moves when an instance joins, leaves or dies. The instance it moves to has
its own store, whose record of the schedule ends where it last ran it: planned from there, the ticks
another instance ran since would look missed (a `skipped` event each, or a catch-up run). So:

- Each schedule has a position in the KV bucket `watchd-schedules-<cluster>`: the last tick the
  deployment handled (run or skipped) and the end of its last run (`every` counts from it). The
  bucket has no TTL: a monthly schedule's position outlives any gap. An instance that comes to run
  a schedule reads it first (`catch_up`) and plans from there.
- To handle the ticks it planned, an instance moves the position past them by compare-and-set on
  its revision (`claim`): that claims them all, runs and skips alike, so only the claimant reports
  a skip. One that finds the position moved drops the ticks up to where it now is: another
  instance handled them (while a shard moves, both may plan the same ticks for a moment).
- Each run is also claimed on its own tick (`cluster.Lease.claim_tick`, KV create), as with one
  instance that takes over from another.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext

from watchd import cluster
from watchd.cron.ticks import Due, State
from watchd.errors import NatsUnavailable, WatchdError

log = logging.getLogger("watchd.scheduler")

POSITION_PREFIX = "schedule."
SWAP_TRIES = 5  # compare-and-set rounds before a step gives up (and is tried again)


class Position(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What the deployment handled of one schedule, and which instance recorded it last."""

    last_tick: float | None = None
    completed_at: float | None = None
    instance: str = ""


def bucket_name(cluster_name: str) -> str:
    return f"watchd-schedules-{cluster_name}"


def _later(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _after(due: Due, floor: float | None) -> Due:
    """The ticks of `due` after `floor` (those up to it were handled elsewhere)."""
    if floor is None:
        return due
    return Due([r for r in due.runs if r.tick_at > floor], [k for k in due.skips if k.tick_at > floor])


class SharedSchedules:
    """The schedules' positions in the deployment's KV, as this instance last read or wrote them."""

    def __init__(
        self,
        js: JetStreamContext,
        cluster_name: str,
        instance: str,
        claim_tick: Callable[[str, float], Awaitable[bool]],
        *,
        replicas: int | None = None,
    ) -> None:
        self.js = js
        self.bucket = bucket_name(cluster_name)
        self.instance = instance
        self.claim_tick = claim_tick
        self.replicas = replicas
        self._kv: Any = None
        self._known: dict[str, tuple[Position, int]] = {}  # schedule -> (position, its revision)

    async def open(self) -> None:
        try:
            self._kv = await cluster.open_bucket(self.js, self.bucket, 0.0, self.replicas)
        except nats.js.errors.APIError as exc:
            raise NatsUnavailable(
                f"cannot set up the schedules bucket {self.bucket}: {exc.description}",
                hint="the NATS user needs JetStream rights for KV buckets (streams KV_watchd-*)",
            ) from None

    async def catch_up(self, name: str, state: State) -> State:
        """`state` (this instance's record of the schedule) moved on to what the deployment handled."""
        position = await self._read(name)
        if position is None:
            return state
        last = _later(state.last_tick, position.last_tick)
        return replace(state, last_tick=last, completed_at=_later(state.completed_at, position.completed_at))

    async def claim(self, name: str, due: Due) -> Due:
        """The ticks of `due` this instance handles: the position moved past them all (without
        those another instance handled meanwhile), then each run claimed on its tick."""
        for _ in range(SWAP_TRIES):
            known, revision = self._known.get(name, (Position(), 0))
            due = _after(due, known.last_tick)
            ticks = [r.tick_at for r in due.runs] + [k.tick_at for k in due.skips]
            if not ticks:
                return due
            moved = msgspec.structs.replace(known, last_tick=max(ticks), instance=self.instance)
            if await self._swap(name, moved, revision):
                break
        else:
            raise WatchdError(f"schedule {name}: its position in {self.bucket} kept changing under this instance")
        if due.runs:
            mine = await asyncio.gather(*(self.claim_tick(name, r.tick_at) for r in due.runs))
            due = Due([r for r, ok in zip(due.runs, mine, strict=True) if ok], due.skips)
        return due

    async def record_completion(self, name: str, completed_at: float) -> None:
        """A run of the schedule ended here: an `every` schedule counts its next tick from it, on
        whichever instance runs it next. A failure is logged: the next run records it again."""
        try:
            for _ in range(SWAP_TRIES):
                known, revision = self._known.get(name, (Position(), 0))
                if known.completed_at is not None and known.completed_at >= completed_at:
                    return
                moved = msgspec.structs.replace(known, completed_at=completed_at, instance=self.instance)
                if await self._swap(name, moved, revision):
                    return
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
            log.warning("schedule %s: the end of its run was not recorded in %s: %s", name, self.bucket, exc)

    async def _read(self, name: str) -> Position | None:
        try:
            entry = await self._kv.get(POSITION_PREFIX + name)
        except nats.js.errors.KeyNotFoundError:
            self._known.pop(name, None)
            return None
        try:
            position = msgspec.json.decode(entry.value, type=Position)
        except (msgspec.ValidationError, msgspec.DecodeError):
            position = Position()  # unreadable: overwritten by the next claim
        self._known[name] = (position, int(entry.revision or 0))
        return position

    async def _swap(self, name: str, position: Position, revision: int) -> bool:
        """Write `position` if the key is still at `revision` (0: absent); else read it again: False."""
        key, value = POSITION_PREFIX + name, msgspec.json.encode(position)
        try:
            if revision:
                revision = await self._kv.update(key, value, last=revision)
            else:
                revision = await self._kv.create(key, value)
        except nats.js.errors.KeyWrongLastSequenceError:
            await self._read(name)
            return False
        self._known[name] = (position, revision)
        return True
