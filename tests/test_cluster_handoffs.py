"""Handoffs through NATS (SPEC section 9): a handoff outlives the instance that decided it, and a
batch decided twice is handed off once.

A real nats-server the test starts stands for the deployment's NATS; a webhook receiver on loopback
records every delivery it accepted (duplicates included)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nats.aio.client import Client
from prometheus_client.parser import text_string_to_metric_families
from support import project
from support.fakes import FakeWebhook
from support.handoffs import make_handoff
from support.inprocess import InProcessDaemon
from support.processes import DaemonProc
from support.waiting import until

from watchd import bus, cluster
from watchd.bus import EmbeddedNats
from watchd.dispatch import Delivered
from watchd.errors import NatsUnavailable
from watchd.handoff_queue import HandoffQueue
from watchd.model import make_event
from watchd.store import Store
from watchd.upkeep import Upkeep

WATCHES = {
    "jobs.toml": """
[[watch]]
id = "jobs"
kind = "match"
on = { subject = "job.*" }
then = ["notify.hook"]
"""
}


def config(hook: FakeWebhook, takeover: str = "2s") -> str:
    return f'[cluster]\ntakeover = "{takeover}"\n[notify.hook]\ntype = "webhook"\nurl = "{hook.hook_url}"\n'


def handoff_rows(d: Any) -> list[tuple[Any, ...]]:
    return list(d.query("SELECT id, state, decided_by FROM handoffs ORDER BY created_at"))


async def test_handoffs_are_queued_on_nats_and_delivered_once(
    nats_server: EmbeddedNats, daemon_factory: Callable[..., InProcessDaemon]
) -> None:
    async with FakeWebhook() as hook:
        a = await daemon_factory(WATCHES, nats_url=nats_server.url, extra_config=config(hook)).start()
        b = await daemon_factory(WATCHES, nats_url=nats_server.url, extra_config=config(hook)).start()
        events = [make_event("job.run", id=f"ev-{n:02d}") for n in range(20)]
        await a.publish(*events)
        await until(lambda: len(hook.handoff_ids) >= 20, what="20 deliveries")
        await asyncio.sleep(0.3)
        assert sorted(hook.handoff_ids) == sorted({h["id"] for h in a.handoffs("jobs")}), "lost or doubled"
        assert len(hook.handoff_ids) == 20

        # Each is a message of the HANDOFFS stream on watchd.handoffs.<target>, its id the Nats-Msg-Id.
        nc = await bus.connect(nats_server.url, name="watchd-test")
        try:
            js = nc.jetstream()
            first = await js.get_msg(bus.HANDOFFS_STREAM, 1)
            assert first.subject == "watchd.handoffs.notify.hook"
            assert first.headers is not None and first.headers["Nats-Msg-Id"] in hook.handoff_ids
            assert first.headers["Watchd-Cluster"] == "watchd"
        finally:
            await nc.close()
        # The deciding instance is recorded with each handoff: explain names it.
        lease = a.running.lease
        assert lease is not None
        states = {(state, decided) for _, state, decided in handoff_rows(a)}
        assert states == {("delivered", lease.me.label())}, states
        assert not b.handoffs(), "the standby delivered or recorded something"


def role(d: DaemonProc) -> str | None:
    h = d.health()
    return h["cluster"]["role"] if h and h.get("cluster") else None


async def test_a_handoff_decided_by_an_instance_that_died_is_delivered_by_the_next_holder(
    nats_server: EmbeddedNats, process_factory: Callable[..., DaemonProc]
) -> None:
    async with FakeWebhook() as hook:
        hook.fail(503, times=1000)  # the receiver is down while a holds the lease
        a = process_factory(WATCHES, nats_url=nats_server.url, extra_config=config(hook, "3s"))
        b = process_factory(WATCHES, nats_url=nats_server.url, extra_config=config(hook, "3s"))
        await asyncio.to_thread(a.start)
        await asyncio.to_thread(b.start)
        assert role(a) == "holder" and role(b) == "standby"

        events = [make_event("job.run", id=f"ev-{n:02d}") for n in range(10)]
        await project.publish(nats_server.url, *events)
        await until(lambda: len(a.handoffs("jobs")) == 10, what="a to decide the ten")
        await until(lambda: len(hook.requests) >= 10, what="a's first attempts")
        await asyncio.to_thread(a.kill9)
        hook.recover()  # the receiver is back
        await until(lambda: role(b) == "holder", timeout_s=10, step_s=0.05, what="b to take over")
        await until(lambda: len(hook.handoff_ids) >= 10, timeout_s=30, what="b to deliver the ten")
        await asyncio.sleep(0.5)
        decided = {h["id"] for h in a.handoffs("jobs")}
        assert sorted(hook.handoff_ids) == sorted(decided), "lost or doubled"
        # b delivered what a decided, and says so.
        rows = handoff_rows(b)
        assert {r[0] for r in rows} == decided
        assert all(
            state == "delivered" and decided_by and f"pid {a.pid}" in decided_by for _, state, decided_by in rows
        )


async def test_a_holder_that_dies_between_commit_and_ack_leaves_its_batch_decided_once(
    nats_server: EmbeddedNats, daemon_factory: Callable[..., InProcessDaemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with FakeWebhook() as hook:
        a = await daemon_factory(WATCHES, nats_url=nats_server.url, extra_config=config(hook)).start()
        b = await daemon_factory(WATCHES, nats_url=nats_server.url, extra_config=config(hook)).start()
        first = [make_event("job.run", id=f"first-{n:02d}") for n in range(10)]
        await a.publish(*first)
        await until(lambda: len(hook.handoff_ids) >= 10, what="the first ten delivered")
        await until(lambda: project.deployment_settled(nats_server.url), step_s=0.05, what="their acks stored")

        # a dies after its next commit, before the ack reaches the server: its connection is gone (as
        # with kill -9), and it never gives its lease up.
        crashed = asyncio.Event()
        ack_upto = bus.EventConsumer.ack_upto

        async def dying(consumer: bus.EventConsumer, msg: Any) -> None:
            if a.daemon is not None and consumer.js is a.running.js:
                a.running.stop.set()
                crashed.set()
                assert a.running.nc is not None
                await a.running.nc.close()
            await ack_upto(consumer, msg)

        monkeypatch.setattr(bus.EventConsumer, "ack_upto", dying)
        hook.fail(503, times=1000)  # what a queued, it cannot deliver before it dies
        second = [make_event("job.run", id=f"second-{n:02d}") for n in range(10)]
        await a.publish(*second)
        await until(crashed.is_set, what="a to die between commit and ack")
        unacked = len(a.handoffs("jobs")) - 10  # the batch a committed, queued and never acknowledged
        assert unacked >= 1
        await a.cleanup()
        hook.recover()

        # b, whose store holds nothing, takes over when the lease lapses. a recorded how far it had
        # decided and queued before its ack: b replays that batch for its state and decides only
        # what a never did; each handoff is delivered once.
        await until(lambda: b.running.active, timeout_s=10, what="b to take over")
        await until(lambda: len(hook.handoff_ids) >= 20, timeout_s=30, what="the second ten delivered")
        await asyncio.sleep(0.5)
        every = {h["id"] for d in (a, b) for h in d.handoffs("jobs")}
        assert len(every) == 20 and sorted(hook.handoff_ids) == sorted(every), "lost or doubled"
        # Each event decided once across the two instances: none of a's batch again on b.
        fired = sorted(r["event_id"] for d in (a, b) for r in d.decisions("jobs", verdict="fired"))
        assert fired == sorted(e.id for e in first + second), "an event was decided twice, or never"
        assert b.running.queue is not None and b.running.queue.duplicates == 0
        again = b.query("SELECT COUNT(*) FROM transitions WHERE detail LIKE 'already queued by another instance%'")
        assert again == [(0,)]


async def test_metrics_status_and_explain_show_the_deployment(
    nats_server: EmbeddedNats, daemon_factory: Callable[..., InProcessDaemon]
) -> None:
    async with FakeWebhook() as hook:
        hook.fail(503, times=1000)  # handoffs wait in the queue: the lag shows them
        a = await daemon_factory(WATCHES, nats_url=nats_server.url, extra_config=config(hook)).start()
        b = await daemon_factory(WATCHES, nats_url=nats_server.url, extra_config=config(hook)).start()
        await a.publish(*[make_event("job.run", id=f"ev-{n}") for n in range(3)])
        await until(lambda: len(a.handoffs("jobs")) == 3, what="three handoffs")
        assert a.running.lease is not None
        me = a.running.lease.me

        async def samples(d: InProcessDaemon) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
            out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
            async with aiohttp.ClientSession() as s, s.get(d.http_url + "/metrics") as r:
                for family in text_string_to_metric_families(await r.text()):
                    for sample in family.samples:
                        out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
            return out

        async def waiting_handoffs() -> dict[str, Any] | None:
            m = await samples(b)
            lag = m.get("watchd_cluster_lag", {}).get((("cluster", "watchd"), ("queue", "handoffs")))
            members = m.get("watchd_cluster_members", {}).get((("cluster", "watchd"),))
            return m if lag == 3 and members == 2 else None

        # Either instance's /metrics: who holds the lease, the members, the handoffs not yet delivered.
        m = await until(waiting_handoffs, what="b's /metrics to show the three handoffs waiting")
        holder = (("cluster", "watchd"), ("host", me.host), ("instance", me.instance), ("pid", str(me.pid)))
        assert m["watchd_cluster_lease_holder"] == {holder: 1.0}
        assert m["watchd_cluster_holding"] == {(("cluster", "watchd"), ("instance", b.running.lease.me.instance)): 0.0}
        assert m["watchd_cluster_lag"][(("cluster", "watchd"), ("queue", "events"))] == 0
        assert (await samples(a))["watchd_cluster_holding"][(("cluster", "watchd"), ("instance", me.instance))] == 1
        status = (await b.cli("status")).stdout
        assert "lag: 0 events not yet decided, 3 handoffs not yet delivered" in status, status

        # explain names the instance that decided each handoff.
        text = (await a.cli("explain", "jobs")).stdout
        assert f"decided by {me.instance} on {me.host} (pid {me.pid})" in text, text


async def test_a_dead_letter_replayed_on_the_instance_that_delivered_it_is_queued_again(
    nats_server: EmbeddedNats, daemon_factory: Callable[..., InProcessDaemon]
) -> None:
    async with FakeWebhook() as hook:
        hook.fail(404, times=1)  # a receiver that does not know the endpoint: dead at once
        a = await daemon_factory(WATCHES, nats_url=nats_server.url, extra_config=config(hook)).start()
        await a.publish(make_event("job.run", id="ev-1"))
        [dead] = await until(lambda: [h for h in a.handoffs("jobs") if h["state"] == "dead"], what="a dead letter")
        assert "404" in (dead["last_error"] or "") and hook.handoff_ids == []

        # Replayed with the same id: a new message in the queue (the first one's id is taken), delivered.
        r = await a.cli("dlq", "replay", dead["id"])
        assert r.returncode == 0, r.stderr
        await until(lambda: hook.handoff_ids == [dead["id"]], what="the replay delivered")
        await until(lambda: a.handoffs("jobs")[0]["state"] == "delivered", what="recorded as delivered")
        nc = await bus.connect(nats_server.url, name="watchd-test")
        try:
            info = await nc.jetstream().stream_info(bus.HANDOFFS_STREAM)
            assert info.state.messages == 2, "the replay is a message of its own"
        finally:
            await nc.close()


async def test_a_handoff_nats_cannot_store_is_a_dead_letter_and_the_others_are_queued(
    nats_client: Client, tmp_path: Path
) -> None:
    js = nats_client.jetstream()
    await bus.ensure_streams(js)
    store = await Store.open(tmp_path / "state.db")
    try:
        huge = make_handoff(id="h_huge", evidence=[{"id": "e1", "data": "x" * (nats_client.max_payload + 1)}])
        odd = make_handoff(id="h_odd", target="notify.my hook")  # a space: not a subject token
        await store.run(store.add_handoffs, [huge, odd], 0.0)
        queue = HandoffQueue(js, nats_client, store, dict, cluster="watchd", instance="me", ack_wait_s=5)
        await queue.queue_pending()  # neither raises nor stops at the one that cannot be stored

        states = dict(await store.run(lambda: store.conn.execute("SELECT id, state FROM handoffs").fetchall()))
        assert states == {"h_huge": "dead", "h_odd": "queued"}
        [(error,)] = await store.run(
            lambda: store.conn.execute("SELECT last_error FROM handoffs WHERE id = 'h_huge'").fetchall()
        )
        assert error.startswith("not queued: message of") and "max_payload" in error
        msg = await js.get_msg(bus.HANDOFFS_STREAM, 1)
        assert msg.subject == "watchd.handoffs.notify.my_hook" and msg.headers and msg.headers["Nats-Msg-Id"] == "h_odd"
    finally:
        await asyncio.to_thread(store.close)


ABSENT = {
    "hosts.toml": """
