"""Through the real daemon (in the test's event loop, on a virtual clock) to a fake Telegram on
loopback: at-least-once delivery, effect once."""

from __future__ import annotations

import json
from collections.abc import Callable

from support.fake_telegram import FakeTelegram
from support.inprocess import InProcessDaemon
from support.waiting import until

from watchd.model import make_event

TOKEN = "987654:SECRET-do-not-leak-xyz"

WATCH = """
[[watch]]
id = "urgent"
kind = "match"
on = { subject = "mail.received", where = "data.urgent" }
then = ["notify.phone"]
message = "urgent mail from {event.data.from}"
"""


async def test_telegram_down_then_up_delivers_exactly_once_and_never_leaks_the_token(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    async with FakeTelegram(token=TOKEN) as tg:
        tg.fail(500, times=2)
        d = daemon_factory(
            {"mail.toml": WATCH},
            extra_config=f'[notify.phone]\ntype = "telegram"\ntoken = "env:TG_TOKEN"\nchat_id = "42"\n'
            f'api_base = "{tg.url}"\n',
            env={"TG_TOKEN": TOKEN},
        )
        await d.start()
        await d.publish(make_event("mail.received", {"urgent": True, "from": "ceo@x.com"}))
        await d.advance_until(lambda: tg.messages, what="the message, after two retries' backoff")
        await d.advance(3600)  # nothing more may arrive, however long
        await d.settle()
        assert [m["text"] for m in tg.messages] == ["urgent mail from ceo@x.com"]
        (h,) = d.handoffs("urgent")
        assert h["state"] == "delivered" and h["attempt"] == 3
        states = d.states(h["id"])
        assert states == ["pending", "delivering", "retrying", "delivering", "retrying", "delivering", "delivered"]
        handoffs_json = (await d.cli("handoffs", "--json")).stdout
        status_json = (await d.cli("status", "--json")).stdout
        assert json.loads(handoffs_json)[0]["state"] == "delivered"
        daemon = d.daemon
        assert daemon is not None and not daemon.http.closed
        await d.stop()
        assert daemon.http.closed  # its connections end with it: the client is the daemon's, not the process's
        for text in (handoffs_json, status_json, d.printed(), d.logged()):
            assert TOKEN not in text and "SECRET-do-not-leak" not in text


async def test_unauthorized_target_is_dead_lettered_at_once_with_a_reason(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    async with FakeTelegram(token="111:right") as tg:
        d = daemon_factory(
            {"mail.toml": WATCH},
            extra_config=f'[notify.phone]\ntype = "telegram"\ntoken = "222:wrong-token"\nchat_id = "42"\n'
            f'api_base = "{tg.url}"\n',
        )
        await d.start()
        await d.publish(make_event("mail.received", {"urgent": True, "from": "a@b.c"}))
        (h,) = await until(lambda: [h for h in d.handoffs("urgent") if h["state"] == "dead"], what="a dead letter")
        assert h["attempt"] == 1
        assert "notify.phone" in h["last_error"] and "token" in h["last_error"]
        assert "wrong-token" not in h["last_error"]
        await d.stop()
        assert "wrong-token" not in d.logged() + d.printed()
