"""More than one instance on one NATS (SPEC section 9): never twice, never silently split.

A real nats-server the test starts stands for the deployment's NATS; watchd instances are real
daemons with their own state dirs on it, in the test's event loop."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client
from nats.js.api import ConsumerConfig, ConsumerInfo, SequenceInfo
from support import project
from support.inprocess import InProcessDaemon
from support.processes import DaemonProc
from support.waiting import until

from watchd import bus, cluster, shards
from watchd.bus import EmbeddedNats
from watchd.config import ClusterConfig
from watchd.errors import WatchdError
from watchd.model import make_event
from watchd.upkeep import Upkeep

WATCHES = {
    "jobs.toml": """
[[watch]]
id = "jobs"
kind = "match"
on = { subject = "job.*" }
then = ["notify.console"]
"""
}


def handed_off(*instances: project.Project) -> list[str]:
    """The event id behind every handoff of watch `jobs` delivered, over all instances (handoffs go
    through NATS: the instance that decided one need not be the one that delivers it)."""
    return [h["evidence"][0]["id"] for d in instances for h in d.handoffs("jobs") if h["state"] == "delivered"]


def decided(d: project.Project) -> list[str]:
    """The event id behind every handoff of watch `jobs` this instance decided (not taken from the queue)."""
    rows = d.query(
        "SELECT evidence FROM handoffs h WHERE watch = 'jobs' AND NOT EXISTS (SELECT 1 FROM transitions t "
        "WHERE t.handoff_id = h.id AND t.detail LIKE 'from the deployment''s queue%')"
    )
    return sorted(json.loads(evidence)[0]["id"] for (evidence,) in rows)


async def durable_created(url: str) -> Any:
    nc = await bus.connect(url, name="watchd-test")
    try:
        info = await nc.jetstream().consumer_info(bus.EVENTS_STREAM, "watchd-engine")
        return info.created
    finally:
        await nc.close()


async def test_a_restart_never_recreates_the_durable_another_instance_uses(
    nats_server: EmbeddedNats, daemon_factory: Callable[..., InProcessDaemon]
) -> None:
    a = daemon_factory(WATCHES, nats_url=nats_server.url)
    b = daemon_factory(WATCHES, nats_url=nats_server.url)
    first = [make_event("job.run", id=f"ev-{n:02d}") for n in range(15)]

    # b decides five events and stops; a (a fresh store) then decides five more and keeps running.
    await b.start()
    await b.publish(*first[:5])
    await until(lambda: b.last_seq() == 5, what="b to commit the first five")
    await b.stop()
    await a.start()
    await a.publish(*first[5:10])
    await until(lambda: len(handed_off(a, b)) == 10, what="a to hand off the next five")
    created = await durable_created(nats_server.url)

    # b comes back behind the durable: it must neither hand off what a decided nor pull the durable
    # from under a.
    await b.start()
    await a.publish(*first[10:])
    await until(lambda: len(handed_off(a, b)) >= 15, what="the last five handed off")
    await until(lambda: a.last_seq() == 15 or b.last_seq() == 15, what="the last commit")
    assert sorted(handed_off(a, b)) == [e.id for e in first], "an event was handed off twice or never"
    assert await durable_created(nats_server.url) == created, "the shared durable was recreated"
    assert a.running.failure is None and b.running.failure is None


# ---- one deployment: one instance decides, the others stand by ----------------------------------

FAST = '[cluster]\ntakeover = "2s"\n'


async def test_a_second_instance_stands_by_and_nothing_is_handed_off_twice(
    nats_server: EmbeddedNats, daemon_factory: Callable[..., InProcessDaemon]
) -> None:
    a = await daemon_factory(WATCHES, nats_url=nats_server.url, extra_config=FAST).start()
    b = await daemon_factory(WATCHES, nats_url=nats_server.url, extra_config=FAST).start()
    assert a.running.active and not b.running.active
    line = await until(
        lambda: [ln for ln in b.logged().splitlines() if "standing by: cluster" in ln], what="b's standby line"
    )
    assert f"pid {os.getpid()}, state_dir {a.state_dir}" in line[0] and "since 20" in line[0], line

    events = [make_event("job.run", id=f"ev-{n:03d}") for n in range(40)]
    await a.publish(*events)
    await until(lambda: len(handed_off(a, b)) >= 40, what="40 handoffs")
    await asyncio.sleep(0.3)  # anything b would decide, it would have by now
    assert sorted(handed_off(a, b)) == [e.id for e in events]
    assert not b.handoffs("jobs") and b.last_seq() == 0

    # status on either instance names the holder and both members.
    report = json.loads((await b.cli("status", "--json")).stdout)["daemon"]["cluster"]
    assert report["role"] == "standby" and report["lease"]["state_dir"] == str(a.state_dir)
    assert report["lease"]["since"] is not None
    await until(lambda: len(b.running.lease.members) == 2 if b.running.lease else False, what="b to see both members")
    report = json.loads((await b.cli("status", "--json")).stdout)["daemon"]["cluster"]
    assert {m["state_dir"] for m in report["members"]} == {str(a.state_dir), str(b.state_dir)}
    text = (await a.cli("status")).stdout
    assert "cluster watchd: this instance holds the lease" in text, text

    # a stops cleanly: b takes over at once, catches up on what a decided (for its state only) and
    # hands off what comes next, once.
    await a.stop()
    await until(lambda: b.running.active, timeout_s=5, what="b to take over")
    more = [make_event("job.run", id=f"more-{n:03d}") for n in range(10)]
    await b.publish(*more)
    await until(lambda: len(handed_off(a, b)) >= 50, what="50 handoffs")
    await until(lambda: b.last_seq() >= 50, what="b to commit")
    assert sorted(handed_off(a, b)) == sorted(e.id for e in events + more)
    assert decided(b) == [e.id for e in more]


async def test_an_instance_with_other_watches_refuses_to_join(
    nats_server: EmbeddedNats, daemon_factory: Callable[..., InProcessDaemon]
) -> None:
    a = await daemon_factory(WATCHES, nats_url=nats_server.url, extra_config=FAST).start()
    other = {"jobs.toml": WATCHES["jobs.toml"].replace('"job.*"', '"job.>"')}
    b = daemon_factory(other, nats_url=nats_server.url, extra_config=FAST)
    with pytest.raises(WatchdError) as refused:
        await b.start()
    assert f"cluster 'watchd': watchd on {socket.gethostname()} (pid {os.getpid()}, state_dir {a.state_dir})" in (
        refused.value.message
    )
    assert "other watch definitions" in refused.value.message
    # Another cluster name is another deployment: it joins (and decides on its own).
    c = daemon_factory(other, nats_url=nats_server.url, extra_config='[cluster]\nname = "other"\ntakeover = "2s"\n')
    assert (await c.start()).running.active


async def test_an_instance_pointed_at_an_embedded_nats_refuses_to_join(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    a = await daemon_factory(WATCHES).start()
    assert a.running.active and a.running.lease is not None and a.running.lease.embedded
    b = daemon_factory(WATCHES, nats_url=a.nats_url)
    with pytest.raises(WatchdError) as refused:
        await b.start()
    message = refused.value.message
    assert "its NATS is the embedded single-node server of watchd on" in message
    assert f"state_dir {a.state_dir}" in message and "cannot be shared" in message
    assert "[nats] url" in (refused.value.hint or "")


# ---- takeover: the holder dies ---------------------------------------------------------------------

TAKEOVER_S = 3.0


def role(d: DaemonProc) -> str | None:
    h = d.health()
    return h["cluster"]["role"] if h and h.get("cluster") else None


async def test_kill9_of_the_holder_the_standby_takes_over_within_takeover(
    nats_server: EmbeddedNats, process_factory: Callable[..., DaemonProc]
) -> None:
    cfg = f'[cluster]\ntakeover = "{TAKEOVER_S:g}s"\n'
    a = process_factory(WATCHES, nats_url=nats_server.url, extra_config=cfg)
    b = process_factory(WATCHES, nats_url=nats_server.url, extra_config=cfg)
    await asyncio.to_thread(a.start)
    await asyncio.to_thread(b.start)
    assert role(a) == "holder" and role(b) == "standby"

    first = [make_event("job.run", id=f"a-{n:02d}") for n in range(20)]
    await project.publish(nats_server.url, *first)
    await until(lambda: a.last_seq() == 20 and len(a.handoffs("jobs")) == 20, what="a to decide the first 20")
    await asyncio.sleep(0.2)  # its ack follows the commit
    await asyncio.to_thread(a.kill9)
    killed = time.monotonic()
    await until(lambda: role(b) == "holder", timeout_s=TAKEOVER_S * 3, step_s=0.05, what="b to take over")
    took_s = time.monotonic() - killed
    assert took_s <= TAKEOVER_S + 1.0, f"took over after {took_s:.1f}s"  # + the server's expiry sweep
    assert "took the lease of cluster 'watchd'" in b.stderr()

    second = [make_event("job.run", id=f"b-{n:02d}") for n in range(20)]
    await project.publish(nats_server.url, *second)
    await until(lambda: len(decided(b)) >= 20 and b.last_seq() == 40, what="b to decide the next 20")
    await until(lambda: len(handed_off(a, b)) >= 40, what="the 40 delivered")
    assert sorted(handed_off(a, b)) == sorted(e.id for e in first + second), "lost or doubled"
    assert decided(b) == [e.id for e in second]


# ---- schedules: a tick runs once cluster-wide ---------------------------------------------------------


async def ticks_started(url: str, schedule: str) -> list[str]:
    """The `tick` of every watchd.schedule.<schedule>.started event on the stream, in order."""
    nc = await bus.connect(url, name="watchd-test")
    try:
        js = nc.jetstream()
        last = (await js.stream_info(bus.EVENTS_STREAM)).state.last_seq
        subject = f"watchd.events.watchd.schedule.{schedule}.started"
        return [
            json.loads(m.data)["data"]["tick"]
            async for batch in cluster.read_range(js, 0, last)
            for m in batch
            if m.subject == subject
        ]
    finally:
        await nc.close()


async def test_a_cron_tick_runs_once_across_instances_and_a_takeover(
    nats_server: EmbeddedNats, daemon_factory: Callable[..., InProcessDaemon]
) -> None:
    # missed = "replay": an instance that takes over runs every tick since it last ran one, unless claimed.
    cfg = FAST + '[schedule.minutely]\ncron = "* * * * *"\nmissed = "replay"\nthen = ["notify.console"]\n'
    a = await daemon_factory(WATCHES, nats_url=nats_server.url, extra_config=cfg).start()
    b = await daemon_factory(WATCHES, nats_url=nats_server.url, extra_config=cfg).start()

    async def minutes(n: int) -> None:
        for _ in range(n):  # both machines' clocks move together
            await asyncio.gather(a.advance(60), b.advance(60))
            await asyncio.sleep(0.2)

    # a runs ticks, then b, then a again: a's own record ends where b began, so on its return it
    # would run b's ticks again (missed = "replay") if a tick were not claimed cluster-wide.
    await minutes(2)
    await a.stop()
    await until(lambda: b.running.active, timeout_s=5, what="b to take over")
    await minutes(2)
    await a.start()
    await b.stop()
    await until(lambda: a.running.active, timeout_s=5, what="a to take over again")
    await minutes(2)
    ticks = await until(lambda: _at_least(ticks_started(nats_server.url, "minutely"), 6), what="six ticks")
    assert len(ticks) == len(set(ticks)), f"a tick ran twice: {ticks}"


async def _at_least(ticks: Any, n: int) -> list[str] | None:
    found: list[str] = await ticks
    return found if len(found) >= n else None


# ---- timers: state a takeover needs comes from NATS ----------------------------------------------------

ABSENT = {
    "hosts.toml": """
