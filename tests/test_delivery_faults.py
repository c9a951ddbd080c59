"""Delivery under faults, through the real daemon with its embedded NATS to fake services on loopback: a
target that hangs holds up only itself, a kill -9 mid-delivery is retried once with the same id, and a
receiver that is down for a while gets each handoff exactly once when it comes back.

The kill -9 needs a real process; the fakes run in the test's event loop, so every blocking DaemonProc
call there goes through asyncio.to_thread. The other two run the daemon in the test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from support.clocks import VirtualClock
from support.fake_telegram import FakeTelegram
from support.fakes import FakeWebhook, Reply, Request
from support.inprocess import InProcessDaemon
from support.processes import DaemonProc
from support.waiting import until

from watchd import bus
from watchd.model import make_event

TOKEN = "424242:fault-test-token"
PROMPT_S = 2.0  # "promptly": an event's message reaches a healthy target within this of its publish


@contextlib.asynccontextmanager
async def publisher(url: str) -> AsyncIterator[Callable[..., Any]]:
    """Publish events straight to the daemon's embedded NATS from the test loop; returns the publish time."""
    nc = await bus.connect(url, name="fault-test")
    js = nc.jetstream()

    async def emit(subject: str, data: dict[str, Any]) -> tuple[str, float]:
        event = make_event(subject, data)
        sent = time.time()
        await bus.publish_event(js, event)
        return event.id, sent

    try:
        yield emit
    finally:
        await nc.close()


def telegram_config(name: str, tg: FakeTelegram) -> str:
    return f'[notify.{name}]\ntype = "telegram"\ntoken = "{tg.token}"\nchat_id = "42"\napi_base = "{tg.url}"\n'


def webhook_config(name: str, hook: FakeWebhook) -> str:
    return f'[notify.{name}]\ntype = "webhook"\nurl = "{hook.hook_url}"\n'


def arrival(tg: FakeTelegram, text: str) -> float | None:
    """When the fake Telegram received (and answered ok) the message with this text."""
    for req in tg.requests_to():
        if isinstance(req.json, dict) and req.json.get("text") == text and req.json in tg.messages:
            return req.at
    return None


# ---- 1. a stalled target holds up only itself ---------------------------------------------------------------

STALL_WATCHES = """
[[watch]]
id = "both"
kind = "match"
on = { subject = "job.done" }
then = ["notify.slow", "notify.fast"]
message = "both {event.data.n}"

[[watch]]
id = "fast-only"
kind = "match"
on = { subject = "ping.sent" }
then = ["notify.fast"]
message = "fast {event.data.n}"
"""


async def test_a_stalled_target_delays_neither_other_targets_nor_the_engine(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    async with FakeTelegram(token=TOKEN) as tg, FakeWebhook() as hook:
        hook.stall(20, times=100)  # every request hangs 20 s (the notifier gives up after 10 s)
        d = daemon_factory(
            {"w.toml": STALL_WATCHES}, extra_config=webhook_config("slow", hook) + telegram_config("fast", tg)
        )
        await d.start()
        async with publisher(d.nats_url) as emit:
            # Six fires to both targets: the slow one takes four at a time (its limit) and hangs on them.
            sent: dict[str, float] = {}
            for n in range(6):
                _, sent[f"both {n}"] = await emit("job.done", {"n": n})
                await asyncio.sleep(0.1)
            await until(lambda: all(arrival(tg, t) for t in sent), PROMPT_S + 3, "fast messages, first round")
            await until(lambda: len(hook.requests_to()) >= 4, 5, "the slow target's requests in flight")
            slow_since = min(r.at for r in hook.requests_to())

            # While the slow target hangs: more events, to both targets and to the fast one only.
            await asyncio.sleep(1.0)
            ids: list[str] = []
            for n in range(6, 12):
                subject, text = ("ping.sent", f"fast {n}") if n % 2 else ("job.done", f"both {n}")
                event_id, sent[text] = await emit(subject, {"n": n})
                ids.append(event_id)
                await asyncio.sleep(0.1)
            await until(lambda: all(arrival(tg, t) for t in sent), PROMPT_S + 3, "fast messages, second round")

            for text, at in sent.items():
                got = arrival(tg, text)
                assert got is not None and got - at < PROMPT_S, f"{text!r} took {got - at if got else None:.2f}s"
            assert sorted(m["text"] for m in tg.messages) == sorted(sent), "each fast message exactly once"
            # The engine kept deciding: every new event has its fired decision.
            fired = {x["event_id"] for x in d.decisions(None, "fired")}
            assert set(ids) <= fired

            # And the slow target is still hanging: nothing completed, nothing beyond its concurrency limit.
            assert hook.handoff_ids == []
            slow = [h for h in d.handoffs() if h["target"] == "notify.slow"]
            # Only what the target can start is claimed; the rest waits `pending`, costing no attempt.
            states = sorted(h["state"] for h in slow)
            assert len(slow) == 9 and states.count("delivering") <= 4
            if time.time() - slow_since < 9:  # before the notifier's 10 s timeout frees a slot
                assert states == ["delivering"] * 4 + ["pending"] * 5
                assert len(hook.requests_to()) == 4
            fast = [h for h in d.handoffs() if h["target"] == "notify.fast"]
            assert len(fast) == 12 and all(h["state"] == "delivered" for h in fast)


# ---- 2. kill -9 while a delivery is in flight ---------------------------------------------------------------


class ProcessThenHang(FakeWebhook):
    """A receiver that processes the first request (records its handoff id) and then never answers it:
    the effect happened, the sender cannot know."""

    def __init__(self) -> None:
        super().__init__()
        self.hang_first = 1

    async def respond(self, req: Request) -> Reply:
        reply = await super().respond(req)
        if self.hang_first > 0:
            self.hang_first -= 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), 60)
        return reply


