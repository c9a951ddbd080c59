"""The real daemon in the test's event loop: `watchd.daemon.Daemon` on a temp project, with embedded
NATS, real SQLite and its HTTP listener on a free port — minus the process (signals, systemd), and
on a clock the test moves.

Blocking calls must not stall the loop the daemon runs in: the command line goes through
`asyncio.to_thread` (`InProcessDaemon.cli`), and waiting is `await until(...)`.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support import project, secrets
from support.cli import CliResult, run_cli, run_process
from support.clocks import VirtualClock
from support.project import Project
from support.waiting import until
from watchd import config
from watchd.bus import PubAckInfo
from watchd.cli.common import LOG_FORMAT  # as `watchd run` logs to a journal
from watchd.daemon import Daemon
from watchd.model import Event

# How soon the engine notices a jump of the clock and the daemon a changed watch file (the
# daemon's own defaults are seconds). A short idle fetch costs NATS two small requests.
POLL_S = 0.02


class LogLines(logging.Handler):
    """Log records as `watchd run` prints them to stderr; on the root logger, so that the libraries'
    warnings are in it too."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter(LOG_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


class InProcessDaemon(Project):
    """The daemon of a temp project, started and stopped in the test's event loop.

    Console notifiers print into `printed()`; the log is `logged()`; `advance(s)` moves the clock and
    wakes the loops that sleep until an instant. `stop()` then `start()` is a restart on the same
    state. Environment variables the config refers to are set by the fixture that makes it.
    """

    def __init__(
        self, root: Path, watches: dict[str, str] | None = None, *, extra_config: str = "", nats_url: str | None = None
    ) -> None:
        super().__init__(root, watches, extra_config=extra_config, nats_url=nats_url)
        self.clock = VirtualClock()
        self.console = io.StringIO()
        self.daemon: Daemon | None = None
        self.log = LogLines()
        self._level = logging.getLogger("watchd").level
        logging.getLogger("watchd").setLevel(logging.INFO)  # as `watchd run` does
        logging.getLogger().addHandler(self.log)

    # -- life cycle --

    async def start(self) -> InProcessDaemon:
        assert self.daemon is None, "daemon already running"
        loaded = config.load(self.config_path)
        daemon = Daemon(loaded, clock=self.clock, console=self.console, poll_s=POLL_S, elapsed=self.clock.elapsed)
        await daemon.start()
        self.daemon = daemon
        return self

    async def stop(self, *, crashes_expected: bool = False) -> None:
        """Stop as SIGTERM does; a task that crashed (and was started again) fails the test, unless the
        test caused it on purpose (`crashes_expected`)."""
        daemon, self.daemon = self.daemon, None
        assert daemon is not None, "daemon not running"
        await daemon.shutdown()
        assert daemon.failure is None, f"the daemon stopped on a failure: {daemon.failure.message}"
        if not crashes_expected:
            assert not daemon.upkeep.crashed(), f"tasks of the daemon crashed: {daemon.upkeep.crashed()}"

    async def cleanup(self) -> None:
        """Stop, and check that no configured secret, in any encoding, is in the log or on the
        console (every daemon of the suite is part of the secret search; support/secrets.py)."""
        daemon, self.daemon = self.daemon, None
        if daemon is not None:
            await daemon.shutdown()
        logging.getLogger().removeHandler(self.log)
        logging.getLogger("watchd").setLevel(self._level)
        found = secrets.configured_secrets(self.config_path)
        leaked = secrets.leaks("the log", self.logged(), found) + secrets.leaks("the console", self.printed(), found)
        assert not leaked, "a configured secret reached the output:\n" + "\n".join(leaked)

    @property
    def running(self) -> Daemon:
        assert self.daemon is not None, "daemon not running"
        return self.daemon

    @property
    def pid(self) -> int:
        return os.getpid()

    def health(self) -> dict[str, Any]:
        return self.running.health()

    async def advance(self, seconds: float) -> None:
        """Move the clock on; the dispatcher looks again at once, the engine within POLL_S. Nothing
        here waits for the engine to have looked: `settle` does (a busy machine can keep its fetch
        from returning for several POLL_S)."""
        self.clock.advance(seconds)
        if self.daemon is not None:
            self.daemon.wake()
        await asyncio.sleep(POLL_S)

    async def engines_caught_up(self) -> bool:
        """Every engine this instance steps has fired, and committed, every timer due by the clock's
        now. Read under the daemon's lock, which a step holds from its fire to its commit: a timer
        taken but not yet committed (no handoff in the outbox yet) is not mistaken for none due."""
        daemon = self.running
        async with daemon.lock:
            now = self.clock()
            dues = [shard.engine.next_due() for shard in daemon.shards if shard.active]
        return all(due is None or due > now for due in dues)

    async def settle(self) -> None:
        """Wait until what the clock's now makes due is done: the engines fired it, the outbox
        delivered it. For the tests' "nothing more happens" after moving the clock, which would
        otherwise hold only because the engine had not looked yet."""
        await until(self.engines_caught_up, what="the engine to fire what is due")
        await until(lambda: not self.outbox_busy(), what="the outbox to settle")

    def outbox_busy(self) -> bool:
        """A delivery is under way, or a handoff is due at the daemon's now."""
        sql = (
            "SELECT 1 FROM handoffs WHERE state = 'delivering'"
            " OR (state IN ('pending', 'retrying') AND next_attempt_at <= ?) LIMIT 1"
        )
        return bool(self.query(sql, (self.clock(),)))

    async def advance_until(
        self, pred: Callable[[], Any], *, step_s: float = 1.0, limit_s: float = 3600.0, what: str = "condition"
    ) -> Any:
        """Move the clock `step_s` at a time until pred returns something truthy (returned). Before each
        step the daemon settles (the engines fired what is due, the outbox delivered it), so however
        slow the machine, every fire and delivery happens at the virtual instant it was due, and pred
        sees it before the clock moves again. Fails after `limit_s` of virtual time."""
        moved = 0.0
        while True:
            await self.settle()
            if value := pred():
                return value
            if moved >= limit_s:
                raise AssertionError(f"{limit_s:g}s of virtual time passed without {what}")
            await self.advance(step_s)
            moved += step_s

    # -- what it printed and logged --

    def printed(self) -> str:
        return self.console.getvalue()

    def logged(self) -> str:
        return "\n".join(self.log.lines)

    # -- the command line, in this process --

    async def cli(self, *args: str) -> CliResult:
        """`watchd CMD --config <this config> ARGS…` on a thread, while the daemon goes on."""
        return await asyncio.to_thread(run_cli, args[0], "--config", str(self.config_path), *args[1:])

    async def cli_process(self, *args: str) -> CliResult:
        """The same, as a child process: for commands that would share this process's HTTP client
        session with the daemon (`canary` probes the notifiers and closes the session after)."""
        config = ("--config", str(self.config_path))
        return await asyncio.to_thread(run_process, args[0], *config, *args[1:], cwd=self.root)

    # -- publishing, from a client of its own --

    async def publish(self, *events: Event) -> list[PubAckInfo]:
        return await project.publish(self.nats_url, *events)

    async def publish_raw(self, subject: str, body: bytes, msg_id: str | None = None) -> PubAckInfo:
        return await project.publish_raw(self.nats_url, subject, body, msg_id)

    async def stream_last_seq(self) -> int:
        return await project.stream_last_seq(self.nats_url)

    async def stream_event(self, seq: int) -> dict[str, Any]:
        return await project.stream_event(self.nats_url, seq)