[[watch]]
id = "hosts"
kind = "absent"
expect = { subject = "hb", key = "data.host" }
for = "30s"
then = ["notify.console"]

[[watch]]
id = "hosts-slow"
kind = "absent"
expect = { subject = "hb", key = "data.host" }
for = "120s"
then = ["notify.console"]
"""
}


async def test_per_key_timers_fire_once_across_a_takeover(
    nats_server: EmbeddedNats, daemon_factory: Callable[..., InProcessDaemon]
) -> None:
    a = await daemon_factory(ABSENT, nats_url=nats_server.url, extra_config=FAST).start()
    b = await daemon_factory(ABSENT, nats_url=nats_server.url, extra_config=FAST).start()

    async def advance(seconds: float) -> None:  # both machines' clocks move together
        await asyncio.gather(a.advance(seconds), b.advance(seconds))

    def fired(*instances: InProcessDaemon) -> list[tuple[str, str | None]]:
        return sorted((h["watch"], h["key"]) for d in instances for h in d.handoffs())

    # One heartbeat arms a timer per watch on a: the 30 s one fires on a, the 120 s one is due only
    # after a is gone.
    await a.publish(make_event("hb", {"host": "h1"}, id="hb-1"))
    await until(lambda: a.last_seq() == 1, what="a to commit the heartbeat")
    await advance(35)
    await until(lambda: fired(a) == [("hosts", "h1")], what="the 30 s silence to fire on a")
    await asyncio.sleep(0.3)

    await a.stop()
    await until(lambda: b.running.active, timeout_s=5, what="b to take over")
    await b.advance(1)
    await asyncio.sleep(0.5)
    assert fired(b) == [], "a timer a already fired fired again on b"
    await advance(90)
    await until(lambda: fired(b) == [("hosts-slow", "h1")], what="the 120 s silence to fire on b")
    await asyncio.sleep(0.3)
    assert fired(a, b) == [("hosts", "h1"), ("hosts-slow", "h1")]


async def test_a_holder_that_finds_its_lease_taken_stops_deciding(
    nats_server: EmbeddedNats, daemon_factory: Callable[..., InProcessDaemon]
) -> None:
    a = await daemon_factory(WATCHES, nats_url=nats_server.url, extra_config=FAST).start()
    nc = await bus.connect(nats_server.url, name="watchd-test")
    try:  # another instance's record where a's lease was (as after a split a could not see)
        kv = await nc.jetstream().key_value(cluster.bucket_names("watchd")[0])
        other = cluster.Member(instance="other", host="elsewhere", pid=1, state_dir="/srv", started=0.0, watches="x")
        await kv.put(cluster.LEASE_KEY, msgspec.json.encode(other))
    finally:
        await nc.close()
    await until(lambda: a.running.stop.is_set(), timeout_s=5, what="a to stop")
    failure = a.running.failure
    assert failure is not None and "lost the lease of cluster 'watchd' to watchd on elsewhere (pid 1" in failure.message
    assert a.running.lease is not None and not a.running.lease.held()


async def _nothing() -> None:
    return None


async def test_a_renewal_that_timed_out_but_reached_nats_keeps_the_lease(
    nats_server: EmbeddedNats, nats_client: Client
) -> None:
    """NATS stalls (frozen here with SIGSTOP): a renewal times out at the holder, yet the server
    applies it once it runs again. The holder's next renewal then names an old revision; it must
    see that the lease is still its own and renew, not report it lost to itself and stop. The
    lease loop counts the stall like any loop's failure."""
    js = nats_client.jetstream(timeout=0.5)
    lease = cluster.Lease(js, ClusterConfig(name="stall"), 6.0, state_dir="/s", watches="w", embedded=False)
    await lease.open()
    assert await lease.join()
    stop = asyncio.Event()
    upkeep = Upkeep(stop)
    lost: list[str] = []
    task = asyncio.create_task(lease.keep(upkeep, _nothing, lost.append))
    await until(lambda: "cluster-lease" in upkeep.stats and upkeep.stats["cluster-lease"].runs >= 2)
    loop = upkeep.stats["cluster-lease"]
    assert nats_server.pid is not None
    os.kill(nats_server.pid, signal.SIGSTOP)
    try:
        await until(lambda: loop.failing, timeout_s=10, what="a renewal to time out")
        await asyncio.sleep(1.0)  # more renewals time out, each queued at the frozen server
    finally:
        os.kill(nats_server.pid, signal.SIGCONT)
    await until(lambda: not loop.failing or lost, timeout_s=10, what="the next renewal")
    assert lost == [] and lease.held(), lost
    assert loop.failures >= 1 and loop.last_error == "TimeoutError: nats: timeout"
    stop.set()
    await task