[[watch]]
id = "hosts"
kind = "absent"
expect = { subject = "hb", key = "data.host" }
for = "30s"
then = ["notify.hook"]
"""
}


async def test_a_timer_fired_by_a_holder_that_dies_before_recording_its_instant_is_handed_off_once(
    nats_server: EmbeddedNats, daemon_factory: Callable[..., InProcessDaemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with FakeWebhook() as hook:
        a = await daemon_factory(ABSENT, nats_url=nats_server.url, extra_config=config(hook)).start()
        b = await daemon_factory(ABSENT, nats_url=nats_server.url, extra_config=config(hook)).start()
        await a.publish(make_event("hb", {"host": "h1"}, id="hb-1"))
        await until(lambda: a.last_seq() == 1, what="a to commit the heartbeat")

        # a fires the silence, commits and queues it, and dies before it records the instant its
        # timers reached: the next holder fires the same silence again.
        crashed = asyncio.Event()
        record_position = cluster.Lease.record_position

        async def dying(lease: cluster.Lease, seq: int, clock: float) -> None:
            if a.daemon is not None and lease is a.running.lease and a.handoffs("hosts"):
                a.running.stop.set()
                crashed.set()
                assert a.running.nc is not None
                await a.running.nc.close()
            await record_position(lease, seq, clock)

        monkeypatch.setattr(cluster.Lease, "record_position", dying)
        hook.fail(503, times=1000)  # what a queued, it cannot deliver before it dies
        await asyncio.gather(a.advance(35), b.advance(35))
        await until(crashed.is_set, what="a to die after the fire's commit")
        await a.cleanup()
        hook.recover()

        await until(lambda: b.running.active, timeout_s=10, what="b to take over")
        await b.advance(1)
        await until(lambda: hook.handoff_ids, timeout_s=30, what="the silence delivered")
        await until(lambda: b.running.queue is not None and b.running.queue.duplicates == 1, what="b's fire")
        await asyncio.sleep(0.5)
        assert hook.handoff_ids == [a.handoffs("hosts")[0]["id"]], "delivered once"
        assert [h["id"] for h in b.handoffs("hosts")] == hook.handoff_ids


async def test_a_renewal_while_a_fire_is_being_queued_does_not_record_its_instant(
    nats_server: EmbeddedNats, daemon_factory: Callable[..., InProcessDaemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lease is renewed (and the position recorded) concurrently with the engine's steps: one
    that lands after a fire's commit and before its handoff reached the queue must not record the
    fire's instant, or a holder that dies then leaves a silence no one hands off."""
    async with FakeWebhook() as hook:
        a = await daemon_factory(ABSENT, nats_url=nats_server.url, extra_config=config(hook)).start()
        b = await daemon_factory(ABSENT, nats_url=nats_server.url, extra_config=config(hook)).start()
        await a.publish(make_event("hb", {"host": "h1"}, id="hb-1"))
        await until(lambda: a.last_seq() == 1, what="a to commit the heartbeat")

        # a commits the silence's fire; as it queues the handoff a renewal runs, then a dies before
        # the handoff is stored.
        crashed = asyncio.Event()
        queue_pending = HandoffQueue.queue_pending

        async def dying(queue: HandoffQueue) -> int:
            if a.daemon is not None and queue is a.running.queue and a.handoffs("hosts") and not crashed.is_set():
                lease = a.running.lease
                assert lease is not None and await lease.renew()
                a.running.stop.set()
                crashed.set()
                assert a.running.nc is not None
                await a.running.nc.close()
                raise NatsUnavailable("the connection is gone")
            return await queue_pending(queue)

        monkeypatch.setattr(HandoffQueue, "queue_pending", dying)
        await asyncio.gather(a.advance(35), b.advance(35))
        await until(crashed.is_set, what="a to die while queueing the fire")
        await a.cleanup()

        # b takes over: the instant recorded is the heartbeat's, so b fires the silence itself.
        await until(lambda: b.running.active, timeout_s=10, what="b to take over")
        await b.advance(1)
        await until(lambda: hook.handoff_ids, timeout_s=30, what="the silence delivered")
        await asyncio.sleep(0.5)
        assert hook.handoff_ids == [a.handoffs("hosts")[0]["id"]], "delivered once"


