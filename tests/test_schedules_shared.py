"""Schedules in a deployment of several instances (watchd/cron/shared.py): the schedule runner of
two instances, each with its own state file and clock, on one real nats-server. A schedule that
changes instances carries on from what the deployment handled, never from one store's record."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from support.clocks import ManualClock
from support.scheduling import ECHO, Harness, ts

from watchd import cluster
from watchd.config import ClusterConfig
from watchd.cron.shared import SharedSchedules, bucket_name

Make = Callable[[str, str, str], Awaitable[Harness]]


@pytest.fixture
async def instance(tmp_path: Path, nats_client: Client) -> AsyncIterator[Make]:
    """`await instance(name, schedules, at)`: one instance's scheduler, started at `at` on its own
    clock and state file, claiming ticks in the deployment's KV as the daemon's does."""
    made: list[Harness] = []
    js = nats_client.jetstream()

    async def make(name: str, schedules: str, at: str) -> Harness:
        lease = cluster.Lease(js, ClusterConfig(), 15.0, state_dir=name, watches="w", embedded=False)
        await lease.open()
        shared = SharedSchedules(js, "watchd", lease.me.instance, lease.claim_tick)
        await shared.open()
        h = Harness(tmp_path / name, schedules, ManualClock(at))
        h.sched.shared = shared
        made.append(h)
        await h.sched.start()
        return h

    yield make
    for h in made:
        await h.sched.stop_runs("test over")
        h.close()


def ticks(h: Harness, what: str) -> list[Any]:
    return [d["tick"] for d in h.of(f".{what}")]


MINUTELY = f'[schedule.q]\ncron = "* * * * *"\n{ECHO}\n'  # missed = "skip": a tick taken for missed says so


async def test_an_instance_that_still_runs_a_schedule_moved_on_neither_runs_nor_reports_what_the_other_did(
    instance: Make, nats_client: Client
) -> None:
    a = await instance("a", MINUTELY, "2026-03-02T10:00:05")
    b = await instance("b", MINUTELY, "2026-03-02T10:00:05")
    await a.step()
    await b.step()  # catches up with a: 10:00 was run
    assert ticks(a, "started") == ["2026-03-02T10:00:00Z"] and b.events == []

    # While a shard moves, both instances may run the schedule for a moment: b misses a wake-up
    # (busy, or about to give the shard up) while a runs two ticks; b's own record still ends at 10:00.
    await a.step("2026-03-02T10:01:05")
    await a.step("2026-03-02T10:02:05")
    await b.step("2026-03-02T10:02:10")  # would skip 10:01 (70 s late) and run 10:02
    assert b.events == [], "b ran or reported ticks a handled"
    assert b.rows("q") == []
    assert ticks(a, "started") == ["2026-03-02T10:00:00Z", "2026-03-02T10:01:00Z", "2026-03-02T10:02:00Z"]

    # The next tick is run by whichever steps first, once; the other one moves on past it.
    await b.step("2026-03-02T10:03:01")
    await a.step("2026-03-02T10:03:02")
    assert ticks(b, "started") == ["2026-03-02T10:03:00Z"] and ticks(a, "started")[-1] == "2026-03-02T10:02:00Z"
    assert a.of(".skipped") == [] and b.of(".skipped") == []

    # The positions outlive any gap between two ticks (a monthly schedule's too): no TTL.
    info = await nats_client.jetstream().stream_info(f"KV_{bucket_name('watchd')}")
    assert not info.config.max_age


async def test_a_schedule_that_comes_back_to_an_instance_carries_on_from_the_other_instances_ticks(
    instance: Make,
) -> None:
    a = await instance("a", MINUTELY, "2026-03-02T10:00:05")
    b = await instance("b", MINUTELY, "2026-03-02T10:00:05")
    on_a = True
    a.sched.owns = lambda name: on_a
    b.sched.owns = lambda name: not on_a
    await a.step()
    await b.step()
    assert b.sched.next_wake() is None, "b waits for no tick of a schedule it does not run"

    on_a = False  # the shard moves to b
    for at in ("2026-03-02T10:01:05", "2026-03-02T10:02:05", "2026-03-02T10:03:05"):
        await a.step(at)
        await b.step(at)
    on_a = True  # and back: a's own record ends at 10:00
    await a.step("2026-03-02T10:04:05")
    assert ticks(a, "started") == ["2026-03-02T10:00:00Z", "2026-03-02T10:04:00Z"]
    assert ticks(b, "started") == ["2026-03-02T10:01:00Z", "2026-03-02T10:02:00Z", "2026-03-02T10:03:00Z"]
    assert a.of(".skipped") == [] and b.of(".skipped") == []
    period = next(d for d in a.of(".started") if d["tick"] == "2026-03-02T10:04:00Z")
    assert period["period_start"] == "2026-03-02T10:03:00Z"


async def test_an_every_schedule_counts_from_the_end_of_the_last_run_on_whichever_instance_ran_it(
    instance: Make,
) -> None:
    every = f'[schedule.e]\nevery = "5m"\nmissed = "coalesce"\n{ECHO}\n'
    a = await instance("a", every, "2026-03-02T10:00:00")
    b = await instance("b", every, "2026-03-02T10:00:00")
    await a.step("2026-03-02T10:07:30")  # late (a suspend): the 10:05 run ends at 10:07:30
    assert ticks(a, "started") == ["2026-03-02T10:05:00Z"]
    assert a.sched.next_wake() == ts("2026-03-02T10:12:30")

    await b.step("2026-03-02T10:07:31")  # b comes to run it: its own record knows no run
    assert b.events == []
    assert b.sched.next_wake() == ts("2026-03-02T10:12:30")
    await b.step("2026-03-02T10:12:30")
    assert ticks(b, "started") == ["2026-03-02T10:12:30Z"] and b.of(".skipped") == []