async def test_a_take_that_timed_out_but_reached_nats_is_the_lease_taken(
    nats_server: EmbeddedNats, nats_client: Client
) -> None:
    """The lease is free; the instance's create times out (NATS stalls) yet is applied once NATS
    runs again. Its next try must find the lease its own, not stand by behind itself until it lapses."""
    js = nats_client.jetstream(timeout=0.5)
    lease = cluster.Lease(js, ClusterConfig(name="take"), 6.0, state_dir="/s", watches="w", embedded=False)
    await lease.open()
    assert nats_server.pid is not None
    os.kill(nats_server.pid, signal.SIGSTOP)
    try:
        with pytest.raises(TimeoutError):
            await lease.try_take()
    finally:
        os.kill(nats_server.pid, signal.SIGCONT)
    await nats_client.flush()  # the server has read (and applied) what it was sent while frozen
    assert await lease.try_take(), lease.holder
    assert lease.held() and lease.holder is not None and lease.holder.instance == lease.me.instance
    assert await lease.renew()


async def test_a_takeover_whose_catch_up_outlasts_the_ttl_keeps_the_lease(
    nats_server: EmbeddedNats, nats_client: Client
) -> None:
    """Taking the lease is followed by the taker's catch-up on the stream (replay, bind; right after
    a NATS node's loss, requests that wait for new stream leaders), in the lease loop's own round.
    Here it takes three times the TTL: the lease must be renewed meanwhile, not lapse on the server
    and be reported lost once the catch-up ends (the daemon would stop, and with it the deployment's
    only holder)."""
    takeover_s = 2.0
    lease = cluster.Lease(
        nats_client.jetstream(), ClusterConfig(name="slow"), takeover_s, state_dir="/s", watches="w", embedded=False
    )
    await lease.open()
    stop = asyncio.Event()
    upkeep = Upkeep(stop)
    lost: list[str] = []
    caught_up = asyncio.Event()

    async def slow_catch_up() -> None:
        await asyncio.sleep(3 * lease.ttl_s)
        caught_up.set()

    task = asyncio.create_task(lease.keep(upkeep, slow_catch_up, lost.append))
    try:
        await asyncio.wait_for(caught_up.wait(), timeout=30)
        runs = upkeep.stats["cluster-lease"].runs
        await until(lambda: upkeep.stats["cluster-lease"].runs >= runs + 2 or lost, what="two renewals after it")
        assert lost == [] and lease.held(), lost
    finally:
        stop.set()
        await task


