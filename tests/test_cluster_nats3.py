"""watchd on a real 3-node NATS cluster (SPEC section 9): nats-server processes on loopback ports,
routed to each other, clustered JetStream with every stream and bucket at three replicas; two watchd
instances on it, a webhook receiver on loopback recording every delivery it accepted."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from support import project
from support.fakes import FakeWebhook
from support.inprocess import InProcessDaemon
from support.natscluster import LeafNode, NatsCluster
from support.processes import DaemonProc
from support.waiting import until

from watchd import bus, cluster, shards
from watchd.errors import WatchdError
from watchd.model import Event, make_event

WATCHES = {
    "jobs.toml": """
[[watch]]
id = "jobs"
kind = "match"
on = { subject = "job.*" }
then = ["notify.hook"]
"""
}


@pytest.fixture
async def nats3(tmp_path: Path) -> AsyncIterator[NatsCluster]:
    nodes = NatsCluster(tmp_path / "nats")
    try:
        yield await nodes.start()
    finally:
        nodes.stop()


async def publish_stored(url: str, events: list[Event]) -> None:
    """As a careful source does: each event re-sent (same id, stored once) until the cluster stores it."""
    nc = await bus.connect(url, name="watchd-test-source")
    try:
        js = nc.jetstream()
        for event in events:
            for _ in range(100):
                try:
                    await bus.publish_event(js, event, timeout_s=2)
                    break
                except WatchdError:  # no stream leader while the cluster elects one
                    await asyncio.sleep(0.2)
            else:
                raise AssertionError(f"event {event.id} was never stored")
    finally:
        await nc.close()


def delivered_events(hook: FakeWebhook) -> list[str]:
    """The event behind every delivery the receiver accepted, duplicates included."""
    return sorted(d["evidence"][0]["id"] for d in hook.deliveries)


async def test_two_instances_on_a_three_node_cluster_deliver_each_fire_once_through_the_loss_of_a_node(
    nats3: NatsCluster, daemon_factory: Callable[..., InProcessDaemon]
) -> None:
    async with FakeWebhook() as hook:
        cfg = f'[cluster]\ntakeover = "6s"\nreplicas = 3\n[notify.hook]\ntype = "webhook"\nurl = "{hook.hook_url}"\n'
        a = await daemon_factory(WATCHES, nats_url=nats3.url, extra_config=cfg).start()
        b = await daemon_factory(WATCHES, nats_url=nats3.url, extra_config=cfg).start()
        assert a.running.active and not b.running.active

        nc = await bus.connect(nats3.url, name="watchd-test")
        try:
            js = nc.jetstream()
            for stream in (bus.EVENTS_STREAM, bus.HANDOFFS_STREAM, f"KV_{cluster.bucket_names('watchd')[0]}"):
                assert (await js.stream_info(stream)).config.num_replicas == 3, stream
        finally:
            await nc.close()

        first = [make_event("job.run", id=f"first-{n:03d}") for n in range(30)]
        await publish_stored(nats3.url, first)
        await until(lambda: len(hook.deliveries) >= 30, what="the first 30 delivered")
        # The node dies once those deliveries are settled: a delivery whose ack the dead node took
        # with it is made again by the next holder (the duplicate window README states), which is
        # not what this test is about.
        await until(lambda: project.deployment_settled(nats3.url), step_s=0.1, what="the first 30 acknowledged")

        # The node the deciding instance is connected to dies mid-stream: its clients move to the
        # others, the streams elect new leaders, and nothing is lost or handed off twice.
        assert a.running.nc is not None
        dead = nats3.node_of(a.running.nc.connected_url)
        nats3.kill9(dead)
        second = [make_event("job.run", id=f"second-{n:03d}") for n in range(30)]
        await publish_stored(nats3.url, second)
        await until(lambda: len(hook.deliveries) >= 60, timeout_s=60, what="the second 30 delivered")
        await asyncio.sleep(1.0)  # a duplicate would come now
        assert delivered_events(hook) == sorted(e.id for e in first + second), "lost or delivered twice"
        assert len(set(hook.handoff_ids)) == 60
        assert a.running.nc.connected_url is not None and nats3.node_of(a.running.nc.connected_url) != dead


async def test_a_source_on_a_leaf_node_publishes_into_the_cluster(
    nats3: NatsCluster, daemon_factory: Callable[..., InProcessDaemon], tmp_path: Path
) -> None:
    async with FakeWebhook() as hook:
        cfg = f'[cluster]\nreplicas = 3\n[notify.hook]\ntype = "webhook"\nurl = "{hook.hook_url}"\n'
        await daemon_factory(WATCHES, nats_url=nats3.url, extra_config=cfg).start()
        leaf = LeafNode(tmp_path / "leaf", nats3.leaf_port).start()
        try:
            # A publisher on the leaf machine uses its local server: the event reaches the cluster's
            # stream (the ack comes back over the leaf connection) and is stored once when re-sent.
            events = [make_event("job.run", id=f"leaf-{n}") for n in range(5)]
            await publish_stored(leaf.url, events + events[:2])
            await until(lambda: len(hook.deliveries) >= 5, what="the leaf's events delivered")
            await asyncio.sleep(0.5)
            assert delivered_events(hook) == sorted(e.id for e in events)
        finally:
            leaf.stop()


def role(d: DaemonProc) -> str | None:
    h = d.health()
    return h["cluster"]["role"] if h and h.get("cluster") else None


KILL_ROUNDS = 6
TAKEOVER_S = 2.0


@pytest.mark.slow
async def test_kill9_of_the_holder_mid_stream_round_after_round_loses_nothing(
    nats3: NatsCluster, process_factory: Callable[..., DaemonProc]
) -> None:
    async with FakeWebhook() as hook:
        cfg = (
            f'[cluster]\ntakeover = "{TAKEOVER_S:g}s"\nreplicas = 3\n'
            f'[notify.hook]\ntype = "webhook"\nurl = "{hook.hook_url}"\n'
        )
        pair = [process_factory(WATCHES, nats_url=nats3.url, extra_config=cfg) for _ in range(2)]
        for d in pair:
            await asyncio.to_thread(d.start)
        sent: list[Event] = []
        streaming = asyncio.Event()

        async def stream() -> None:  # 20 events a second all along, each re-sent until stored
            n = 0
            while not streaming.is_set():
                event = make_event("job.run", id=f"ev-{n:04d}")
                await publish_stored(nats3.url, [event])
                sent.append(event)
                n += 1
                await asyncio.sleep(0.05)

        publisher = asyncio.create_task(stream())
        kills: list[float] = []
        took: list[float] = []
        try:
            for _ in range(KILL_ROUNDS):
                await asyncio.sleep(1.0)
                holder = next(d for d in pair if role(d) == "holder")
                standby = next(d for d in pair if d is not holder)
                kills.append(time.time())
                await asyncio.to_thread(holder.kill9)
                await until(lambda s=standby: role(s) == "holder", timeout_s=10, step_s=0.05, what="a takeover")
                took.append(time.time() - kills[-1])
                await asyncio.to_thread(holder.start)  # back, standing by
        finally:
            streaming.set()
            await publisher
        await until(
            lambda: {d["evidence"][0]["id"] for d in hook.deliveries} >= {e.id for e in sent},
            timeout_s=60,
            what="every event's handoff delivered",
        )
        await asyncio.sleep(1.0)  # a late duplicate would come now

        assert max(took) <= TAKEOVER_S + 1.0, took
        # Nothing lost, and each handoff queued once: one message per handoff id in HANDOFFS.
        assert {d["evidence"][0]["id"] for d in hook.deliveries} == {e.id for e in sent}
        ids = set(hook.handoff_ids)
        nc = await bus.connect(nats3.url, name="watchd-test")
        try:
            subject = "watchd.handoffs.notify.hook"
            info = await nc.jetstream().stream_info(bus.HANDOFFS_STREAM, subjects_filter=subject)
            assert (info.state.subjects or {}).get(subject) == len(ids) == len(sent)
        finally:
            await nc.close()
        # A handoff is delivered a second time only when its first delivery was under way at a kill
        # (the deliverer died before its ack was stored).
        first_at: dict[str, float] = {}
        for req in hook.requests:
            first_at.setdefault(req.headers.get("X-Watchd-Handoff-Id", ""), req.at)
        repeated = [hid for hid in ids if hook.handoff_ids.count(hid) > 1]
        for hid in repeated:
            assert any(0 <= k - first_at[hid] < 1.0 for k in kills), f"{hid} delivered twice, not at a kill"
        assert len(repeated) <= KILL_ROUNDS


SHARDS = 6


def sharded_watches() -> dict[str, str]:
    """One match watch per shard of SHARDS (`job.<k>` for shard k's), each handing off to the hook."""
    ids: dict[int, str] = {}
    n = 0
    while len(ids) < SHARDS:
        ids.setdefault(shards.shard_of(f"job-{n}", SHARDS), f"job-{n}")
        n += 1
    text = "".join(
        f'[[watch]]\nid = "{ids[k]}"\nkind = "match"\non = {{ subject = "job.{k}" }}\nthen = ["notify.hook"]\n\n'
        for k in range(SHARDS)
    )
    return {"jobs.toml": text}


def holding(d: DaemonProc) -> int:
    h = d.health()
    return len(h["cluster"].get("holding", [])) if h and h.get("cluster") else 0


@pytest.mark.slow
async def test_three_sharded_instances_lose_nothing_through_an_instance_killed_a_node_killed_and_a_rejoin(
    nats3: NatsCluster, process_factory: Callable[..., DaemonProc]
) -> None:
    async with FakeWebhook() as hook:
        cfg = (
            f'[cluster]\ntakeover = "6s"\nreplicas = 3\nshards = {SHARDS}\n'  # a node's loss outlasts 2 s
            f'[notify.hook]\ntype = "webhook"\nurl = "{hook.hook_url}"\n'
        )
        trio = [process_factory(sharded_watches(), nats_url=nats3.url, extra_config=cfg) for _ in range(3)]
        for d in trio:
            await asyncio.to_thread(d.start)
        await until(lambda: [holding(d) for d in trio] == [2, 2, 2], timeout_s=30, what="two shards each")
        sent: list[Event] = []
        streaming = asyncio.Event()

        async def stream() -> None:  # 20 events a second over every shard, each re-sent until stored
            n = 0
            while not streaming.is_set():
                event = make_event(f"job.{n % SHARDS}", id=f"ev-{n:04d}")
                await publish_stored(nats3.url, [event])
                sent.append(event)
                n += 1
                await asyncio.sleep(0.05)

        down: set[int] = set()  # killed by the test: not started again until it says so
        restarts: list[int] = []

        async def supervise() -> None:  # as systemd's Restart=on-failure: an exit 1 is started again
            while not streaming.is_set():
                for i, d in enumerate(trio):
                    if i not in down and not d.alive():
                        with contextlib.suppress(AssertionError):  # NATS not answering yet: next round
                            await asyncio.to_thread(d.start)
                            restarts.append(i)
                await asyncio.sleep(0.5)

        publisher = asyncio.create_task(stream())
        supervisor = asyncio.create_task(supervise())
        kills: list[float] = []
        try:
            await asyncio.sleep(2.0)
            kills.append(time.time())
            down.add(2)
            await asyncio.to_thread(trio[2].kill9)  # its two shards go to the other two
            await until(lambda: holding(trio[0]) + holding(trio[1]) == SHARDS, timeout_s=20, what="a takeover")
            await asyncio.sleep(1.0)
            nats3.kill9(1)  # and a NATS node: leases may lapse while the cluster elects leaders
            await asyncio.sleep(3.0)
            down.discard(2)  # back: it takes its share again
            await until(lambda: [holding(d) for d in trio] == [2, 2, 2], timeout_s=60, what="the rejoin")
            await asyncio.sleep(2.0)
        finally:
            streaming.set()
            await publisher
            await supervisor
        await until(
            lambda: {d["evidence"][0]["id"] for d in hook.deliveries} >= {e.id for e in sent},
            timeout_s=60,
            what="every event's handoff delivered",
        )
        await asyncio.sleep(1.0)  # a late duplicate would come now
        assert {d["evidence"][0]["id"] for d in hook.deliveries} == {e.id for e in sent}, "lost"
        ids = set(hook.handoff_ids)
        assert len(ids) == len(sent), "an event was decided into two handoffs"
        first_at: dict[str, float] = {}
        for req in hook.requests:
            first_at.setdefault(req.headers.get("X-Watchd-Handoff-Id", ""), req.at)
        repeated = [hid for hid in ids if hook.handoff_ids.count(hid) > 1]
        for hid in repeated:  # only a delivery under way at the kill may come twice
            assert any(0 <= k - first_at[hid] < 1.0 for k in kills), f"{hid} delivered twice, not at the kill"
