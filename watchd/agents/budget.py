"""Today's tokens against the daily budgets, as `watchd status` shows them; and the tokens that calls
in flight hold against them (`InFlight`)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections import Counter
from collections.abc import Iterator
from typing import Any

from watchd.agents.envelope import day_start, next_reset
from watchd.config import AnthropicAgent, Config
from watchd.model import iso
from watchd.store.outbox import pending_by_target
from watchd.store.runs import tokens_by_agent


def budget_report(config: Config, conn: sqlite3.Connection | None, now: float) -> dict[str, Any]:
    """Tokens spent today (UTC) per anthropic agent against its budget, the global budget, and how many
    handoffs wait for tomorrow's budget (`budget_exhausted`)."""
    since = day_start(now)
    used: dict[str, int] = {}
    waiting: dict[str, int] = {}
    if conn is not None:
        with contextlib.suppress(sqlite3.OperationalError):  # a state file from before these tables
            used = tokens_by_agent(conn, since)
            waiting = pending_by_target(conn, "budget_exhausted:")
    agents = [
        {
            "agent": f"agent.{name}",
            "tokens": used.get(f"agent.{name}", 0),
            "daily_token_budget": a.daily_token_budget,
            "budget_exhausted": waiting.get(f"agent.{name}", 0),
        }
        for name, a in sorted(config.agent.items())
        if isinstance(a, AnthropicAgent)
    ]
    return {
        "day": iso(since),
        "resets_at": iso(next_reset(now)),
        "tokens": sum(used.values()),
        "daily_tokens": config.budget.daily_tokens,
        "budget_exhausted": sum(waiting.values()),
        "agents": agents,
    }


def budget_lines(report: dict[str, Any]) -> list[str]:
    if not report["agents"]:
        return []
    cap = report["daily_tokens"]
    head = f"tokens today (UTC, resets {report['resets_at']}): {report['tokens']:,}" + (f" of {cap:,}" if cap else "")
    lines = [head]
    for a in report["agents"]:
        waiting = f", {a['budget_exhausted']} handoffs budget_exhausted" if a["budget_exhausted"] else ""
        lines.append(f"  {a['agent']}: {a['tokens']:,} of {a['daily_token_budget']:,}{waiting}")
    return lines


GLOBAL = "*"


class InFlight:
    """Tokens that calls in flight may still spend. One is shared by the anthropic runners of a daemon:
    concurrent runs of an agent (and all agents, for the global budget) see each other's
    reservations, so together they cannot overshoot a budget. Owned by whoever builds the runners,
    never by the module: two daemons in one process keep theirs apart."""

    def __init__(self) -> None:
        self._held: Counter[str] = Counter()

    def held(self, agent: str) -> tuple[int, int]:
        """(held for `agent`, held for all agents)."""
        return self._held[agent], self._held[GLOBAL]

    @contextlib.contextmanager
    def hold(self, agent: str, tokens: int) -> Iterator[None]:
        self._held[agent] += tokens
        self._held[GLOBAL] += tokens
        try:
            yield
        finally:
            self._held[agent] -= tokens
            self._held[GLOBAL] -= tokens