async def test_a_takeover_that_fails_is_run_again_while_the_lease_is_held(
    nats_server: EmbeddedNats, nats_client: Client
) -> None:
    """The taker's catch-up fails (right after a NATS node's loss a request times out while streams
    elect leaders): the lease is taken, so no other instance will; the lease loop must run the
    catch-up again, not go on renewing a lease for an instance that decides nothing."""
    lease = cluster.Lease(
        nats_client.jetstream(), ClusterConfig(name="retry"), 2.0, state_dir="/s", watches="w", embedded=False
    )
    await lease.open()
    stop = asyncio.Event()
    upkeep = Upkeep(stop)
    lost: list[str] = []
    tries: list[bool] = []

    async def catch_up() -> None:
        tries.append(lease.held())
        if len(tries) == 1:
            raise TimeoutError("nats: timeout")

    task = asyncio.create_task(lease.keep(upkeep, catch_up, lost.append))
    try:
        await until(lambda: len(tries) >= 2 or lost, timeout_s=10, what="the catch-up run again")
        await until(lambda: upkeep.stats["cluster-lease"].runs >= 3, what="renewals after it")
        assert tries == [True, True] and lost == [] and lease.held(), (tries, lost)
        assert upkeep.stats["cluster-lease"].failures >= 1  # the failed catch-up, counted
    finally:
        stop.set()
        await task


