"""One source run against a real NATS, as the daemon runs it: its settings from TOML, the Publisher
(JetStream ack, then the position file under `state_dir`), a stop event; and the events it stored.

    run = SourceRun(nats_server.url, tmp_path, "units", 'type = "journal"\\nunits = ["backup.service"]')
    await run.start()
    ...
    events = await until(lambda: run.stored(2))
    await run.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import msgspec
from nats.js.api import AckPolicy, ConsumerConfig

from watchd import bus
from watchd.jspublish import JetStreamPublisher
from watchd.sources import make_source
from watchd.sources.base import Source, SourceContext
from watchd.sources.health import SourceHealth
from watchd.sources.publish import Publisher
from watchd.sources.settings import SourceSettings, type_name
from watchd.sources.state import PositionStore


def settings_from_toml(text: str) -> SourceSettings:
    table = msgspec.toml.decode(text.encode())
    settings: SourceSettings = msgspec.convert(table, SourceSettings)  # type: ignore[arg-type]
    return settings


class SourceRun:
    def __init__(self, nats_url: str, root: Path, name: str, toml: str) -> None:
        self.nats_url = nats_url
        self.root = root
        self.name = name
        self.settings = settings_from_toml(toml)
        self.positions = PositionStore(root / "state" / "sources")
        self.health = SourceHealth(name, type_name(self.settings))
        self.source: Source | None = None
        self.ctx: SourceContext | None = None
        self.task: asyncio.Task[None] | None = None
        self._nc: Any = None

    async def start(self) -> SourceRun:
        self._nc = await bus.connect(self.nats_url, name=f"source-{self.name}")
        js = self._nc.jetstream()
        await bus.ensure_streams(js)
        self.source = make_source(self.name, self.settings)
        outlet = Publisher(
            self.name, JetStreamPublisher(self._nc).publish_events, self.positions, self.health, time.time
        )
        self.ctx = SourceContext(
            name=self.name,
            base_dir=self.root,
            position=self.positions.load(self.name),
            outlet=outlet,
            health=self.health,
            clock=time.time,
        )
        self.task = asyncio.create_task(self.source.run(self.ctx))
        return self

    def failed(self) -> BaseException | None:
        if self.task is not None and self.task.done() and not self.task.cancelled():
            return self.task.exception()
        return None

    async def stop(self) -> None:
        if self.ctx is not None:
            self.ctx.stop.set()
        if self.task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.task, 10)
        if self._nc is not None:
            await self._nc.close()
        self.task = self.ctx = self._nc = None

    def position(self) -> dict[str, Any]:
        return self.positions.load(self.name)

    async def events(self) -> list[dict[str, Any]]:
        """Every event in the stream, oldest first (whoever published it)."""
        return await stored_events(self.nats_url)

    async def stored(self, n: int) -> list[dict[str, Any]] | None:
        """The stream's events once it holds at least n (for `until`); fails fast if the source died."""
        if (exc := self.failed()) is not None:
            raise AssertionError(f"source {self.name} stopped: {exc}")
        found = await self.events()
        return found if len(found) >= n else None


async def stored_events(nats_url: str) -> list[dict[str, Any]]:
    nc = await bus.connect(nats_url, name="watchd-test")
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(bus.EVENTS_STREAM)
        except Exception:
            return []
        if not info.state.messages:
            return []
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(bus.EVENTS_STREAM, seq)
            out.append(json.loads(msg.data or b"{}"))
        return out
    finally:
        await nc.close()


async def stored_ids(nats_url: str, subjects: str = ">") -> list[str]:
    """The ids of the events stored on `watchd.events.<subjects>`, oldest first, read in batches."""
    nc = await bus.connect(nats_url, name="watchd-test")
    try:
        js = nc.jetstream()
        info = await js.stream_info(bus.EVENTS_STREAM)
        # No acks: an ack policy would stop delivering at max_ack_pending (1000) unacked messages.
        config = ConsumerConfig(ack_policy=AckPolicy.NONE)
        sub = await js.pull_subscribe(bus.EVENTS_PREFIX + subjects, stream=bus.EVENTS_STREAM, config=config)
        ids: list[str] = []
        seen = 0
        while seen < info.state.last_seq:
            try:
                msgs = await sub.fetch(1000, timeout=1)
            except TimeoutError:
                break
            for msg in msgs:
                seen = max(seen, msg.metadata.sequence.stream)
                ids.append(json.loads(msg.data)["id"])
        await sub.unsubscribe()
        return ids
    finally:
        await nc.close()
