"""More than one instance on one NATS (SPEC section 9): never twice, never silently split.

A real nats-server the test starts stands for the deployment's NATS; watchd instances are real
daemons with their own state dirs on it, in the test's event loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from support.inprocess import InProcessDaemon
from support.waiting import until

from watchd import bus
from watchd.bus import EmbeddedNats
from watchd.model import make_event

WATCHES = {
    "jobs.toml": """
[[watch]]
id = "jobs"
kind = "match"
on = { subject = "job.*" }
then = ["notify.console"]
"""
}


def handed_off(*instances: InProcessDaemon) -> list[str]:
    """The event id behind every handoff of watch `jobs`, over all instances."""
    return [h["evidence"][0]["id"] for d in instances for h in d.handoffs("jobs")]


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