async def test_a_position_recorded_under_another_count_of_shards_is_not_read(nats_client: Client) -> None:
    """Shard 0 keeps its names whatever the count of shards: its position from a layout with other
    watches (and another filter) must not tell a holder of the new layout where to start."""
    js = nats_client.jetstream()
    old = cluster.Lease(js, ClusterConfig(name="layouts"), 6.0, state_dir="/s", watches="w", embedded=False)
    await old.open()
    assert await old.join()
    await old.record_position(40, 1000.0)
    assert await old.read_position() == cluster.Position(seq=40, clock=1000.0, instance=old.me.instance, shards=1)
    await old.record_position(30, 900.0)  # older than what is recorded (a renewal's stale read): not written
    assert (await old.read_position() or cluster.Position(seq=0, clock=0, instance="")).seq == 40
    await old.leave()

    new = cluster.Lease(
        js,
        ClusterConfig(name="layouts", shards=3),
        6.0,
        state_dir="/s",
        watches="w",
        embedded=False,
        names=shards.ShardNames(0, 3),
    )
    await new.open()
    assert await new.read_position() is None


def test_a_catch_up_replays_up_to_the_recorded_position_and_decides_after_it() -> None:
    def info(floor: int, delivered: int) -> ConsumerInfo:
        return ConsumerInfo(
            name="watchd-engine",
            stream_name="EVENTS",
            config=ConsumerConfig(),
            created=datetime.datetime.now(datetime.UTC),
            ack_floor=SequenceInfo(0, floor),
            delivered=SequenceInfo(0, delivered),
        )

    # The last holder decided and queued up to 15, acknowledged up to 10, was delivered up to 20.
    assert cluster.plan_catch_up(0, info(10, 20), recorded=15) == cluster.CatchUp(0, 15, 20)
    assert cluster.plan_catch_up(0, info(10, 20)) == cluster.CatchUp(0, 10, 20)  # none recorded
    # A position past what this durable delivered (a holder that rebuilt the shard after a change
    # of shards read the stream itself): replayed up to there all the same.
    assert cluster.plan_catch_up(0, info(10, 20), recorded=30) == cluster.CatchUp(0, 30, 30)
    assert cluster.plan_catch_up(18, info(10, 20), recorded=15) == cluster.CatchUp(18, 18, 20)