class SlowTarget:
    """A target whose delivery outlasts the queue's ack_wait; counts its deliveries."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.delivered: list[str] = []

    async def deliver(self, handoff: Any) -> Delivered:
        self.delivered.append(handoff.id)
        await asyncio.sleep(self.seconds)
        return Delivered("slowly")


async def test_a_delivery_that_outlasts_ack_wait_is_not_handed_to_another_deliverer(
    nats_client: Client, tmp_path: Path
) -> None:
    """While one deliverer works on a handoff, it tells the server so (in-progress acks every third
    of ack_wait): the other deliverer on the same queue is not given it, though the delivery takes
    more than twice ack_wait."""
    js = nats_client.jetstream()
    await bus.ensure_streams(js)
    target = SlowTarget(2.6)
    stores = [await Store.open(tmp_path / f"{n}.db") for n in ("a", "b")]
    stop = asyncio.Event()
    upkeep = Upkeep(stop)
    queues = [
        HandoffQueue(js, nats_client, s, lambda: {"notify.slow": target}, cluster="watchd", instance=n, ack_wait_s=1.0)
        for s, n in zip(stores, ("a", "b"), strict=True)
    ]
    try:
        await queues[0].ensure_consumer()
        await stores[0].run(stores[0].add_handoffs, [make_handoff(id="h_slow", target="notify.slow")], 0.0)
        await queues[0].queue_pending()
        tasks = [asyncio.create_task(q.deliver(upkeep)) for q in queues]
        await until(lambda: target.delivered == ["h_slow"], what="one deliverer to take it")
        await asyncio.sleep(3.5)  # past the delivery's end, and past ack_wait after that
        assert target.delivered == ["h_slow"]
        stop.set()
        await asyncio.wait(tasks, timeout=5)
    finally:
        stop.set()
        for s in stores:
            await asyncio.to_thread(s.close)
