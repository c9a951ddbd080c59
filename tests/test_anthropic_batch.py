"""Batch mode through the fake Message Batches API, and a budget wait through the real dispatcher:
queued handoffs are `accepted`, submitted as one batch, settled `done` when results arrive; a spent
budget leaves a handoff `pending` until midnight without using up an attempt."""

from __future__ import annotations

import asyncio

import pytest
from support.anthropic_runs import NOW, closing_runners, done, handoff, open_store, rows, runner, serve_fake
from support.clocks import ManualClock
from support.fake_anthropic import FakeAnthropic, api_error, tool_use

from watchd.agents.envelope import next_reset
from watchd.dispatch import Delivered, Dispatcher
from watchd.store import Store

fake = pytest.fixture(serve_fake)
store = pytest.fixture(open_store)
_closing = pytest.fixture(autouse=True)(closing_runners)


def enqueue(store: Store, *hids: str) -> None:
    """Handoffs in the outbox, as the engine puts them there, in state `accepted` (what deliver made them)."""
    for hid in hids:
        h = handoff(hid)
        store.add_handoffs([h], NOW)
        store.finish(hid, "accepted", NOW, "queued")


async def test_batch_handoffs_are_queued_submitted_together_and_settled_with_their_results(
    fake: FakeAnthropic, store: Store
) -> None:
    r = runner(fake, store, batch=True)
    fake.auto_end_batches = False
    for hid in ("h_one", "h_two"):
        assert await r.deliver(handoff(hid)) == Delivered(
            "queued for the Message Batches API (collected by the heartbeat)", state="accepted"
        )
    enqueue(store, "h_one", "h_two")
    assert fake.calls == []  # nothing was sent yet
    assert await r.poll_batches() == 0
    (batch,) = fake.batches.values()
    assert [q["custom_id"] for q in batch.requests] == ["h_one", "h_two"]
    assert "cache_control" not in str(batch.requests[0]["params"]["messages"])
    fake.turns(tool_use("notify", {"to": "notify.phone", "message": "digest ready"}), api_error(400, "bad"))
    fake.end_batch()
    assert await r.poll_batches() == 2
    states = {row["id"]: (row["state"], row["last_error"]) for row in rows(store, "SELECT * FROM handoffs")}
    assert states["h_one"][0] == "done"
    assert states["h_two"][0] == "dead" and "invalid_request_error" in (states["h_two"][1] or "")
    (note,) = [k for k in states if k not in ("h_one", "h_two")]
    assert states[note][0] == "pending"  # the batch answer's notify call was carried out
    (run,) = rows(store, "SELECT * FROM agent_runs")
    assert run["handoff_id"] == "h_one" and run["outcome"] == "done" and run["steps"] == 1
    assert await r.poll_batches() == 0  # settled once
    assert await r.deliver(handoff("h_one")) == Delivered("answered in an earlier batch", state="done")


async def test_batch_runs_cost_half(fake: FakeAnthropic, store: Store) -> None:
    r = runner(fake, store, batch=True)
    usage = {"input_tokens": 1_000_000, "output_tokens": 0}
    fake.turns(tool_use("done", {"status": "resolved", "summary": "x"}, usage=usage))
    await r.deliver(handoff("h_one"))
    enqueue(store, "h_one")
    assert await r.poll_batches() == 1  # submitted, then read back: the fake ends a batch at its first look
    (run,) = rows(store, "SELECT cost_usd FROM agent_runs")
    assert run["cost_usd"] == pytest.approx(0.5)  # haiku input $1/M, half price


async def test_a_budget_wait_through_the_dispatcher_is_pending_until_midnight_and_uses_no_attempt(
    fake: FakeAnthropic, store: Store
) -> None:
    clock = ManualClock(NOW)
    r = runner(fake, store, clock=clock, daily_token_budget=1000)
    fake.turns(tool_use("done", {"status": "resolved", "summary": "x"}, usage={"input_tokens": 990}))
    fake.model = lambda body: done()
    store.add_handoffs([handoff("h_one"), handoff("h_two")], NOW)
    dispatcher = Dispatcher(store, {"agent.triage": r}, clock=clock, per_target=1)
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    try:
        for _ in range(200):
            got = {x["id"]: x for x in rows(store, "SELECT * FROM handoffs")}
            if got["h_one"]["state"] == "done" and (got["h_two"]["last_error"] or "").startswith("budget_exhausted"):
                break
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await task
        await dispatcher.drain(5)
    two = got["h_two"]
    assert two["state"] == "pending" and two["attempt"] == 1
    assert two["next_attempt_at"] == pytest.approx(next_reset(NOW))
    assert len(fake.calls) == 1


async def test_requests_out_in_a_batch_reserve_their_tokens_until_settled(fake: FakeAnthropic, store: Store) -> None:
    r = runner(fake, store, batch=True, daily_token_budget=2_000)  # one worst-case request fits, not two
    fake.auto_end_batches = False
    await r.deliver(handoff("h_one"))
    enqueue(store, "h_one")
    assert await r.poll_batches() == 0
    await r.deliver(handoff("h_two"))
    enqueue(store, "h_two")
    assert await r.poll_batches() == 0  # h_one's results are not in: its worst case still counts
    assert [[q["custom_id"] for q in b.requests] for b in fake.batches.values()] == [["h_one"]]
    fake.turns(done())
    fake.end_batch()
    assert await r.poll_batches() == 1  # h_one settled with its real (small) usage: h_two now fits
    assert await r.poll_batches() == 0
    assert [[q["custom_id"] for q in b.requests] for b in fake.batches.values()] == [["h_one"], ["h_two"]]
