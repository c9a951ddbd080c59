"""The contract every source type keeps (DESIGN: one contract test per interface), run against
each type in the registry:

- it is built from its settings alone and names its type;
- it publishes only through its context, each event with a valid, deterministic id: the same
  change seen again from the same position gets the same id (so a re-send after a crash is stored
  once), and the position it hands over is plain JSON;
- it stops promptly when asked.

A type runs here through a scenario that makes something happen in the world (a page changes, a
file appears). A type served by the HTTP listener has its own tests; a type this build cannot run
must refuse to with one clear line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from support.fake_telegram import FakeTelegram
from support.journal import StandinJournal
from support.sites import FakeSite
from support.slack_socket import FakeSlackSocket

from watchd.errors import WatchdError
from watchd.model import check_id, check_subject
from watchd.sources import REGISTRY, make_source, source_class
from watchd.sources.base import Emit, Outlet, Position, SourceContext
from watchd.sources.health import SourceHealth
from watchd.sources.settings import (
    FileSettings,
    JournalSettings,
    PollSettings,
    SlackSettings,
    SourceSettings,
    TelegramSettings,
)


class Recorder(Outlet):
    """The outlet as the contract sees it: what was handed over, in order."""

    def __init__(self) -> None:
        self.emitted: list[Emit] = []
        self.positions: list[Position] = []

    async def emit(self, emits: Sequence[Emit], position: Position | None) -> None:
        self.emitted.extend(emits)
        if position is not None:
            self.positions.append(position)

    async def save(self, position: Position) -> None:
        self.positions.append(position)


@dataclass
class Scenario:
    settings: SourceSettings
    change: Callable[[], Awaitable[None]]  # makes one thing happen that the source announces


ScenarioMaker = Callable[[Path], contextlib.AbstractAsyncContextManager[Scenario]]


@contextlib.asynccontextmanager
async def poll_scenario(tmp_path: Path) -> AsyncIterator[Scenario]:
    async with FakeSite("<b>1</b>") as site:

        async def change() -> None:
            site.set("<b>2</b>")

        yield Scenario(PollSettings(url=site.page_url, subject="c.poll", css="b", every="1s"), change)


@contextlib.asynccontextmanager
async def file_scenario(tmp_path: Path) -> AsyncIterator[Scenario]:
    (tmp_path / "in").mkdir()

    async def change() -> None:
        (tmp_path / "in" / "new.txt").write_text("hello")

    yield Scenario(FileSettings(paths=[str(tmp_path / "in")], subject="c.file", debounce="50ms"), change)


@contextlib.asynccontextmanager
async def journal_scenario(tmp_path: Path) -> AsyncIterator[Scenario]:
    journal = StandinJournal(tmp_path / "journal")  # journalctl first on PATH, for this scenario only
    journal.write(MESSAGE="already there")
    path = os.environ.get("PATH", "")
    os.environ["PATH"] = journal.env["PATH"]

    async def change() -> None:
        journal.write(MESSAGE="new", SYSLOG_IDENTIFIER="c")

    try:
        yield Scenario(JournalSettings(directory=str(journal.directory), subject="c.{identifier}"), change)
    finally:
        os.environ["PATH"] = path


@contextlib.asynccontextmanager
async def telegram_scenario(tmp_path: Path) -> AsyncIterator[Scenario]:
    async with FakeTelegram(token="1:contract") as tg:

        async def change() -> None:
            tg.push_message(7, "hello")

        yield Scenario(TelegramSettings(token="1:contract", chats=["7"], api_base=tg.url), change)


@contextlib.asynccontextmanager
async def slack_scenario(tmp_path: Path) -> AsyncIterator[Scenario]:
    async with FakeSlackSocket(app_token="xapp-contract") as slack:

        async def change() -> None:
            await slack.send_message("C0C", "U0C", "hello", event_id="EvC")

        yield Scenario(SlackSettings(app_token="xapp-contract", api_base=f"{slack.url}/api"), change)


SCENARIOS: dict[str, ScenarioMaker] = {
    "poll": poll_scenario,
    "file": file_scenario,
    "journal": journal_scenario,
    "telegram": telegram_scenario,
    "slack": slack_scenario,
}


def context(name: str, outlet: Outlet, position: Position, tmp_path: Path) -> SourceContext:
    import time

    return SourceContext(name, tmp_path, dict(position), outlet, SourceHealth(name, "t"), time.time, max_wait_s=0.05)


@pytest.mark.parametrize("type_", sorted(REGISTRY))
async def test_every_type_keeps_the_contract(type_: str, tmp_path: Path) -> None:
    cls = source_class(type_)
    assert cls.type_name == type_
    maker = SCENARIOS.get(type_)
    if maker is None:
        if cls.on_listener:
            return  # served by the HTTP listener: its own tests send it real requests
        assert cls.__module__ == "watchd.sources.pending", (
            f"source type {type_!r} runs but has no scenario in tests/test_source_contract.py: add one"
        )
        with pytest.raises(WatchdError, match="cannot run in this version"):
            await cls("x", msgspec.convert({"type": type_, **_required(type_)}, SourceSettings)).run(
                context("x", Recorder(), {}, tmp_path)
            )
        return

    async with maker(tmp_path) as scenario:
        source = make_source("c", scenario.settings)
        # 1. A first round records where the world stands.
        base = Recorder()
        await source.once(context("c", base, {}, tmp_path))
        start: Position = base.positions[-1] if base.positions else {}
        msgspec.json.encode(start)  # plain JSON
        # 2. Something happens; seen twice from the same position, it is announced with the same ids.
        await scenario.change()
        await asyncio.sleep(0.05)
        ids = []
        for _ in range(2):
            rec = Recorder()
            await make_source("c", scenario.settings).once(context("c", rec, start, tmp_path))
            assert rec.emitted, "the change was not announced"
            for e in rec.emitted:
                check_id(e.id)
                check_subject(e.subject)
                msgspec.json.encode(e.data)
            if cls.positional:
                assert rec.positions, "the new position was not handed over"
            ids.append([e.id for e in rec.emitted])
        assert ids[0] == ids[1]
        # 3. It runs until stopped, and stops promptly.
        rec = Recorder()
        ctx = context("c", rec, start, tmp_path)
        task = asyncio.create_task(make_source("c", scenario.settings).run(ctx))
        await asyncio.sleep(0.3)
        ctx.stop.set()
        await asyncio.wait_for(task, 3)


def _required(type_: str) -> dict[str, Any]:
    """The smallest valid table of a type (its required keys)."""
    return {"journal": {}, "telegram": {"token": "t"}, "slack": {"app_token": "a"}}.get(type_, {})
