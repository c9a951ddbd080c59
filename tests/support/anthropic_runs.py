"""Helpers for the anthropic agent's tests: a fake API server, a real SQLite store, a runner built on both.

The fixture functions are plain; each test module makes them fixtures (`fake = pytest.fixture(serve_fake)`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec

from support.clocks import ManualClock
from support.fake_anthropic import FakeAnthropic, Turn, tool_use
from support.handoffs import make_handoff
from watchd.agents.anthropic import AnthropicRunner
from watchd.config import AnthropicAgent, BudgetConfig, Config, ConsoleNotifier, Price
from watchd.model import Handoff
from watchd.store import Store

NOW = 1_795_000_000.0  # 2026-11-18, a fixed virtual instant


def handoff(hid: str = "h_0123456789abcdef", **kw: Any) -> Handoff:
    base: dict[str, Any] = {
        "id": hid,
        "watch": "urgent-mail",
        "target": "agent.triage",
        "reason": "urgent mail from bigcustomer",
        "fired_at": "2026-11-18T07:00:00Z",
        "evidence": [
            {
                "id": "e1",
                "subject": "mail.received",
                "data": {"from": "ceo@bigcustomer.com", "subject": "Invoice overdue"},
            }
        ],
    }
    return make_handoff(**{**base, **kw})


async def serve_fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as server:
        yield server


def open_store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "watchd.db")
    yield s
    s.close()


_made: list[AnthropicRunner] = []


async def closing_runners() -> AsyncIterator[None]:
    """Close every runner a test made (their HTTP clients belong to the test's event loop)."""
    yield
    while _made:
        await _made.pop().close()


def runner(
    fake: FakeAnthropic,
    store: Store,
    *,
    clock: ManualClock | None = None,
    budget: int | None = None,
    prices: dict[str, Price] | None = None,
    **kw: Any,
) -> AnthropicRunner:
    fields: dict[str, Any] = {
        "model": "claude-haiku-4-5",
        "api_key": fake.api_key,
        "base_url": fake.url,
        "instructions": "You triage mail.",
        "tools": ["notify.phone"],
        **kw,
    }
    agent = msgspec.convert(fields, AnthropicAgent)
    config = Config(
        notify={"phone": ConsoleNotifier()},
        agent={"triage": agent},
        budget=BudgetConfig(daily_tokens=budget),
        prices=prices or {},
    )
    made = AnthropicRunner(agent, name="agent.triage", config=config, store=store, clock=clock or ManualClock(NOW))
    _made.append(made)
    return made


def rows(store: Store, sql: str, *params: Any) -> list[sqlite3.Row]:
    conn = sqlite3.connect(store.path)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def done(summary: str = "handled", status: str = "resolved") -> Turn:
    return tool_use("done", {"status": status, "summary": summary})
