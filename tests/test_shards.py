"""The shard map and the share rules of scale-out (watchd/shards.py), without a daemon."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter

import pytest
from nats.aio.client import Client
from nats.js.api import ConsumerConfig

from watchd import bus, shards
from watchd.model import EVENTS_PREFIX


def test_a_watch_maps_to_the_same_shard_in_every_process() -> None:
    ids = [f"watch-{n}" for n in range(200)]
    here = [shards.shard_of(i, 7) for i in ids]
    code = "import sys; from watchd import shards; print([shards.shard_of(f'watch-{n}', 7) for n in range(200)])"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # another str hash than this process's
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert other.stdout.strip() == str(here)
    assert all(shards.shard_of(i, 1) == 0 for i in ids)
    spread = Counter(shards.shard_of(f"w{n}", 4) for n in range(4000))
    assert set(spread) == {0, 1, 2, 3} and min(spread.values()) > 850, spread


def test_shard_zero_keeps_the_names_of_the_single_engine() -> None:
    zero, two = shards.ShardNames(0, 4), shards.ShardNames(2, 4)
    assert (zero.durable, zero.lease_key, zero.cursor_key, zero.clock_key, zero.position_key, zero.task) == (
        "watchd-engine",
        "lease.engine",
        "last_seq",
        "clock",
        "engine.position",
        "engine",
    )
    names = (two.durable, two.lease_key, two.cursor_key, two.clock_key, two.position_key, two.task)
    assert names == ("watchd-engine-2", "lease.engine.2", "last_seq.2", "clock.2", "engine.position.2", "engine.2")


@pytest.mark.parametrize(
    ("subjects", "expected"),
    [
        ({"a.b", "a.*", "c.>", "c.d.e"}, ["a.*", "c.>"]),
        ({"job.*", "job.run"}, ["job.*"]),
        ({"a.b", "a.c"}, ["a.b", "a.c"]),
        ({"a.*.c", "a.b.*"}, [">"]),  # overlapping, neither covers the other: the whole stream
        ({"x.>", "x"}, ["x", "x.>"]),  # `x.>` does not match `x`
        (set(), [">"]),
    ],
)
def test_a_shards_filter_has_no_overlap(subjects: set[str], expected: list[str]) -> None:
    assert shards.filter_subjects(subjects) == [EVENTS_PREFIX + s for s in expected]


async def test_the_server_takes_the_filters_as_a_consumer_of_the_event_stream(nats_client: Client) -> None:
    """NATS refuses overlapping filters on one consumer: what filter_subjects makes, it takes."""
    from watchd import storage

    js = nats_client.jetstream()
    await storage.ensure_streams(js, 1 << 20, None, None)
    cases = [{"a.b", "a.*", "c.>", "c.d.e", "mail.received"}, {"a.*.c", "a.b.*"}, {"x.>", "x", "y.*.z"}]
    for n, subjects in enumerate(cases):
        wanted = shards.filter_subjects(subjects)
        config = ConsumerConfig(durable_name=f"shard-test-{n}", filter_subjects=wanted)
        info = await js.add_consumer(bus.EVENTS_STREAM, config)
        assert sorted(info.config.filter_subjects or [info.config.filter_subject]) == sorted(wanted)


def settle(holders: dict[int, str | None], members: list[str], count: int) -> dict[int, str | None]:
    """Let each member, in turn, take a free shard or give one up by the rules until nothing moves
    (as their lease loops do, each seeing the others' last move)."""
    for _ in range(200):
        moved = False
        for me in members:
            release = shards.should_release(me, holders, members)
            if release is not None:
                holders[release] = None
                moved = True
                continue
            free = [k for k, h in holders.items() if h is None]
            if free and shards.may_take(me, holders, members, count):
                holders[free[0]] = me
                moved = True
        if not moved:
            return holders
    raise AssertionError(f"the shares never settled: {holders}")


def loads(holders: dict[int, str | None], members: list[str]) -> list[int]:
    c = Counter(holders.values())
    return sorted(c[m] for m in members)


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 16])
def test_shards_even_out_as_members_join_and_leave(count: int) -> None:
    holders: dict[int, str | None] = dict.fromkeys(range(count))
    holders = settle(holders, ["a"], count)
    assert loads(holders, ["a"]) == [count]
    for members in (["a", "b"], ["a", "b", "c"], ["a", "c"], ["c"]):
        for k, h in holders.items():
            if h not in members:
                holders[k] = None  # a member that died: its leases lapsed
        holders = settle(holders, members, count)
        shares = loads(holders, members)
        assert None not in holders.values(), f"a shard is held by no one: {holders}"
        assert sum(shares) == count and shares[-1] - shares[0] <= 1, (members, holders)