KILL_WATCH = """
[[watch]]
id = "urgent"
kind = "match"
on = { subject = "mail.received" }
then = ["notify.phone", "notify.hook"]
message = "mail {event.data.n}"
"""


@pytest.mark.usefixtures("subreaper")  # the kill -9'd daemon leaves its nats-server behind, as after a crash
async def test_kill9_mid_delivery_is_retried_once_with_the_same_id_and_never_again(
    process_factory: Callable[..., DaemonProc],
) -> None:
    async with FakeTelegram(token=TOKEN) as tg, ProcessThenHang() as hook:
        tg.stall(60)  # the first sendMessage hangs unanswered and unprocessed
        d: DaemonProc = process_factory(
            {"mail.toml": KILL_WATCH}, extra_config=telegram_config("phone", tg) + webhook_config("hook", hook)
        )
        await asyncio.to_thread(d.start)
        async with publisher(d.nats_url) as emit:
            await emit("mail.received", {"n": 1})
        await until(lambda: tg.requests_to() and hook.requests_to(), 10, "both requests in flight")
        before = {h["target"]: h for h in await asyncio.to_thread(d.handoffs, "urgent")}
        assert {h["state"] for h in before.values()} == {"delivering"}
        await asyncio.to_thread(d.kill9)
        assert tg.messages == []  # Telegram never completed the first attempt
        assert hook.handoff_ids == [before["notify.hook"]["id"]]  # the receiver did process it

        await asyncio.to_thread(d.start)

        def settled() -> dict[str, dict[str, Any]] | None:
            hs = {h["target"]: h for h in d.handoffs("urgent")}
            return hs if {h["state"] for h in hs.values()} == {"delivered"} else None

        after = await until(lambda: settled(), 15, "both handoffs delivered after the restart")
        for target in ("notify.phone", "notify.hook"):
            h = after[target]
            assert h["id"] == before[target]["id"] and h["attempt"] == 2
            assert d.states(h["id"]) == ["pending", "delivering", "retrying", "delivering", "delivered"]
        # Telegram: two requests with the same text, one completed message.
        assert [r.json["text"] for r in tg.requests_to()] == ["mail 1", "mail 1"]
        assert [m["text"] for m in tg.messages] == ["mail 1"]
        # Webhook: both attempts carry the same handoff id, so the receiver dedups the retry.
        hid = after["notify.hook"]["id"]
        reqs = hook.requests_to()
        assert [r.headers["X-Watchd-Handoff-Id"] for r in reqs] == [hid, hid]
        assert [r.headers["X-Watchd-Attempt"] for r in reqs] == ["1", "2"]
        assert hook.handoff_ids == [hid, hid] and hook.unique_ids == {hid}

        # Once delivered, never sent again: not by this daemon, nor by another restart.
        await asyncio.to_thread(d.term)
        await asyncio.to_thread(d.start)
        await asyncio.sleep(2.5)  # longer than the dispatcher's poll interval
        assert len(tg.requests_to()) == 2 and len(hook.requests_to()) == 2
        assert {h["state"] for h in await asyncio.to_thread(d.handoffs, "urgent")} == {"delivered"}


# ---- 3. 500 for a while, then recovery ----------------------------------------------------------------------


class DownForAWhile(FakeWebhook):
    """Answers 500 to everything until `down_s` after its first request (by `clock`), then works normally."""

    def __init__(self, down_s: float, clock: VirtualClock) -> None:
        super().__init__()
        self.down_s = down_s
        self.clock = clock
        self.down_since: float | None = None
        self.failed: list[Request] = []

    async def respond(self, req: Request) -> Reply:
        now = self.clock()
        if self.down_since is None:
            self.down_since = now
        if now - self.down_since < self.down_s:
            self.failed.append(req)
            return self.error_reply(500)
        return await super().respond(req)


RECOVER_WATCH = """
[[watch]]
id = "jobs"
kind = "match"
on = { subject = "job.failed" }
then = ["notify.hook"]
"""


async def test_a_receiver_down_for_a_while_gets_each_handoff_exactly_once_when_back(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = daemon_factory({"jobs.toml": RECOVER_WATCH})  # on a virtual clock: the outage and the backoffs
    async with DownForAWhile(down_s=2.5, clock=d.clock) as hook:
        d.write_config(webhook_config("hook", hook))
        await d.start()
        async with publisher(d.nats_url) as emit:
            for n in range(3):
                await emit("job.failed", {"n": n})
        await until(lambda: len(d.handoffs("jobs")) == 3, what="three handoffs")  # all first tried at one instant

        def settled() -> list[dict[str, Any]] | None:
            hs = d.handoffs("jobs")
            return hs if len(hs) == 3 and all(h["state"] == "delivered" for h in hs) else None

        handoffs = await d.advance_until(settled, step_s=0.5, limit_s=60, what="all three delivered after the outage")
        ids = {h["id"] for h in handoffs}
        assert len(hook.failed) >= 6  # each was refused at least twice while the receiver was down
        assert sorted(hook.handoff_ids) == sorted(ids)  # accepted exactly once each
        for h in handoffs:
            attempts = [
                r.headers["X-Watchd-Attempt"] for r in hook.requests_to() if r.headers["X-Watchd-Handoff-Id"] == h["id"]
            ]
            assert attempts == [str(i) for i in range(1, h["attempt"] + 1)] and h["attempt"] >= 3
            assert d.states(h["id"]) == (
                ["pending"] + ["delivering", "retrying"] * (h["attempt"] - 1) + ["delivering", "delivered"]
            )
            assert "500" in (h["last_error"] or "")
        seen = len(hook.requests_to())
        await d.advance(3600)  # nothing more once delivered
        await d.settle()
        assert len(hook.requests_to()) == seen
