"""The daemon: consume → step → commit → ack; timers; delivery; reload; signals.

One supervisor with one stop event. Each shard's engine (watchd/shard_engine.py; one unless
`[cluster] shards` says more) runs on the event loop only inside `lock`, so a step, its commit and
its ack are never interleaved with a reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TextIO

from aiohttp import web
from nats.aio.client import Client
from nats.js import JetStreamContext

from watchd import (
    bus,
    clockjump,
    cluster,
    config,
    credentials,
    history,
    ingress,
    liveness,
    reloading,
    sdnotify,
    shards,
    statelock,
    stepping,
    storage,
)
from watchd.agents.budget import InFlight
from watchd.agents.nats import follow_replies
from watchd.agents.tools import follow_watches
from watchd.answers import Answers
from watchd.config import Loaded, WatchDef
from watchd.cron.runner import Scheduler
from watchd.cron.schedule import parse_duration
from watchd.cron.shared import SharedSchedules
from watchd.dispatch import Dispatcher, Target
from watchd.engine import Engine
from watchd.errors import ConfigError, WatchdError
from watchd.handoff_queue import HandoffQueue
from watchd.jobs.builtin_watches import all_watches
from watchd.jobs.canary import release_canary
from watchd.jobs.release import ReleaseControl
from watchd.jspublish import JetStreamPublisher
from watchd.liveness import MAX_IDLE_WAIT_S  # longest a fetch waits: a reload or stop is seen promptly
from watchd.metrics import Metrics, task_families
from watchd.model import Event, own_event
from watchd.notify.http_client import HttpClient
from watchd.redact import redact_url
from watchd.shard_engine import FETCH_BATCH as FETCH_BATCH
from watchd.shard_engine import ShardEngine
from watchd.sources.state import PositionStore
from watchd.sources.supervise import SourceSet
from watchd.store import Store, db_path
from watchd.store.agent_watches import active_watch_defs
from watchd.store.engine_state import heard
from watchd.targets import build_targets
from watchd.upkeep import LogLimiter, Upkeep

log = logging.getLogger("watchd")

RELOAD_POLL_S = 2.0
STOP_DEADLINE_S = 10.0
# A shard given up is held this long after its consumer is unbound: the server drops a waiting pull
# request once no one listens on its reply subject, which a cluster's routes learn within this.
DRAIN_S = 1.0
RETENTION_EVERY_S = 3600.0
SOURCE_WAIT_S = 60.0  # sources read the clock at least this often (see SourceContext.max_wait_s)
# How long the daemon may fail to store events and still ping systemd's watchdog: time for its own
# recovery (the probe, a restart of the embedded nats-server) before systemd restarts it.
STORAGE_GRACE_S = 120.0


class Daemon:
    """`run` is the process (`watchd run`). `start` and `shutdown` run the same daemon inside another
    event loop, as tests do: without signal handlers or systemd pings, which belong to the process.
    `clock` is injected; `poll_s` shortens the engine's idle wait and the watch-file check, so that
    a clock that jumps (see `wake`) or a changed file is seen at once. `elapsed` counts the time
    that passes, to tell the wall clock being set from time passing (watchd/clockjump.py): by
    default the system's count when `clock` is the system's, else `clock` itself (an injected
    clock that moves is then time passing, never a clock being set)."""

    def __init__(
        self,
        loaded: Loaded,
        *,
        clock: Callable[[], float] = time.time,
        console: TextIO | None = None,
        poll_s: float | None = None,
        elapsed: Callable[[], float] | None = None,
    ) -> None:
        self.loaded = loaded
        self.clock = clock
        self.jumps = clockjump.JumpDetector(clock, elapsed or (clockjump.elapsed if clock is time.time else clock))
        self.console = console
        self.idle_wait_s = MAX_IDLE_WAIT_S if poll_s is None else poll_s
        self.reload_poll_s = RELOAD_POLL_S if poll_s is None else poll_s
        self.source_wait_s = SOURCE_WAIT_S if poll_s is None else poll_s
        self.sources: SourceSet | None = None
        self.stop = asyncio.Event()
        self.state_dir = loaded.state_dir
        self.store: Store | None = None
        self.embedded: bus.EmbeddedNats | None = None
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.publisher: JetStreamPublisher | None = None
        count = loaded.config.cluster.shards
        self.shards = [ShardEngine(self, shards.ShardNames(k, count)) for k in range(count)]
        self.defs: list[tuple[WatchDef, int]] = []  # every watch with its version, as last installed
        self.dispatcher: Dispatcher | None = None
        self.queue: HandoffQueue | None = None  # on a NATS of one's own: the deployment's handoff queue
        self.releases: ReleaseControl | None = None
        self.answers: Answers | None = None
        self.targets: dict[str, Target] = {}
        self._in_flight = InFlight()  # tokens the anthropic agents' calls hold, across reloads
        self.http = HttpClient()  # the notifiers' and the heartbeat's session, across reloads; closed at stop
        self.scheduler: Scheduler | None = None  # on an instance that holds a shard: its schedules' ticks
        self.shared_schedules: SharedSchedules | None = None  # on a NATS of one's own: what the deployment ran
        self.schedule_shards: dict[str, int] = {}  # each schedule's shard (shards.schedule_shards)
        self.lease: cluster.Lease | None = None  # this instance in its deployment (SPEC section 9)
        self.active = False  # holds the lease (shard 0's) and runs what a deployment runs once (the sources)
        self._delivering = False  # the handoff queue's (or the outbox's) tasks are running here
        self.cluster_lag: dict[str, int] = {}  # events and handoffs waiting on the shared consumers
        self.last_loop_at = 0.0
        self.events_seen = 0
        self.metrics = Metrics()
        self.metrics.add_state(lambda: task_families(self.upkeep.stats.values()))
        self.failures = stepping.FailureLog(clock)
        self.bad_input_log = LogLimiter(log)  # rejected messages, `where`/`key` errors: a line a minute each
        self.started_at = clock()
        self.lock = asyncio.Lock()
        self.upkeep = Upkeep(self.stop)  # every loop and task, restarted on failure and counted
        self.reloads = reloading.ReloadTrigger(loaded)  # a changed file, or SIGHUP
        self._agent_watches_changed = asyncio.Event()
        self._http_runner: web.AppRunner | None = None
        self.ingress: ingress.Ingress | None = None
        # Why the daemon stopped itself (the cluster lease was lost): exit non-zero. A task's failure
        # never stops it: the task is started again (watchd/upkeep.py).
        self.failure: WatchdError | None = None
        self._pid_file = self.state_dir / "watchd.pid"
        self._lock_fd: int | None = None
        self.storage_grace_s = STORAGE_GRACE_S
        self.status_sent = "watching"  # systemd's STATUS= as READY=1 set it
        probe_s = storage.PROBE_EVERY_S if poll_s is None else max(poll_s, 0.1)
        self.storage = storage.StorageWatch(self.stop, self.state_dir / "nats", probe_every_s=probe_s)

    @property
    def engine(self) -> Engine:
        """Shard 0's engine: the only one unless `[cluster] shards` says more."""
        return self.shards[0].engine

    @property
    def last_seq(self) -> int:
        """The furthest stream sequence a shard of this instance committed."""
        return max(shard.last_seq for shard in self.shards)

    def applied_seq(self) -> int:
        """The stream sequence every shard this instance steps has committed (all of them read each
        answer): an answer at or below it was applied here, if its watch is stepped here."""
        active = [shard.last_seq for shard in self.shards if shard.active]
        return min(active) if active else self.last_seq

    @property
    def behind(self) -> int:
        """Events stored past the last one each shard this instance steps fetched: the lag."""
        return sum(shard.behind for shard in self.shards if shard.active)

    def watch_ids(self) -> set[str]:
        return {wid for shard in self.shards for wid in shard.engine.watches}

    # ---- life cycle ----

    async def run(self) -> None:
        """The process: signals and systemd notifications, until SIGTERM or a failed core task."""
        await self.start(process=True)
        try:
            sdnotify.notify("READY=1\nSTATUS=watching")
            await self.stop.wait()
        finally:
            sdnotify.notify("STOPPING=1")
            await self.shutdown()

    async def start(self, *, process: bool = False) -> None:
        """Take the state dir and start every task; returns once watchd is ready. Only the process
        (`process`) handles signals and pings systemd's watchdog."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Held until shutdown; released by any death.
        self._lock_fd = statelock.lock_state_dir(self.state_dir, self._pid_file)
        self._pid_file.write_text(str(os.getpid()))
        try:
            await self._start(process=process)
        except BaseException:
            await self.shutdown()
            raise
        shown = redact_url(str(self.loaded.nats_url()))
        role = "" if self.active else " (standing by)"
        log.info("watchd ready%s: %d watches, NATS %s", role, len(self.loaded.watches), shown)

    async def shutdown(self) -> None:
        """Stop every task (see _shutdown) and give up the state dir."""
        self.stop.set()
        try:
            await self._shutdown()
        finally:
            if self._lock_fd is not None:
                with contextlib.suppress(OSError):
                    self._pid_file.unlink()
                os.close(self._lock_fd)
                self._lock_fd = None

    def wake(self) -> None:
        """Have the dispatcher look at the outbox and the scheduler at its schedules now, as if their
        waits had run out: for a clock that jumps (a test's virtual clock). The engine sees a jump within `poll_s`."""
        if self.dispatcher is not None:
            self.dispatcher.wake()
        if self.queue is not None:
            self.queue.wake()
        if self.scheduler is not None:
            self.scheduler.wake()

    async def _start(self, *, process: bool) -> None:
        if process:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop.set)
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        self.store = await Store.open(db_path(self.state_dir))
        if self.loaded.config.nats.url == "embedded":
            self.embedded = bus.EmbeddedNats(
                self.state_dir / "nats",
                self.loaded.config.nats.listen,
                self.loaded.config.nats.sync,
                credentials=credentials.load_or_create(self.state_dir),
            )
            await self.embedded.start()
            self.storage.embedded = self.embedded
            self._spawn("nats-supervisor", lambda: self.embedded.supervise(self.upkeep) if self.embedded else _noop())
        inbox = credentials.ADMIN_INBOX if self.embedded else "_INBOX"  # an external NATS: its operator's rules
        self.nc = await bus.connect(credentials.client_url(self.loaded, "admin"), inbox_prefix=inbox)
        self.js = self.nc.jetstream()
        self.publisher = JetStreamPublisher(self.nc)
        store_dir = self.embedded.store_dir if self.embedded is not None else None
        replicas = self.loaded.config.cluster.replicas if self.embedded is None else None  # one node: R1
        await storage.ensure_streams(self.js, self.loaded.config.nats.events_max_bytes, store_dir, replicas)
        await self._install(self.loaded, first=True)
        saved = max(shard.engine.clock for shard in self.shards)
        await clockjump.follow_saved(saved, self.clock(), rewind=self.rewind, emit=self.emit)
        targets = self._build_targets(self.loaded)
        self.releases = ReleaseControl(
            store=self.store,
            clock=self.clock,
            emit=self.emit,
            loaded=lambda: self.loaded,
            targets=lambda: self.targets,
            wake=self.wake,
            spawn=lambda name, factory: self._spawn(name, factory, once=True),
        )
        releases = self.releases
        releases.hold_for_check()  # no handoff reaches an agent before its release is checked
        self.dispatcher = Dispatcher(self.store, targets, clock=self.clock, metrics=self.metrics, gate=self.releases)
        self.answers = Answers(
            config=lambda: self.loaded.config,
            store=self.store,
            js=self.js,
            watches=self.watch_ids,
            targets=targets,
        )
        self.targets = targets
        store = self.store
        changed = self._agent_watches_changed
        self._spawn(
            "agent-watches",
            lambda: follow_watches(
                store, lambda: self._install(self.loaded), changed, self.stop, self.clock, self.upkeep
            ),
        )
        await self._join()
        self._spawn("reload", self._reload_loop)
        self._spawn("retention", self._retention_loop)
        self._spawn("storage-probe", lambda: self.storage.run(self._storage_probe, self.upkeep))
        self._http_runner, self.ingress = await ingress.start(self)
        interval = sdnotify.watchdog_interval_s() if process else None
        if interval:
            self._spawn("watchdog", lambda: liveness.watchdog_loop(self, interval))

    async def _storage_probe(self) -> None:
        failure = self.storage.health.failures.get(storage.STREAM)
        data = {"reason": failure.reason, "failures": failure.count} if failure else {}
        await self.publish(own_event("watchd.storage.recovered", data, time_s=self.clock()))

    async def _join(self) -> None:
        """Take this deployment's lease and start deciding, or stand by until it is free. An
        instance that cannot join safely refuses here (WatchdError): start() fails with it."""
        assert self.js is not None
        cfg = self.loaded.config.cluster
        self.lease = cluster.Lease(
            self.js,
            cfg,
            parse_duration(cfg.takeover),
            replicas=cfg.replicas,
            state_dir=str(self.state_dir),
            watches=cluster.watches_digest(self.loaded.watches),
            embedded=self.embedded is not None,
            names=self.shards[0].names,
        )
        lease0 = self.lease
        for shard in self.shards:
            lease = lease0
            if shard.names.index:
                lease = cluster.Lease(
                    self.js,
                    cfg,
                    lease0.takeover_s,
                    replicas=cfg.replicas,
                    state_dir=str(self.state_dir),
                    watches=lease0.me.watches,
                    embedded=self.embedded is not None,
                    names=shard.names,
                    me=lease0.me,
                )
            shard.lease = lease
            # Only what is committed and queued: a takeover must not skip events or timers whose
            # handoffs never reached the deployment's queue.
            lease.position = lambda shard=shard: shard.queued
            await lease.open()
        if self.embedded is None:
            assert self.nc is not None and self.store is not None
            takeover_s = self.lease.takeover_s
            self.queue = HandoffQueue(
                self.js,
                self.nc,
                self.store,
                lambda: self.targets,
                cluster=cfg.name,
                instance=self.lease.me.label(),
                # A dead deliverer's handoffs come back to the next holder about when it holds the
                # lease (at least 5 s: a busy machine's in-progress beats must arrive in time).
                ack_wait_s=max(5.0, takeover_s),
                clock=self.clock,
                metrics=self.metrics,
                gate=self.releases,
            )
            await self.queue.ensure_consumer()  # before anything of this deployment is queued
            self.shared_schedules = SharedSchedules(
                self.js, cfg.name, self.lease.me.instance, self.lease.claim_tick, replicas=cfg.replicas
            )
            await self.shared_schedules.open()
        sharded = len(self.shards) > 1
        change = await lease0.layout_change()  # before any shard of this layout decides
        for shard in self.shards:
            assert shard.lease is not None
            shard.lease.epoch = lease0.epoch
            shard.change = change
            shard.layout_known = True
        # Each lease taken is renewed from then on: a catch-up on a long stream can outlast the TTL,
        # and the loops that renew them start below. One found taken meanwhile is acted on by its
        # loop's first round.
        async with contextlib.AsyncExitStack() as renewing:
            if await lease0.join(may_take=self._may_take if sharded else None):
                await renewing.enter_async_context(lease0.renewed())
                await self._activate()
            else:
                lease0.announce()
            for shard in self.shards[1:]:  # its share of the others before it says it is ready
                assert shard.lease is not None
                if self._may_take() and await shard.lease.try_take():
                    await renewing.enter_async_context(shard.lease.renewed())
                    await self._start_shard(shard)
        for shard in self.shards:
            self._keep_lease(shard)
        if not lease0.embedded:
            self._spawn("cluster-lag", lambda: liveness.cluster_lag_loop(self))

    def _keep_lease(self, shard: ShardEngine) -> None:
        """The loop of one shard's lease: shard 0's holder also runs what the deployment runs once;
        with shards, each is taken up to this instance's share and given up to even the load."""
        lease = shard.lease
        assert lease is not None
        sharded = len(self.shards) > 1
        taken = self._activate if shard.names.index == 0 else lambda: self._start_shard(shard)

        async def give_up() -> bool:
            return await self._give_up(shard)

        async def stand_by(why: str) -> None:
            # Fencing stopped its decisions before the lease could lapse (a NATS stall): this
            # instance runs on and may take a shard again. Shard 0's holder runs what the deployment
            # runs once: losing it stops the daemon, as with one shard.
            log.warning("%s; this instance stops stepping it and stands by", why)
            await self._stop_shard(shard)

        self._spawn(
            "cluster-lease" + ("" if shard.names.index == 0 else f".{shard.names.index}"),
            lambda: lease.keep(
                self.upkeep,
                taken,
                self._lease_lost,
                may_take=self._may_take if sharded else None,
                give_up=give_up if sharded and shard.names.index else None,
                stand_by=stand_by if sharded and shard.names.index else None,
            ),
        )

    def holders(self) -> dict[int, str | None]:
        """Which instance holds each shard, as this one last saw."""
        held: dict[int, str | None] = {}
        for shard in self.shards:
            lease = shard.lease
            holder = lease.holder if lease is not None else None
            held[shard.names.index] = holder.instance if holder is not None else None
        return held

    def _may_take(self) -> bool:
        assert self.lease is not None
        return shards.may_take(self.lease.me.instance, self.holders(), self.lease.members, len(self.shards))

    async def _give_up(self, shard: ShardEngine) -> bool:
        """Hand this shard over when this instance holds more than its share (shards.should_release),
        over rounds of the shard's lease loop, which renews the lease meanwhile: first stop stepping
        it (its last batch committed, queued and acknowledged) and unbind its consumer; once a pull
        request still on its way can no longer deliver (DRAIN_S), record its position for the next
        holder and release the lease. What the server delivered to it meanwhile stays unacknowledged,
        and the next holder's catch-up decides it."""
        lease = shard.lease
        assert lease is not None and self.lease is not None
        if shard.draining_until is None:
            me = self.lease.me.instance
            if shards.should_release(me, self.holders(), self.lease.members) != shard.names.index:
                return False
            await self._stop_shard(shard)
            shard.draining_until = time.monotonic() + DRAIN_S
            return False
        if time.monotonic() < shard.draining_until:
            return False
        shard.draining_until = None
        if shard.queued is not None:
            await lease.record_position(*shard.queued)
        await lease.release()
        log.info("gave up %s to even the load (%d members)", shard.names.label(), len(self.lease.members))
        return True

    async def _stop_shard(self, shard: ShardEngine) -> None:
        """Stop stepping a shard: its last batch committed, queued and acknowledged; its consumer unbound."""
        async with self.lock:  # no step of it is under way, and none starts
            shard.active = False
            task = self.upkeep.tasks.pop(shard.names.task, None)
            if task is not None:
                task.cancel()
        while task is not None and not task.done():
            # Again until it ends: Python 3.11's wait_for swallows a cancellation that lands as its
            # wait ends, and the loop would then wait for a renewal its lease loop never makes.
            task.cancel()
            await asyncio.wait([task], timeout=0.2)
        self.upkeep.forget(shard.names.task)
        await shard.unbind()

    def _lease_lost(self, why: str) -> None:
        log.error("%s; stopping (a supervisor restarts watchd, which then stands by)", why)
        self.failure = self.failure or WatchdError(why, hint="two instances held it: see the log of both")
        self.stop.set()

    async def _activate(self) -> None:
        """With the lease: catch up on the stream, then run what decides and hands off."""
        if self.active:
            return
        assert self.js is not None and self.nc is not None and self.store is not None
        assert self.dispatcher is not None and self.lease is not None
        await self.lease.record_layout()
        # A consumer that cannot be made fails the start; a takeover that fails here (NATS not
        # answering yet after a node's loss) is run again by the lease's loop: nothing above or
        # in it is done twice, and nothing below runs until it succeeded.
        await self._start_shard(self.shards[0])
        self.active = True
        agents = self.loaded.config.agent.values()
        heartbeat = any(s.job == "heartbeat" for s in config.effective_schedules(self.loaded.config).values())
        if any(isinstance(a, config.AnthropicAgent) and a.batch for a in agents) and not heartbeat:
            # Batch agents are polled by the heartbeat job; without one, by this loop.
            from watchd.agents import batch as agent_batch

            self._spawn(
                "agent-batches", lambda: agent_batch.poll_loop(lambda: self.targets, self.stop, upkeep=self.upkeep)
            )
        if any(isinstance(a, config.NatsAgent) for a in self.loaded.config.agent.values()):
            # Workers' replies after a delivery ended (accepted → done): recorded from their own consumer.
            js, store, nc, upkeep = self.js, self.store, self.nc, self.upkeep
            self._spawn(
                "nats-replies", lambda: follow_replies(js, store, self.stop, clock=self.clock, upkeep=upkeep, nc=nc)
            )
        await self._start_sources()
        if self.ingress is not None:  # the webhooks record their health with the other sources' now
            self.ingress.webhooks = ingress.webhook_routes(self)
        releases = self.releases
        assert releases is not None
        self._spawn("release-check", lambda: releases.check("start"), once=True)
        self._spawn("release-canary", lambda: release_canary(self), once=True)

    async def _start_shard(self, shard: ShardEngine) -> None:
        """With a shard's lease: its engine from the store as last committed here, caught up on the
        stream (see ShardEngine.catch_up), then stepped; and, once per instance, the deliveries and the
        scheduler (which runs the ticks of this shard's schedules from now on)."""
        if shard.active:
            return
        shard.draining_until = None
        shard.queued = None  # nothing to record for whoever comes next until caught up and queued
        if len(self.shards) > 1 or shard.change is not None:
            # Taken again: what another holder did since is on the stream. After a change of the
            # shards, the store's copy is dropped unless it is this layout's (see ShardEngine.load).
            async with self.lock:
                await shard.load(self.defs, self.clock(), restore=True)
        await shard.bind_consumer()
        async with self.lock:  # its cursor is in the store from now on, events or none (see ShardEngine.load)
            await shard.commit(stepping.Batch(), last_seq=shard.last_seq)
            assert self.store is not None
            await self.store.run(self.store.set_meta, shard.names.epoch_key, str(shard.epoch))
            await shard.queue_handoffs()  # what the catch-up decided: queued before it is recorded
            await shard.record_queued()
        shard.active = True
        self._spawn(shard.names.task, shard.run, core=True)
        if len(self.shards) > 1:
            log.info("stepping %s", shard.names.label())
        if self.scheduler is None:
            self._start_scheduler()
        else:
            self.scheduler.wake()  # the schedules of this shard are run here from now on
        if self._delivering:
            return
        self._delivering = True
        queue = self.queue
        if queue is not None:  # handoffs go through NATS: whoever holds a lease delivers them
            self._spawn("handoff-queue", lambda: queue.keep_queueing(self.stop, self.upkeep), core=True)
            self._spawn("handoff-delivery", lambda: queue.deliver(self.upkeep), core=True)
        else:
            self._spawn(
                "dispatcher",
                lambda: self.dispatcher.run(self.stop, self.upkeep) if self.dispatcher else _noop(),
                core=True,
            )

    def _start_scheduler(self) -> None:
        """Once per instance, with its first shard: the schedules, each of whose ticks it runs while
        it holds the schedule's shard (`runs_schedule`)."""
        assert self.store is not None and self.dispatcher is not None
        queue = self.queue
        self.scheduler = Scheduler(
            self.store,
            self.loaded,
            emit=self.emit,
            clock=self.clock,
            targets=self.targets,
            wake_dispatcher=queue.wake if queue is not None else self.dispatcher.wake,
            nc=self.nc,
            js=self.js,
            in_daemon=True,
            http=self.http,
            shared=self.shared_schedules,  # None when embedded: no other instance can be there
            owns=self.runs_schedule,
        )
        self._spawn("scheduler", lambda: self.scheduler.run(self.stop, self.upkeep) if self.scheduler else _noop())

    def runs_schedule(self, name: str) -> bool:
        """Whether this instance runs the ticks of a schedule now: it steps the schedule's shard
        (and its lease cannot have lapsed: see cluster.Lease.held)."""
        k = self.schedule_shards.get(name)
        shard = self.shards[shards.schedule_shard(name, len(self.shards)) if k is None else k]
        return shard.active and (shard.lease is None or shard.lease.held())

    async def _start_sources(self) -> None:
        """Every configured source as a task of its own (see sources/supervise.py): a source that
        fails is restarted with a backoff and never stops the daemon."""
        assert self.store is not None
        last_heard: dict[str, float] = {}
        for row in await self.store.call(heard):
            if row.last_source:
                last_heard[row.last_source] = max(row.last_at, last_heard.get(row.last_source, 0.0))
        self.sources = SourceSet(
            self.loaded.config.source,
            publish=self.publish_events,  # a source that cannot store makes the daemon unhealthy too
            positions=PositionStore(self.state_dir / "sources"),
            base_dir=self.loaded.base_dir,
            clock=self.clock,
            max_event_bytes=self.loaded.config.engine.max_event_bytes,
            heard=last_heard,
            max_wait_s=self.source_wait_s,
            publish_own=self.publish,
        )
        sources = self.sources
        self._spawn("sources", lambda: sources.run(self.stop, self.upkeep))

    def _spawn(
        self, name: str, factory: Callable[[], Awaitable[None]], *, core: bool = False, once: bool = False
    ) -> None:
        """A long-lived task: a failure is logged, counted in /metrics and the task started again with
        backoff (watchd/upkeep.py); the daemon reports unhealthy only while a `core` one is down."""
        self.upkeep.spawn(name, factory, core=core, once=once)

    async def _shutdown(self) -> None:
        """Drain within a hard deadline: finish the batch in hand, let deliveries finish, stop."""
        deadline = time.monotonic() + STOP_DEADLINE_S
        async with asyncio.timeout(STOP_DEADLINE_S):
            async with self.lock:
                pass  # the engine loops hold this while they commit; wait for that to end
        if self.dispatcher:
            await self.dispatcher.drain(max(0.1, deadline - time.monotonic() - 3))
        if self.queue is not None:
            await self.queue.drain(max(0.1, deadline - time.monotonic() - 3))
        await self.upkeep.close()
        for shard in reversed(self.shards):  # shard 0's last: it holds the member key
            if shard.lease is not None:
                await shard.lease.leave()  # nothing decides any more: a standby may take over at once
        if self.answers is not None:
            await self.answers.close()
        await self.http.close()
        if self._http_runner is not None:
            await self._http_runner.cleanup()
        if self.nc is not None:
            # flush + close, not drain: the last acks reach the server, and a pull subscription
            # cancelled mid-fetch cannot hang the stop (drain waits on its message queue).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.flush(), 2)
            with contextlib.suppress(Exception):
                await self.nc.close()
        if self.embedded is not None:
            await self.embedded.stop()
        if self.store is not None:
            await asyncio.to_thread(self.store.close)
        log.info("watchd stopped")

    # ---- definitions ----

    async def _install(self, loaded: Loaded, *, first: bool = False) -> None:
        assert self.store is not None
        store = self.store
        now = self.clock()
        # the files' watches, the built-in ones, and follow-up watches agents created (until they expire)
        defs = all_watches(loaded) + await store.call(active_watch_defs, now)
        digests = {d.watch.id: d.digest for d in defs}
        versions = await store.run(store.assign_versions, digests, now)
        await history.record(store, "watch", history.watches(defs, versions), now)
        after = {name: s.after or () for name, s in config.effective_schedules(loaded.config).items()}
        async with self.lock:
            self.loaded = loaded
            self.schedule_shards = shards.schedule_shards(after, len(self.shards))
            self.defs = [(d, versions[d.watch.id]) for d in defs]
            for shard in self.shards:
                await shard.load(self.defs, now, restore=first)
        if self.scheduler is not None and not first:
            await self.scheduler.install(loaded)  # a changed schedule gets a new version
        if self.sources is not None and not first:
            self.sources.update(loaded.config.source)
        if self.ingress is not None and not first:
            try:
                self.ingress.webhooks = ingress.webhook_routes(self)
            except WatchdError as exc:  # a secret that cannot be read now: the routes as they were
                log.error("webhooks not reloaded: %s", exc.message)

    def request_reload(self) -> None:
        """SIGHUP: read the config and watch files again now, changed or not."""
        self.reloads.request()

    async def _reload_loop(self) -> None:
        async def step() -> None:
            if self.reloads.due(self.loaded):
                await self.reload()

        await self.upkeep.every("reload", step, interval_s=self.reload_poll_s, wake=self.reloads.wake)

    def _build_targets(self, loaded: Loaded) -> dict[str, Target]:
        return build_targets(
            loaded,
            http=self.http,
            nc=self.nc,
            js=self.js,
            store=self.store,
            on_watch=self._agent_watches_changed.set,
            console=self.console,
            in_flight=self._in_flight,
        )

    def _replace_targets(self, loaded: Loaded) -> None:
        """A reload builds the notifiers and agents anew (one added since start has no target yet; a
        changed one has new settings) and swaps them in everywhere; the dispatcher closes the old
        ones once the deliveries under way on them have ended."""
        targets = self._build_targets(loaded)
        self.targets = targets
        if self.scheduler is not None:
            self.scheduler.targets = targets
        if self.answers is not None:
            self.answers.targets = targets
        if self.dispatcher is not None:
            self.dispatcher.replace_targets(targets)

    async def reload(self) -> bool:
        """Validate first; an invalid change keeps the last good definitions running."""
        try:
            loaded = config.load(self.loaded.config_path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload rejected: %s", problem)
            log.error("keeping the last good definitions (%d watches)", len(self.loaded.watches))
            await self.emit("watchd.config.invalid", {"problems": exc.problems[:50]})
            return False
        await self._install(loaded)
        self._replace_targets(loaded)
        if self.releases is not None:  # a changed agent is checked before it gets a handoff
            releases = self.releases
            releases.hold_for_check()
            self._spawn("release-check", lambda: releases.check("reload"), once=True)
        log.info("reloaded: %d watches", len(loaded.watches))
        await self.emit("watchd.config.reloaded", {"watches": len(loaded.watches)})
        return True

    async def publish(self, event: Event, body: bytes | None = None) -> bus.PubAckInfo:
        """Store one event on the stream (`body`: its encoding, when the caller made it already); a
        failure to store makes the daemon unhealthy until the next success (watchd/storage.py)."""
        return await self.storage.publish(self.publisher, event, body)

    async def publish_events(self, events: Sequence[tuple[Event, bytes]]) -> list[bus.PubAckInfo]:
        """Store several events, each with its encoding (a source's burst), as `publish` does."""
        return await self.storage.publish_events(self.publisher, events)

    async def emit(self, subject: str, data: dict[str, Any]) -> None:
        """Publish one of watchd's own events; they can be watched like any other."""
        self.metrics.own_event(subject, data)
        if self.js is None:
            return
        try:
            await self.publish(own_event(subject, data, time_s=self.clock()))
        except WatchdError as exc:
            log.warning("could not publish %s: %s", subject, exc.message)

    # ---- the engines ----

    async def rewind(self, now: float) -> None:
        """The wall clock was set back: every shard's engine follows it."""
        async with self.lock:
            for shard in self.shards:
                await shard.rewind(now)

    # ---- side tasks ----

    async def _retention_loop(self) -> None:
        """Decisions are kept for `explain`, bounded by age and count so they never grow without limit."""
        assert self.store is not None
        store = self.store

        async def step() -> None:
            engine_cfg = self.loaded.config.engine
            cutoff = self.clock() - engine_cfg.decisions_keep_days * 86400
            removed = await store.run(store.prune_decisions, cutoff, engine_cfg.decisions_keep_rows)
            if removed:
                log.info("retention: removed %d old decisions", removed)

        await self.upkeep.every("retention", step, interval_s=RETENTION_EVERY_S, jitter=0.1)

    def watchdog_message(self) -> str:
        return liveness.watchdog_message(self)

    def health(self) -> dict[str, Any]:
        return liveness.health(self)


async def _noop() -> None:
    return None


def run(loaded: Loaded) -> None:
    daemon = Daemon(loaded)
    asyncio.run(daemon.run())
    if daemon.failure is not None:
        raise daemon.failure  # it stopped itself (the lease was lost): exit 1, so systemd restarts it
