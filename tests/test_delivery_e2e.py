"""Through the real daemon to a fake Telegram on loopback: at-least-once delivery, effect once."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from conftest import DaemonProc
from support.fakes import FakeTelegram

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


async def wait_for(cond: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


async def test_telegram_down_then_up_delivers_exactly_once_and_never_leaks_the_token(
    daemon_factory: Callable[..., DaemonProc],
) -> None:
    async with FakeTelegram(token=TOKEN) as tg:
        tg.fail(500, times=2)
        d: DaemonProc = daemon_factory(
            {"mail.toml": WATCH},
            extra_config=f'[notify.phone]\ntype = "telegram"\ntoken = "env:TG_TOKEN"\nchat_id = "42"\n'
            f'api_base = "{tg.url}"\n',
            env={"TG_TOKEN": TOKEN},
        )
        await asyncio.to_thread(d.start)
        await asyncio.to_thread(d.publish, make_event("mail.received", {"urgent": True, "from": "ceo@x.com"}))
        await wait_for(lambda: tg.messages, timeout_s=30)
        await asyncio.sleep(1.0)  # nothing more may arrive
        assert [m["text"] for m in tg.messages] == ["urgent mail from ceo@x.com"]
        (h,) = d.handoffs("urgent")
        assert h["state"] == "delivered" and h["attempt"] == 3
        states = [s for (s,) in d.query("SELECT state FROM transitions WHERE handoff_id = ? ORDER BY id", (h["id"],))]
        assert states == ["pending", "delivering", "retrying", "delivering", "retrying", "delivering", "delivered"]
        handoffs_json = (await asyncio.to_thread(d.cli, "handoffs", "--json")).stdout
        status_json = (await asyncio.to_thread(d.cli, "status", "--json")).stdout
        assert json.loads(handoffs_json)[0]["state"] == "delivered"
        await asyncio.to_thread(d.term)
        for text in (handoffs_json, status_json, d.stdout(), d.stderr()):
            assert TOKEN not in text and "SECRET-do-not-leak" not in text


async def test_unauthorized_target_is_dead_lettered_at_once_with_a_reason(
    daemon_factory: Callable[..., DaemonProc],
) -> None:
    async with FakeTelegram(token="111:right") as tg:
        d: DaemonProc = daemon_factory(
            {"mail.toml": WATCH},
            extra_config=f'[notify.phone]\ntype = "telegram"\ntoken = "222:wrong-token"\nchat_id = "42"\n'
            f'api_base = "{tg.url}"\n',
        )
        await asyncio.to_thread(d.start)
        await asyncio.to_thread(d.publish, make_event("mail.received", {"urgent": True, "from": "a@b.c"}))
        (h,) = await wait_for(lambda: [h for h in d.handoffs("urgent") if h["state"] == "dead"])
        assert h["attempt"] == 1
        assert "notify.phone" in h["last_error"] and "token" in h["last_error"]
        assert "wrong-token" not in h["last_error"]
        await asyncio.to_thread(d.term)
        assert "wrong-token" not in d.stderr() + d.stdout()
