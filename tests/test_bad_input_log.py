"""Bad input reaches the log, at a rate limit, and /metrics: a message on the event stream that is no
event, and a `where` that cannot be evaluated, are each a decision, a counted verdict, and a log
line — one a minute per kind and watch, the ones held back counted into the next."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
from support.inprocess import InProcessDaemon
from support.waiting import until

from watchd.model import make_event

WATCH = '[[watch]]\nid = "big"\nkind = "match"\non = { subject = "disk.*", where = "data.size > 10" }\n'


def lines(d: InProcessDaemon, text: str) -> list[str]:
    return [line for line in d.logged().splitlines() if text in line]


async def metrics(d: InProcessDaemon) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"{d.http_url}/metrics") as resp:
        return await resp.text()


async def test_rejected_messages_and_where_errors_are_logged_at_a_rate_limit_and_counted(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = await daemon_factory({"w.toml": WATCH}).start()
    for _ in range(3):
        await d.publish_raw("watchd.events.junk", b"this is not json")
    await d.publish(*(make_event("disk.a", {"free": 1}) for _ in range(3)))  # no `size`: the where errors
    await until(lambda: d.running.last_seq >= 6, what="all six messages to be decided")
    rejected = lines(d, "of the event stream")
    assert len(rejected) == 1, d.logged()
    assert rejected[0].startswith(
        "WARNING watchd: rejected the message at seq 1 of the event stream: event is not valid"
    )
    where = lines(d, "watch big: `where` could not be evaluated on event")
    assert len(where) == 1 and "(seq 4), so it is false for it" in where[0] and "'size'" in where[0], d.logged()

    text = await metrics(d)
    assert 'watchd_decisions_total{verdict="rejected",watch=""} 3.0' in text
    assert 'watchd_decisions_total{verdict="where_error",watch="big"} 3.0' in text

    d.running.bad_input_log.every_s = 0.2  # the next report is due sooner than a minute
    await asyncio.sleep(0.3)
    await d.publish_raw("watchd.events.junk", b"[1, 2]")
    await until(lambda: len(lines(d, "of the event stream")) == 2, what="the next report")
    assert lines(d, "of the event stream")[1].endswith("(and 2 more times since the last report)")