def test_a_member_at_its_share_gives_nothing_up() -> None:
    holders: dict[int, str | None] = {0: "a", 1: "a", 2: "b", 3: "b"}
    assert shards.should_release("a", holders, ["a", "b"]) is None
    assert shards.should_release("a", {0: "a", 1: "a", 2: "a", 3: "b", 4: "b"}, ["a", "b"]) is None  # 3 - 2 < 2
    assert shards.should_release("a", {0: "a", 1: "a", 2: "a", 3: "b"}, ["a", "b"]) == 2
    assert shards.should_release("b", {0: "a", 1: "a", 2: "a", 3: "b"}, ["a", "b"]) is None
    # The one to give up is the most loaded; of two as loaded, the smaller id.
    assert shards.should_release("b", {0: "a", 1: "a", 2: "b", 3: "b"}, ["a", "b", "c"]) is None
    assert shards.should_release("a", {0: "a", 1: "a", 2: "b", 3: "b"}, ["a", "b", "c"]) == 1


async def test_a_consumer_given_up_is_served_nothing_more_so_the_next_holder_decides_it(nats_client: Client) -> None:
    """A shard given up unbinds its consumer while a pull request of its may still wait at the
    server; the server serves no request whose reply subject no one listens to any more, so an
    event stored after the unbind is left for the next holder (the daemon's drain, DRAIN_S, covers
    a cluster's routes learning of the unsubscribe)."""
    from watchd import storage
    from watchd.model import make_event

    js = nats_client.jetstream()
    await storage.ensure_streams(js, 1 << 20, None, None)
    giving_up = bus.EventConsumer(js, "shard-test", nc=nats_client)
    await giving_up.start()
    waiting = asyncio.create_task(giving_up.fetch(1, timeout_s=5.0))  # a request waits at the server
    await asyncio.sleep(0.3)
    waiting.cancel()
    await giving_up.stop()
    await nats_client.flush()
    await asyncio.sleep(0.2)
    await bus.publish_event(js, make_event("job.run", id="after-the-unbind"))
    await asyncio.sleep(0.5)
    info = await js.consumer_info(bus.EVENTS_STREAM, "shard-test")
    assert (info.delivered.stream_seq or 0) == 0 and not info.num_ack_pending, info

    taker = bus.EventConsumer(js, "shard-test", nc=nats_client)
    await taker.start()
    try:
        got = await taker.fetch(10, timeout_s=2.0)
        assert [bus.seq_of(m) for m in got] == [1]
    finally:
        await taker.stop()


def test_schedules_spread_over_the_shards_and_a_chain_by_after_stays_on_one() -> None:
    after: dict[str, tuple[str, ...]] = {f"s{n}": () for n in range(400)}
    after |= {"report": (), "mail": ("report",), "archive": ("mail", "other"), "other": ()}
    got = shards.schedule_shards(after, 4)
    assert got == shards.schedule_shards(dict(reversed(after.items())), 4), "not the order of the config"
    chain = {got[n] for n in ("report", "mail", "archive", "other")}
    assert chain == {shards.schedule_shard("archive", 4)}, "a downstream runs where its upstreams' runs are recorded"
    spread = Counter(got[f"s{n}"] for n in range(400))
    assert set(spread) == {0, 1, 2, 3} and min(spread.values()) > 70, spread
    assert all(got[f"s{n}"] == shards.schedule_shard(f"s{n}", 4) for n in range(400))
    assert set(shards.schedule_shards(after, 1).values()) == {0}
