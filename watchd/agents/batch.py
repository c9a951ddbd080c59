"""Batch mode: an agent with `batch = true` answers through the Message Batches API, at half price.

For non-urgent work (digests, summaries). `deliver` only queues the request (the handoff becomes
`accepted`, "queued for the Message Batches API"); `poll` — called by the heartbeat job, or every
minute by the daemon when no heartbeat is scheduled — submits what is queued as one batch (as much as
today's budgets allow; the rest waits for tomorrow), and collects finished batches: each result is
recorded as a one-step run, its tool calls are carried out (their results are not sent back: a batch
run is a single model turn), and the handoff is settled `done` (or `dead` with the API's reason).
Everything is keyed by handoff id, so a poll interrupted by a crash is simply done again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import anthropic

from watchd.agents.envelope import Usage, cost_usd, estimate_tokens, handoff_turn, price_for
from watchd.agents.tools import content_blocks, done_of, text_of
from watchd.dispatch import Delivered, Outcome
from watchd.model import Handoff
from watchd.store import batches, outbox, runs
from watchd.store.runs import Step
from watchd.upkeep import BACKOFF_CAP_S, Backoff, Upkeep

if TYPE_CHECKING:
    from watchd.agents.anthropic import AnthropicRunner
    from watchd.dispatch import Target

log = logging.getLogger("watchd.agents.batch")

POLL_EVERY_S = 60.0
RETRYABLE = frozenset({"api_error", "overloaded_error", "rate_limit_error", "timeout_error"})


async def enqueue(runner: AnthropicRunner, h: Handoff) -> Outcome:
    params = runner.params(runner.cfg.model, [{"role": "user", "content": handoff_turn(h)}], runner.cfg.max_tokens)
    state = await runner.store.call(batches.queue_batch_item, h.id, runner.name, params, runner.clock())
    if state == "done":
        return Delivered("answered in an earlier batch", state="done")
    return Delivered(f"{state} for the Message Batches API (collected by the heartbeat)", state="accepted")


async def poll(runner: AnthropicRunner) -> int:
    await _submit(runner)
    settled = 0
    for batch_id in await runner.store.call(batches.open_batches, runner.name):
        try:
            batch = await runner.client.messages.batches.retrieve(batch_id)
            if batch.processing_status != "ended":
                continue
            results = [r async for r in await runner.client.messages.batches.results(batch_id)]
        except anthropic.APIError as exc:
            log.warning("%s: cannot read batch %s: %s", runner.name, batch_id, type(exc).__name__)
            continue
        for r in results:
            settled += await _settle(runner, r.custom_id, r.result)
    return settled


async def _submit(runner: AnthropicRunner) -> None:
    store = runner.store
    items = await store.call(batches.queued_items, runner.name)
    if not items:
        return
    agent_left, global_left = await runner.daily_left()
    # Requests already out in a batch have not been counted yet: reserve their worst case, so two
    # polls before results arrive cannot overshoot a daily budget.
    for agent, params in await store.call(batches.submitted_items):
        need = estimate_tokens(params) + int(params["max_tokens"])
        global_left = None if global_left is None else global_left - need
        if agent == runner.name:
            agent_left -= need
    left = agent_left if global_left is None else min(agent_left, global_left)
    take: list[tuple[str, dict[str, Any]]] = []
    for hid, params in items:  # the worst case of each request must fit today's budgets
        need = estimate_tokens(params) + int(params["max_tokens"])
        if need > left:
            log.info("%s: %d batch requests wait for tomorrow's budget", runner.name, len(items) - len(take))
            break
        take.append((hid, params))
        left -= need
    if not take:
        return
    try:
        batch = await runner.client.messages.batches.create(
            requests=[{"custom_id": hid, "params": params} for hid, params in take]  # type: ignore[typeddict-item]
        )
    except anthropic.APIError as exc:
        log.warning("%s: batch submission failed (%s); retried at the next poll", runner.name, type(exc).__name__)
        return
    await store.call(batches.mark_submitted, [hid for hid, _ in take], batch.id, runner.clock())
    log.info("%s: submitted batch %s with %d requests", runner.name, batch.id, len(take))


async def _settle(runner: AnthropicRunner, hid: str, result: Any) -> int:
    store = runner.store
    now = runner.clock()
    h = await store.call(outbox.get_handoff, hid)
    if h is None:  # the handoff is gone (a fresh state store): nothing to settle
        await store.call(batches.set_batch_item, hid, "done", now)
        return 0
    if result.type != "succeeded":
        error = getattr(getattr(result, "error", None), "error", None)
        kind = str(getattr(error, "type", result.type))
        if result.type in ("expired", "canceled") or kind in RETRYABLE:
            await store.call(batches.set_batch_item, hid, "queued", now)  # into the next batch
            return 0
        detail = f"{runner.name}: batch request failed: {kind}: {getattr(error, 'message', '')}"[:500]
        await store.call(batches.set_batch_item, hid, "failed", now)
        await store.run(store.settle, hid, "dead", now, detail, ("accepted",))
        return 1
    steps = await store.call(runs.steps_of, hid)
    run = await store.call(runs.last_run, hid)
    if not steps:
        msg = result.message
        usage = Usage.of(msg.usage)
        cost = cost_usd(usage, price_for(msg.model, runner.config.prices), cache_ttl=runner.cfg.cache_ttl, batch=True)
        run = await store.call(runs.new_run, hid, runner.name, msg.model, now)
        turn = handoff_turn(h)
        content = content_blocks(msg.content)
        await store.call(
            runs.record_step,
            run,
            1,
            at=now,
            model=msg.model,
            request=turn,
            response=content,
            usage=usage,
            cost=cost,
            latency_s=0.0,
        )
        steps = [Step(1, run.id, msg.model, turn, content, {})]
    assert run is not None
    step = steps[0]
    for block in step.pending_tools():
        out = await runner.toolbox.run(h, step.n, block, now)
        await store.call(runs.record_tool_result, hid, step.n, block["id"], out.block, out.effect)
        step.tool_results[block["id"]] = out.block
        if out.watch_added and runner.on_watch is not None:
            runner.on_watch()
    done = done_of(step)
    detail = (f"{done.status}: {done.summary}" if done else f"resolved: {text_of(step.response) or 'done'}")[:1000]
    await store.call(runs.close_run, run.id, now, "done", detail)
    was = await store.run(store.settle, hid, "done", now, detail, ("accepted",))
    if was == "delivering":  # the dispatcher has not recorded `accepted` yet: settle at the next poll
        return 0
    await store.call(batches.set_batch_item, hid, "done", now)
    return 1


async def poll_loop(
    targets: Callable[[], Mapping[str, Target]],
    stop: asyncio.Event,
    every_s: float = POLL_EVERY_S,
    upkeep: Upkeep | None = None,
) -> None:
    """Poll every batch agent now and then, for a daemon whose schedules include no heartbeat.
    `targets` gives the current ones (a reload replaces them)."""

    async def poll() -> None:
        failed: list[str] = []
        for name, target in targets().items():
            poller = getattr(target, "poll_batches", None)
            if poller is None:
                continue
            try:
                await poller()
            except Exception:  # one agent's failure must not keep the others from polling
                log.exception("%s: polling batches failed", name)
                failed.append(name)
        if failed:
            raise RuntimeError(f"polling batches of {', '.join(failed)} failed")  # counted by upkeep

    # A failing API is asked again no sooner than the usual interval, and then less and less often.
    backoff = Backoff(base_s=every_s, cap_s=max(every_s, BACKOFF_CAP_S))
    await (upkeep or Upkeep(stop)).every("agent-batches", poll, interval_s=every_s, jitter=0.1, backoff=backoff)
