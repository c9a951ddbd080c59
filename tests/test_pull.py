"""watchd/pull.py: the engine's reader, its messages taken straight from the protocol parser."""

from __future__ import annotations

import time

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from support.waiting import until

from watchd.bus import (
    EventConsumer,
    ensure_streams,
    pending_after,
    publish_event,
    seq_of,
    time_of,
    times_delivered,
)
from watchd.link import Connection
from watchd.model import make_event
from watchd.pull import Delivered, NotJetStream


def test_delivered_reads_both_ack_subject_layouts() -> None:
    ns = 1_764_000_000_123_456_789
    old = Delivered(f"$JS.ACK.EVENTS.watchd-engine.2.417.9.{ns}.31", b"{}", None)
    new = Delivered(f"$JS.ACK.hub.ACCHASH.EVENTS.watchd-engine.3.418.10.{ns}.30.rNd", b"{}", None)
    assert (old.delivered, old.seq, old.pending) == (2, 417, 31)
    assert (new.delivered, new.seq, new.pending) == (3, 418, 30)
    assert old.at == new.at == pytest.approx(ns / 1e9)
    for reply in ("_INBOX.abc.1", "$JS.ACK.EVENTS.x.1.2", "$JS.API.A.B.C.D.E.F.G"):
        with pytest.raises(NotJetStream):
            Delivered(reply, b"", None)


def test_delivered_headers_are_read_on_demand() -> None:
    reply = "$JS.ACK.EVENTS.d.1.5.5.1764000000000000000.0"
    with_id = Delivered(reply, b"x", b"NATS/1.0\r\nNats-Msg-Id: ev_1\r\nX-Other:  two words \r\n\r\n")
    assert with_id.headers == {"Nats-Msg-Id": "ev_1", "X-Other": "two words"}
    assert Delivered(reply, b"x", None).headers is None


async def test_engine_reader_takes_messages_from_the_parser(nats_client: Client) -> None:
    """Through the real server: the fields the engine reads agree with nats-py's own parsing of the
    same messages, and the raw subscription leaves the connection's other subscriptions alone."""
    assert isinstance(nats_client, Connection)
    js = nats_client.jetstream()
    await ensure_streams(js)
    events = [make_event("disk.full", {"n": i}) for i in range(4)]
    for event in events:
        await publish_event(js, event)
    plain: list[Msg] = []

    async def keep(msg: Msg) -> None:
        plain.append(msg)

    other = await nats_client.subscribe("side.>", cb=keep)

    ours = EventConsumer(js, durable="ours", nc=nats_client)
    theirs = EventConsumer(js, durable="theirs")  # nats-py's fetch and Msg objects
    await ours.start()
    await theirs.start()
    got = await ours.fetch(10, timeout_s=2)
    expected = await theirs.fetch(10, timeout_s=2)
    assert all(isinstance(m, Delivered) for m in got)
    assert [seq_of(m) for m in got] == [seq_of(m) for m in expected] == [1, 2, 3, 4]
    assert [pending_after(m) for m in got] == [pending_after(m) for m in expected] == [3, 2, 1, 0]
    assert [time_of(m) for m in got] == pytest.approx([time_of(m) for m in expected], abs=1e-6)
    assert abs(time_of(got[0]) - time.time()) < 5
    assert [m.data for m in got] == [m.data for m in expected]
    assert [(m.headers or {}).get("Nats-Msg-Id") for m in got] == [e.id for e in events]
    assert [times_delivered(m) for m in got] == [1, 1, 1, 1]

    await nats_client.publish("side.note", b"hello")
    await nats_client.flush()
    await until(lambda: plain, what="the other subscription's message")  # a busy machine may take a while
    assert [m.data for m in plain] == [b"hello"]

    await ours.ack_upto(got[1])  # AckPolicy.ALL: 1 and 2
    await nats_client.flush()
    info = await ours.info()
    assert info.ack_floor is not None and info.ack_floor.stream_seq == 2
    await ours.stop()
    await theirs.stop()
    await other.unsubscribe()
