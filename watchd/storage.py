"""Whether watchd can store events, and how much disk its event stream may take.

Health must not lie when the disk fills: with JetStream out of space every event is refused while
the process, its loops and its NATS connection all look fine. So every attempt to store — a
publish to the event stream, a commit to the state database — reports its outcome here, and the
daemon is unhealthy from a failure until the next success of the same kind. While it fails, a
probe keeps trying (so recovery is seen without any outside request), and an embedded nats-server
whose store hit a write error is restarted once space is back: nats-server marks such a stream
broken until it restarts, and watchd itself must not need one.

The EVENTS stream is sized from the free space of the disk it lives on when it is created (a
quarter, at most 1 GiB), unless `[nats] events_max_bytes` says otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from watchd.errors import NatsUnavailable, WatchdError

if TYPE_CHECKING:
    from nats.js import JetStreamContext

    from watchd.bus import EmbeddedNats, PubAckInfo
    from watchd.jspublish import JetStreamPublisher
    from watchd.model import Event
    from watchd.store import Store
    from watchd.upkeep import Upkeep

log = logging.getLogger("watchd.storage")
T = TypeVar("T")

STREAM = "stream"  # publishing to the JetStream event stream
STATE = "state"  # committing to the SQLite state database

AUTO_SHARE = 0.25  # of the free space when the stream is created; nats-server allows 75% in all
AUTO_MAX_BYTES = 1 << 30
MIN_EVENTS_BYTES = 1 << 20  # below this the stream holds too few events to be worth starting

PROBE_EVERY_S = 10.0  # while storing fails, try again this often
RESTART_AFTER_S = 30.0  # an embedded server whose store keeps failing (not for a full disk) is restarted after this...
RESTART_MAX_EVERY_S = 600.0  # ...and again after twice as long each time, up to this
MIN_FREE_TO_RESTART = 4 << 20  # ...once the disk has at least this much room again
STATE_RETRY_MAX_S = 30.0  # a failed state commit is retried with backoff up to this


def free_bytes(path: Path) -> int | None:
    """Free space on the filesystem holding `path` (or its nearest existing parent); None if unknown."""
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def auto_events_max_bytes(free: int | None) -> int:
    """The EVENTS stream's max_bytes for `free` bytes of disk: a quarter of it, at most 1 GiB."""
    if free is None:
        return AUTO_MAX_BYTES
    return max(MIN_EVENTS_BYTES, min(AUTO_MAX_BYTES, int(free * AUTO_SHARE)))


def space_hint(store_dir: Path | None, wanted: int, configured: bool) -> str:
    """The true reason a stream of `wanted` bytes does not fit, for the start-up error."""
    if store_dir is None:
        return (
            f"the NATS server has less JetStream storage than the {human_bytes(wanted)} the EVENTS stream asks for: "
            "give it more (jetstream max_file_store) or set [nats] events_max_bytes lower"
        )
    free = free_bytes(store_dir)
    where = f"the disk holding {store_dir} has {human_bytes(free)} free" if free is not None else str(store_dir)
    change = "set [nats] events_max_bytes lower" if configured else "or set [nats] events_max_bytes"
    return f"{where}; the EVENTS stream asks for {human_bytes(wanted)}: free some space, {change}"


@dataclass
class Failure:
    since: float  # monotonic time of the first failure of this run of failures
    reason: str
    count: int = 1


class StoreHealth:
    """The outcome of the latest attempts to store, per kind (STREAM, STATE).

    A failure stands until a later success of the same kind: a disk that filled stays a problem
    until something was stored again (the daemon's probe makes sure something tries)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.failures: dict[str, Failure] = {}
        self.failed_total: dict[str, int] = {STREAM: 0, STATE: 0}

    def stored(self, kind: str) -> Failure | None:
        """Record a success; the failure it ends, if any."""
        return self.failures.pop(kind, None)

    def failed(self, kind: str, reason: str) -> bool:
        """Record a failure; True when it is the first of a run (worth a log line)."""
        self.failed_total[kind] = self.failed_total.get(kind, 0) + 1
        current = self.failures.get(kind)
        if current is None:
            self.failures[kind] = Failure(self.clock(), reason)
            return True
        current.reason = reason
        current.count += 1
        return False

    @property
    def ok(self) -> bool:
        return not self.failures

    def failing(self, kind: str) -> bool:
        return kind in self.failures

    def failing_for_s(self, kind: str | None = None) -> float:
        """How long the oldest current failure (of `kind`, or any) has lasted; 0 when none."""
        starts = [f.since for k, f in self.failures.items() if kind is None or k == kind]
        return self.clock() - min(starts) if starts else 0.0

    def report(self) -> dict[str, Any]:
        """For /healthz: each current failure with its reason and age."""
        now = self.clock()
        return {
            kind: {"reason": f.reason, "failing_for_s": round(now - f.since, 1), "failures": f.count}
            for kind, f in sorted(self.failures.items())
        }

    def summary(self) -> str | None:
        """One line for logs and systemd's STATUS=, or None when all is well."""
        if not self.failures:
            return None
        what = {STREAM: "cannot store events", STATE: "cannot write the state database"}
        return "; ".join(f"{what.get(k, k)}: {f.reason}" for k, f in sorted(self.failures.items()))


