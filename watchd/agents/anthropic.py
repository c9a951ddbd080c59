"""The `anthropic` agent: one handoff, one bounded, checkpointed, budgeted run of a tool-using model.

A run is a loop of steps. A step is one Messages API call plus the tools it asked for; the call's answer
is written to SQLite as soon as it returns and each tool's result as soon as the tool ran, so a crash or
a restart resumes after the last completed thing (store/runs.py), and tool effects carry the handoff's key
(tools.py). The envelope is enforced here, never left to the prompt:

- `max_steps` model calls per run, `max_tokens` per call, `timeout` of time spent running (a run paused
  for a retry or a budget does not count its pause), `run_token_budget` per run;
- `daily_token_budget` per agent and `[budget] daily_tokens` for all agents, per UTC day. A handoff
  that would exceed one waits instead of running: the delivery is a `Retry(wait=True)` until the next
  UTC midnight, with a detail that starts `budget_exhausted:` (so `status` and `explain` show it).

A run that hits a limit stops with its transcript saved and the limit named, in the outcome and in
`agent_runs`; `watchd dlq replay` starts a new run that continues the transcript with a fresh envelope.

Errors are classified here, not by the SDK (its `max_retries` is 0: it would honour any retry-after,
uncapped): timeouts, connection errors, 408/409/429/5xx/529 retry with the server's retry-after capped
at 10 minutes; 400/401/403/404 dead-letter; a prompt that is too long retries at once with
`fallback_model`, else with fewer evidence events, else stops at the `context_length` limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import time
from collections.abc import Callable
from typing import Any

import anthropic
from nats.js import JetStreamContext

from watchd.agents import batch, memory
from watchd.agents.budget import InFlight
from watchd.agents.envelope import (
    MIN_OUTPUT_TOKENS,
    Usage,
    allowance,
    cost_usd,
    day_start,
    estimate_tokens,
    handoff_turn,
    next_reset,
    price_for,
    system_blocks,
    with_breakpoint,
)
from watchd.agents.tools import Toolbox, ToolUnavailable, content_blocks, done_of, text_of
from watchd.config import AnthropicAgent, Config, model_tiers
from watchd.cron.schedule import format_duration, parse_duration
from watchd.dispatch import Dead, Delivered, Outcome, Retry
from watchd.model import Handoff, iso
from watchd.notify.http_client import resolve, scrub
from watchd.store import Store, agent_state, runs
from watchd.store.db import Write
from watchd.store.runs import Run, Step

log = logging.getLogger("watchd.agents.anthropic")

MAX_RETRY_AFTER_S = 600.0
REQUEST_TIMEOUT_S = 600.0  # one call never waits longer, whatever is left of the run's timeout
RETRY_STATUSES = frozenset({408, 409, 429})
TOO_LONG_MARKERS = ("prompt is too long", "context length", "context window", "too many tokens")


class _Stop(Exception):
    """Leave the run loop with this outcome; `failure` is its class for `escalate_on`."""

    def __init__(self, outcome: Outcome, failure: str | None = None) -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.failure = failure


class _TooLong(Exception):
    pass


def _retry_after_s(headers: Any) -> float | None:
    """retry-after-ms, retry-after as seconds or as an HTTP-date; capped."""
    try:
        if headers.get("retry-after-ms"):
            return min(float(headers["retry-after-ms"]) / 1000, MAX_RETRY_AFTER_S)
        raw = headers.get("retry-after")
        if not raw:
            return None
        try:
            seconds = float(raw)
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(raw)
            seconds = parsed.timestamp() - time.time()
        return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)
    except (TypeError, ValueError, KeyError):
        return None


class AnthropicRunner:
    def __init__(
        self,
        cfg: AnthropicAgent,
        *,
        name: str,
        config: Config,
        store: Store,
        js: JetStreamContext | None = None,
        on_watch: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
        in_flight: InFlight | None = None,
    ) -> None:
        self.cfg = cfg
        self.name = name
        self.config = config
        self.in_flight = in_flight or InFlight()
        self.store = store
        self.clock = clock
        self.on_watch = on_watch
        self.timeout_s = parse_duration(cfg.timeout)
        self.request_timeout_s = REQUEST_TIMEOUT_S
        self._api_key = resolve(name, cfg.api_key, "api_key") or ""
        # max_retries=0: every failure comes back here to be classified, and the dispatcher backs off.
        self.client = anthropic.AsyncAnthropic(
            api_key=self._api_key, base_url=cfg.base_url, max_retries=0, timeout=REQUEST_TIMEOUT_S
        )
        self.tiers = model_tiers(cfg)
        self.toolbox = Toolbox(cfg, agent=name, js=js, store=store)
        self.tools = self.toolbox.specs()
        self.system = system_blocks(cfg.instructions, cfg.cache_ttl)

    def __repr__(self) -> str:
        return f"AnthropicRunner({self.name!r})"

    # ---- the dispatcher's interface ----

    async def deliver(self, h: Handoff) -> Outcome:
        if self.cfg.batch:
            return await batch.enqueue(self, h)
        run = await self.store.call(runs.last_run, h.id)
        if run is not None and run.outcome == "done":  # finished before (a retry after a crash): never again
            return Delivered(run.detail or "done", state="done")
        steps = await self.store.call(runs.steps_of, h.id)
        if run is not None and run.ended_at is not None and self.cfg.state is not None:
            # a stopped run continued by hand (`dlq replay`): its checkpoint is resumed here, not by the next trigger
            resumed = agent_state.resume_checkpoint(self.name, h.watch, h.key or "", h.id, h.id)
            await self.store.call(resumed)
        if run is None or run.ended_at is not None:
            first = self.params(self.tiers[0], [{"role": "user", "content": handoff_turn(h)}], self.cfg.max_tokens)
            need = estimate_tokens(first) + MIN_OUTPUT_TOKENS
            beyond = self.beyond_any_day(need)
            if beyond:
                return Dead(f"{self.name}: the handoff {beyond}")
            wait = await self.budget_wait(need)
            if wait is not None:
                return wait
            run = await self.store.call(runs.new_run, h.id, self.name, self.tiers[0], self.clock())
        return await self._drive(h, run, steps)

    async def probe(self) -> tuple[bool, str]:
        """Whether the API answers for this model and key (a models lookup: no tokens spent)."""
        try:
            for model in self.tiers:
                await self.client.models.retrieve(model, timeout=15)
        except anthropic.APIStatusError as exc:
            return False, f"HTTP {exc.status_code} for model {model}"
        except anthropic.APIError as exc:
            return False, f"cannot reach the API: {type(exc).__name__}"
        return True, f"model {' < '.join(self.tiers)} available"

    async def close(self) -> None:
        await self.client.close()

    async def poll_batches(self) -> int:
        """Submit queued batch requests and collect finished batches; the number of handoffs completed."""
        return await batch.poll(self) if self.cfg.batch else 0

    # ---- budgets ----

    async def tokens_today(self) -> tuple[int, int]:
        since = day_start(self.clock())
        agent = await self.store.call(runs.tokens_since, since, self.name)
        everyone = await self.store.call(runs.tokens_since, since)
        held_agent, held_all = self.in_flight.held(self.name)
        return agent + held_agent, everyone + held_all

    async def daily_left(self) -> tuple[int, int | None]:
        agent, everyone = await self.tokens_today()
        cap = self.config.budget.daily_tokens
        return self.cfg.daily_token_budget - agent, None if cap is None else cap - everyone

    async def budget_wait(self, need: int) -> Retry | None:
        """A wait until the budgets reset, when `need` tokens would exceed today's agent or global budget."""
        agent_left, global_left = await self.daily_left()
        a = allowance(run_left=need, agent_left=agent_left, global_left=global_left)
        if a.tokens >= need:
            return None
        return self.exhausted(a.binding)

    def beyond_any_day(self, need: int) -> str | None:
        """Why waiting cannot help: `need` tokens are more than a whole day's budget allows."""
        cap = self.config.budget.daily_tokens
        if need > self.cfg.daily_token_budget:
            return f"needs ~{need} tokens, more than a whole daily_token_budget ({self.cfg.daily_token_budget})"
        if cap is not None and need > cap:
            return f"needs ~{need} tokens, more than a whole day of [budget] daily_tokens ({cap})"
        return None

    def exhausted(self, binding: str) -> Retry:
        now = self.clock()
        reset = next_reset(now)
        if binding == "global_daily_budget":
            which = f"the global [budget] daily_tokens ({self.config.budget.daily_tokens})"
        else:
            which = f"{self.name}'s daily_token_budget ({self.cfg.daily_token_budget})"
        detail = f"budget_exhausted: {which} is spent for today (UTC); waiting until {iso(reset)}"
        return Retry(detail, retry_after_s=max(1.0, reset - now), wait=True)

    # ---- the run ----

    def params(
        self, model: str, messages: list[dict[str, Any]], max_tokens: int, state: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        cache = self.cfg.max_steps > 1 and not self.cfg.batch  # a one-call run never reads its conversation back
        return {
            "model": model,
            "max_tokens": max_tokens,
            "system": self.system if state is None else [*self.system, state],
            "tools": self.tools,
            "messages": with_breakpoint(messages, self.cfg.cache_ttl) if cache else messages,
        }

    async def _drive(self, h: Handoff, run: Run, steps: list[Step]) -> Outcome:
        started = time.monotonic()
        left = self.timeout_s - run.active_s
        try:
            if left <= 0:
                raise TimeoutError
            async with asyncio.timeout(left):
                outcome = await self._loop(h, run, steps)
        except TimeoutError:
            outcome = await self._limit(run, "timeout", f"ran for {format_duration(self.timeout_s)}", h)
        except _Stop as stop:
            outcome = stop.outcome
            if isinstance(outcome, Dead):
                await self.store.call(runs.close_run, run.id, self.clock(), "error", outcome.detail)
        except ToolUnavailable as exc:
            outcome = Retry(f"{self.name}: {exc.message}")
        finally:
            spent = time.monotonic() - started
            with contextlib.suppress(Exception):
                await self.store.call(runs.note_run, run.id, active_s=spent)
        if isinstance(outcome, Retry):  # the run stays open: say why it paused
            await self.store.call(
                runs.note_run, run.id, active_s=0, detail=outcome.detail, limit_hit=_limit_of(outcome.detail)
            )
        return outcome

    async def _limit(self, run: Run, limit: str, why: str, h: Handoff | None = None) -> Outcome:
        detail = f"limit {limit}: {why}; stopped after {run.steps} steps and {run.tokens} tokens (transcript kept)"
        if h is not None and self.cfg.state is not None and limit in memory.RESUMABLE and run.steps:
            # work left: the next handoff for this watch and key picks the conversation up from here
            detail += "; checkpointed: the next trigger for this watch and key resumes it"
            args = (self.name, h.watch, h.key or "", h.id, run.id, limit, self.clock())
            await self.store.call(agent_state.add_checkpoint, *args)
        await self.store.call(runs.close_run, run.id, self.clock(), "limit", detail, limit)
        log.warning("%s: run %s stopped: %s", self.name, run.id, detail)
        return Dead(detail)

    async def _finish(self, run: Run, last: Step) -> Outcome:
        done = done_of(last)
        status, summary = (done.status, done.summary) if done else ("resolved", text_of(last.response) or "done")
        detail = f"{status}: {summary}"[:1000]
        await self.store.call(runs.close_run, run.id, self.clock(), "done", detail)
        return Delivered(detail, state="done")

    async def _memory(self, h: Handoff, steps: list[Step]) -> tuple[dict[str, Any] | None, list[dict[str, Any]], Any]:
        """What this run remembers: the state block for the system prompt, the conversation of a checkpoint
        it resumes, and (before its first step) that checkpoint and its last step."""
        if self.cfg.state is None:
            return None, [], None
        scope = memory.scope_of(self.cfg.state, self.name, h)
        block = memory.state_block(await self.store.call(agent_state.current, scope), scope, self.cfg.cache_ttl)
        if steps:
            resumed = steps[0].meta.get("resumed_from")
            prefix = await self.store.call(memory.conversation, str(resumed)) if resumed else []
            return block, prefix, None
        found = await self.store.call(memory.resumable, self.name, h)
        if found is None:
            return block, [], None
        return block, await self.store.call(memory.conversation, found[0].handoff_id), found

    async def _loop(self, h: Handoff, run: Run, steps: list[Step]) -> Outcome:
        state, messages, resume = await self._memory(h, steps)
        for s in steps:
            messages += [{"role": "user", "content": s.request}, {"role": "assistant", "content": s.response}]
        model = run.model
        evidence_cap: int | None = None
        escalation: dict[str, str] | None = None  # what moved this run up a tier, for the next step's record
        while True:
            last = steps[-1] if steps else None
            if last is not None:
                ran = last.pending_tools()
                for block in ran:
                    out = await self.toolbox.run(h, last.n, block, self.clock())
                    effect = out.effect
                    if out.escalate is not None:
                        out.block, effect, escalation = self._escalation(run, last.n, model, out.escalate, out.block)
                        model = escalation["to"] if escalation else model
                    await self.store.call(runs.record_tool_result, h.id, last.n, block["id"], out.block, effect)
                    last.tool_results[block["id"]] = out.block
                    if out.watch_added and self.on_watch is not None:
                        self.on_watch()
                if done_of(last) is not None or not last.tool_uses():
                    return await self._finish(run, last)
                bad = [b for b in ran if str(last.tool_results[b["id"]].get("content", "")).startswith("invalid")]
                if bad and escalation is None and "tool_error" in self.cfg.escalate_on:
                    escalation = await self._escalate(run, last.n, model, "tool_error: invalid tool arguments")
                    model = escalation["to"] if escalation else model
            if run.steps >= self.cfg.max_steps:
                return await self._limit(run, "max_steps", f"{self.cfg.max_steps} model calls", h)
            if last is not None:
                turn = [last.tool_results[b["id"]] for b in last.tool_uses()]
            elif resume is not None:
                turn = memory.resume_turn(resume[0], resume[1], handoff_turn(h, max_evidence=evidence_cap))
            else:
                turn = handoff_turn(h, max_evidence=evidence_cap)
            asked = [*messages, {"role": "user", "content": turn}]
            params = self.params(model, asked, self.cfg.max_tokens, state)
            need = estimate_tokens(params)
            agent_left, global_left = await self.daily_left()
            run_left = self.cfg.run_token_budget - run.tokens
            a = allowance(run_left=run_left, agent_left=agent_left, global_left=global_left)
            if a.tokens < need + MIN_OUTPUT_TOKENS:
                if a.binding == "run_token_budget":
                    why = f"{run.tokens} of {self.cfg.run_token_budget} tokens used, the next call needs ~{need}"
                    return await self._limit(run, "run_token_budget", why, h)
                beyond = self.beyond_any_day(need + MIN_OUTPUT_TOKENS)
                if beyond:
                    return await self._limit(run, a.binding, f"the next call {beyond}")
                return self.exhausted(a.binding)
            params["max_tokens"] = min(self.cfg.max_tokens, a.tokens - need)
            try:
                content, usage, latency = await self._call(params, need)
            except _Stop as stop:
                nxt = self._next_tier(model)
                if nxt is None or stop.failure not in self.cfg.escalate_on:
                    raise
                reason = f"{stop.failure}: {stop.outcome.detail}"
                escalation = await self._escalate(run, last.n if last else 0, model, reason)
                model = nxt
                continue
            except _TooLong:
                if self.cfg.fallback_model and model != self.cfg.fallback_model:
                    log.info("%s: prompt too long for %s; retrying with %s", self.name, model, self.cfg.fallback_model)
                    model = self.cfg.fallback_model
                    continue
                if last is None and (evidence_cap is None or evidence_cap > 0) and h.evidence:
                    evidence_cap = len(h.evidence) // 2 if evidence_cap is None else evidence_cap // 2
                    continue
                return await self._limit(run, "context_length", f"the prompt is too long for {model}")
            n = (last.n + 1) if last else 1
            price = price_for(model, self.config.prices)
            cost = cost_usd(usage, price, cache_ttl=self.cfg.cache_ttl)
            meta: dict[str, Any] = {"max_tokens": params["max_tokens"], "messages": len(asked)}
            if escalation is not None:
                meta["escalation"], escalation = escalation, None
            effect = None
            if last is None and resume is not None:  # the checkpoint is resumed once this step is stored
                meta["resumed_from"] = resume[0].handoff_id
                effect = agent_state.resume_checkpoint(self.name, h.watch, h.key or "", resume[0].handoff_id, h.id)
            await self.store.call(
                runs.record_step,
                run,
                n,
                at=self.clock(),
                model=model,
                request=turn,
                response=content,
                usage=usage,
                cost=cost,
                latency_s=latency,
                meta=meta,
                effect=effect,
            )
            run.steps += 1
            run.input_tokens += usage.input
            run.output_tokens += usage.output
            run.cache_read_tokens += usage.cache_read
            run.cache_write_tokens += usage.cache_write
            steps.append(Step(n, run.id, model, turn, content, {}, meta))
            messages = [*asked, {"role": "assistant", "content": content}]

    # ---- model tiers ----

    def _next_tier(self, model: str) -> str | None:
        """The next larger model of `models` (None at the top, or for a model outside the list: a fallback)."""
        if model not in self.tiers:
            return None
        i = self.tiers.index(model)
        return self.tiers[i + 1] if i + 1 < len(self.tiers) else None

    def _escalation(
        self, run: Run, n: int, model: str, reason: str, block: dict[str, Any]
    ) -> tuple[dict[str, Any], Write | None, dict[str, str] | None]:
        """The model's `escalate` call: its result, the write that moves the run up, and the record of it."""
        nxt = self._next_tier(model)
        if nxt is None:
            return (
                {**block, "content": f"refused: {model} is already the largest model here", "is_error": True},
                None,
                None,
            )
        log.info("%s: run %s escalates from %s to %s: %s", self.name, run.id, model, nxt, reason[:200])
        result = {**block, "content": f"escalated: the next step runs on {nxt}"}
        return result, runs.escalate(run.id, n, model, nxt, reason), {"from": model, "to": nxt, "reason": reason}

    async def _escalate(self, run: Run, n: int, model: str, reason: str) -> dict[str, str] | None:
        """Move the run up a tier for a failure class the config names; None at the top."""
        nxt = self._next_tier(model)
        if nxt is None:
            return None
        log.info("%s: run %s escalates from %s to %s: %s", self.name, run.id, model, nxt, reason[:200])
        await self.store.call(runs.escalate(run.id, n, model, nxt, reason))
        return {"from": model, "to": nxt, "reason": reason}

    async def _call(self, params: dict[str, Any], reserve: int) -> tuple[list[dict[str, Any]], Usage, float]:
        """One Messages API call, its failures classified into a `_Stop` (or `_TooLong`)."""
        t0 = time.monotonic()
        try:
            with self.in_flight.hold(self.name, reserve + int(params["max_tokens"])):
                msg = await self.client.messages.create(**params, timeout=self.request_timeout_s)
        except anthropic.APITimeoutError:
            raise _Stop(Retry(f"{self.name}: the API did not answer in time"), "timeout") from None
        except anthropic.APIConnectionError as exc:
            raise _Stop(Retry(f"{self.name}: cannot reach the API ({type(exc).__name__})")) from None
        except anthropic.APIStatusError as exc:
            raise self._classify(exc) from None
        return content_blocks(msg.content), Usage.of(msg.usage), time.monotonic() - t0

    def _classify(self, exc: anthropic.APIStatusError) -> Exception:
        status = exc.status_code
        body = exc.body if isinstance(exc.body, dict) else {}
        err = body.get("error")
        err = err if isinstance(err, dict) else {}
        kind = str(err.get("type") or "error")
        message = scrub(str(err.get("message") or "")[:300], [self._api_key])
        if status == 400 and any(m in message.lower() for m in TOO_LONG_MARKERS):
            return _TooLong()
        detail = f"{self.name}: HTTP {status} {kind}" + (f": {message}" if message else "")
        if status in RETRY_STATUSES or status >= 500:
            failure = {429: "rate_limited", 529: "overloaded"}.get(status, "server_error")
            return _Stop(Retry(detail, retry_after_s=_retry_after_s(exc.response.headers)), failure)
        if status in (401, 403):
            detail += f" (check `api_key` of [{self.name}])"
        elif status == 404:
            detail += f" (check `model` of [{self.name}])"
        return _Stop(Dead(detail))


def _limit_of(detail: str) -> str | None:
    """The budget a waiting run is paused on, for its run record."""
    if detail.startswith("budget_exhausted:"):
        return "global_daily_budget" if "[budget] daily_tokens" in detail else "daily_token_budget"
    return None
