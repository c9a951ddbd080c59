"""JetStreamPublisher against a real nats-server: stored once per id, every answer the server can
give mapped as bus.publish_raw maps it, timeouts, and a connection nats-py closed and watchd opened
again."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.aio.client import Client
from support.waiting import until

from watchd import bus
from watchd.errors import EventRejected, NatsUnavailable
from watchd.jspublish import JetStreamPublisher
from watchd.link import Connection
from watchd.model import encode, make_event


async def stored_ids(nc: Client) -> list[str]:
    info = await nc.jetstream().stream_info(bus.EVENTS_STREAM)
    ids = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await nc.jetstream().get_msg(bus.EVENTS_STREAM, seq)
        assert msg.headers is not None
        ids.append(msg.headers["Nats-Msg-Id"])
    return ids


async def test_an_event_is_stored_once_and_a_resend_is_answered_as_a_duplicate(nats_client: Client) -> None:
    await bus.ensure_streams(nats_client.jetstream())
    publisher = JetStreamPublisher(nats_client)
    first = make_event("job.a", {"n": 1}, id="one")
    ack = await publisher.publish_event(first)
    assert (ack.stream, ack.seq, ack.duplicate) == (bus.EVENTS_STREAM, 1, False)
    again = await publisher.publish_event(first, encode(first))
    assert (again.seq, again.duplicate) == (1, True)
    msg = await nats_client.jetstream().get_msg(bus.EVENTS_STREAM, 1)
    assert msg.subject == "watchd.events.job.a" and msg.data == encode(first)


async def test_many_in_flight_each_get_their_own_ack(nats_client: Client) -> None:
    await bus.ensure_streams(nats_client.jetstream())
    publisher = JetStreamPublisher(nats_client)
    events = [make_event("job.many", {"n": i}, id=f"m-{i}") for i in range(300)]
    acks = await asyncio.gather(*(publisher.publish_event(e) for e in events))
    assert sorted(a.seq for a in acks) == list(range(1, 301))
    assert not any(a.duplicate for a in acks)
    # Each caller got the seq of its own message: the stream holds event n at the seq it was told.
    by_seq = {a.seq: e.id for a, e in zip(acks, events, strict=True)}
    assert await stored_ids(nats_client) == [by_seq[s] for s in range(1, 301)]


async def test_a_subject_no_stream_takes_is_nats_unavailable(nats_client: Client) -> None:
    publisher = JetStreamPublisher(nats_client)  # no streams made
    with pytest.raises(NatsUnavailable, match=r"no JetStream stream stores watchd\.events\.job\.a"):
        await publisher.publish_event(make_event("job.a", id="x"))


async def test_a_message_the_server_refuses_is_event_rejected(nats_client: Client) -> None:
    await bus.ensure_streams(nats_client.jetstream())
    publisher = JetStreamPublisher(nats_client)
    body = encode(make_event("job.a", id="x"))
    with pytest.raises(EventRejected, match=r"NATS rejected the message on watchd\.events\.job\.a"):
        await publisher.publish("watchd.events.job.a", body, "x", headers={"Nats-Expected-Stream": "OTHER"})
    with pytest.raises(EventRejected, match="over the NATS max_payload"):
        await publisher.publish("watchd.events.job.a", b"x" * (nats_client.max_payload + 1), "big")
    assert (await nats_client.jetstream().stream_info(bus.EVENTS_STREAM)).state.messages == 0


async def test_no_answer_within_the_timeout_is_nats_unavailable_and_forgotten(nats_client: Client) -> None:
    # A plain subscriber takes the subject and never answers: the publish waits out its timeout.
    await nats_client.subscribe("silent.>")
    publisher = JetStreamPublisher(nats_client, timeout_s=0.3)
    start = time.monotonic()
    with pytest.raises(NatsUnavailable, match=r"did not store the message on silent.x \(TimeoutError\)"):
        await publisher.publish("silent.x", b"{}", "t-1")
    assert 0.3 <= time.monotonic() - start < 2.0
    await bus.ensure_streams(nats_client.jetstream())
    assert (await publisher.publish_event(make_event("job.a", id="after"))).seq == 1  # still works


async def test_after_the_connection_is_opened_again_it_subscribes_again(nats_client: Client) -> None:
    assert isinstance(nats_client, Connection)
    await bus.ensure_streams(nats_client.jetstream())
    publisher = JetStreamPublisher(nats_client, timeout_s=2)
    assert (await publisher.publish_event(make_event("job.a", id="before"))).seq == 1
    # A control line longer than the server takes: -ERR, and nats-py closes the connection for good
    # (dropping every subscription, the answers' too); link.Connection opens it again.
    await nats_client.publish("watchd.events." + "x" * 9000, b"{}")
    await until(lambda: nats_client.reopens == 1 and nats_client.is_connected, what="the connection opened again")
    assert (await publisher.publish_event(make_event("job.a", id="after"))).seq == 2
    assert await stored_ids(nats_client) == ["before", "after"]


async def test_a_closed_connection_is_nats_unavailable(nats_client: Client) -> None:
    await bus.ensure_streams(nats_client.jetstream())
    publisher = JetStreamPublisher(nats_client)
    await publisher.publish_event(make_event("job.a", id="first"))
    await nats_client.close()
    with pytest.raises(NatsUnavailable, match="ConnectionClosedError"):
        await publisher.publish_event(make_event("job.a", id="second"))


async def test_a_burst_is_sent_at_once_and_each_event_gets_its_own_ack_in_order(nats_client: Client) -> None:
    await bus.ensure_streams(nats_client.jetstream())
    publisher = JetStreamPublisher(nats_client)
    first = make_event("job.burst", {"n": 0}, id="b-0")
    await publisher.publish_event(first)
    events = [first] + [make_event("job.burst", {"n": i}, id=f"b-{i}") for i in range(1, 200)]
    acks = await publisher.publish_events([(e, encode(e)) for e in events])
    assert [(a.seq, a.duplicate) for a in acks] == [(1, True)] + [(i + 1, False) for i in range(1, 200)]
    assert await stored_ids(nats_client) == [e.id for e in events]
    assert await publisher.publish_events([]) == []


async def test_a_burst_no_stream_takes_is_nats_unavailable(nats_client: Client) -> None:
    publisher = JetStreamPublisher(nats_client)
    events = [make_event("job.burst", id=f"b-{i}") for i in range(3)]
    with pytest.raises(NatsUnavailable, match=r"no JetStream stream stores watchd\.events\.job\.burst"):
        await publisher.publish_events([(e, encode(e)) for e in events])