class StorageWatch:
    """Every attempt to store goes through here and is recorded in `health`; `run` is the probe.

    `publish` stores one event on the stream; `write_state` runs one state transaction, retrying
    it (the same one: the engine has already stepped) until it succeeds or the daemon stops."""

    def __init__(
        self,
        stop: asyncio.Event,
        store_dir: Path,
        embedded: EmbeddedNats | None = None,
        *,
        probe_every_s: float = PROBE_EVERY_S,
        restart_after_s: float = RESTART_AFTER_S,
    ) -> None:
        self.stop = stop
        self.store_dir = store_dir
        self.embedded = embedded
        self.probe_every_s = probe_every_s
        self.restart_after_s = restart_after_s
        self.health = StoreHealth()
        self.recovered_total = 0
        self.server_restarts = 0  # of the embedded server, in the current run of failures
        self.saw_disk_full = False  # the store's disk was found full during the current failure

    def _failed(self, kind: str, reason: str) -> None:
        if self.health.failed(kind, reason):
            log.error("%s", self.health.summary())
        if kind == STREAM and self._disk_full():
            self.saw_disk_full = True

    def _disk_full(self) -> bool:
        free = free_bytes(self.store_dir)
        return free is not None and free < MIN_FREE_TO_RESTART

    def _stored(self, kind: str) -> None:
        ended = self.health.stored(kind)
        if ended is not None:
            self.recovered_total += 1
            self.server_restarts = 0
            self.saw_disk_full = False
            lasted = self.health.clock() - ended.since
            log.warning("%s works again after %.0fs (%d failures)", kind, lasted, ended.count)

    async def publish(
        self, publisher: JetStreamPublisher | None, event: Event, body: bytes | None = None
    ) -> PubAckInfo:
        if publisher is None:
            raise NatsUnavailable("watchd is not connected to NATS")
        try:
            ack = await publisher.publish_event(event, body)
        except NatsUnavailable as exc:
            self._failed(STREAM, exc.message)
            raise
        self._stored(STREAM)
        return ack

    async def publish_events(
        self, publisher: JetStreamPublisher | None, events: Sequence[tuple[Event, bytes]]
    ) -> list[PubAckInfo]:
        """Several events, each with its encoding (a source's burst): one outcome for them all."""
        if publisher is None:
            raise NatsUnavailable("watchd is not connected to NATS")
        try:
            acks = await publisher.publish_events(events)
        except NatsUnavailable as exc:
            self._failed(STREAM, exc.message)
            raise
        self._stored(STREAM)
        return acks

    async def write_state(self, store: Store, fn: Callable[[], T]) -> T:
        delay = 0.5
        while True:
            try:
                result = await store.run(fn)
            except (sqlite3.OperationalError, OSError) as exc:  # SQLITE_FULL, SQLITE_IOERR, ENOSPC
                self._failed(STATE, str(exc))
                if self.stop.is_set() or await _stopped_within(self.stop, delay):
                    raise WatchdError(
                        f"stopped while the state database could not be written ({exc})",
                        hint="the events since the last commit were not acknowledged: they are read again at start",
                    ) from None
                delay = min(delay * 2, STATE_RETRY_MAX_S)
                continue
            self._stored(STATE)
            return result

    async def run(self, probe: Callable[[], Awaitable[object]], upkeep: Upkeep) -> None:
        """While the stream fails: `probe` (a publish through `publish`) every probe_every_s, and an
        embedded server restarted when that should help (see _restart_due), then probed at once.
        An Upkeep loop (storage-probe): a round that fails unexpectedly is logged, counted and
        tried again after a backoff; a probe that fails only keeps the failure in `health`."""

        async def step() -> None:
            if STREAM not in self.health.failures:
                return
            with contextlib.suppress(WatchdError):
                await probe()
            if STREAM in self.health.failures and await self._maybe_restart():
                with contextlib.suppress(WatchdError):
                    await probe()

        await upkeep.every("storage-probe", step, interval_s=self.probe_every_s)

    def _restart_due(self) -> bool:
        """A full disk that has room again: at once (its write error is what keeps the stream
        broken). Any other failure: after restart_after_s, then twice as long each time."""
        if self._disk_full():
            self.saw_disk_full = True
            return False  # still full: a restart would not help
        if self.saw_disk_full:
            return True
        wait_s = min(self.restart_after_s * 2.0**self.server_restarts, RESTART_MAX_EVERY_S)
        return self.health.failing_for_s(STREAM) >= wait_s

    async def _maybe_restart(self) -> bool:
        embedded = self.embedded
        if embedded is None or not self._restart_due():
            return False
        why = "the disk has room again" if self.saw_disk_full else "it keeps failing"
        self.server_restarts += 1
        self.saw_disk_full = False
        reason = f"its store has refused events for {self.health.failing_for_s(STREAM):.0f}s and {why}"
        try:
            await embedded.restart(reason)
        except NatsUnavailable as exc:
            log.error("restarting nats-server failed: %s", exc.message)
        return True


async def _stopped_within(stop: asyncio.Event, timeout_s: float) -> bool:
    try:
        await asyncio.wait_for(stop.wait(), timeout_s)
    except TimeoutError:
        return False
    return True


async def ensure_streams(
    js: JetStreamContext, configured: int | None, store_dir: Path | None, replicas: int | None = None
) -> None:
    """The streams, EVENTS sized from [nats] events_max_bytes (`configured`) or, when the stream is
    created, from the free space of the disk it lives on (`store_dir`: the embedded server's);
    `replicas`: [cluster] replicas on a NATS of one's own."""
    from watchd import bus

    free = free_bytes(store_dir) if store_dir is not None else None
    wanted = configured or auto_events_max_bytes(free)
    hint = space_hint(store_dir, wanted, configured=configured is not None)
    await bus.ensure_streams(
        js, events_max_bytes=wanted, resize=configured is not None, space_hint=hint, replicas=replicas
    )
