"""More than one machine (SPEC section 9): the deployment's lease, its members, and where the
engine resumes on the shared event stream.

Instances on one NATS with the same `[cluster] name` are one deployment. Only the holder of the
lease `engine` in the deployment's KV bucket decides or hands off (engine, scheduler, dispatcher);
the others stand by (with `[cluster] shards`, each shard has a lease of its own: watchd/shards.py).
The lease is taken by create (no one holds it) and renewed by update with the expected revision,
so two instances can never both hold it; the bucket's TTL lets it lapse when its holder dies, and
a standby takes it within `[cluster] takeover`. The holder stops deciding by its
own clock before the lease can lapse on the server (fencing), and stops for good if another
instance took it. The embedded single-node NATS cannot be shared: its instance records the lease as
embedded, and an instance that finds such a record refuses to join.

The engine's durable consumer is shared by every instance of a deployment and is never deleted or
recreated: another live instance may be bound to it. What an instance needs past its own commit
cursor it reads straight from the stream (an ephemeral consumer, no acks), in two parts:

- up to the durable's ack floor, or to the last holder's recorded position when that is further,
  events another instance already decided (commit, queue its handoffs, record the position, then
  ack): replayed through the pure engine for its state only, never decided or handed off again;
- from there to what the durable has delivered, events fetched by an instance that died before
  recording them: the server redelivers them only after ack_wait, and an ack of any later event
  (AckPolicy.ALL) would acknowledge them unseen, so they are decided here, in stream order, first.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy

from watchd import bus, shards
from watchd.config import ClusterConfig, WatchDef
from watchd.errors import NatsUnavailable, WatchdError
from watchd.model import EVENTS_PREFIX, iso
from watchd.upkeep import BACKOFF_BASE_S, Backoff, Upkeep

log = logging.getLogger(__name__)

ENGINE_DURABLE = shards.ENGINE_DURABLE  # bus.EventConsumer's default: the one every instance shares
READ_BATCH = 512  # messages per fetch while catching up
READ_IDLE_S = 5.0  # a read that gets nothing for this long has lost the stream
READ_IDLE_DELETE_S = 30.0  # the server deletes the reading consumer once unused this long


@dataclass(frozen=True, slots=True)
class CatchUp:
    """What to read from the stream before consuming the durable: (position, replay_to] for state
    only, then (replay_to, decide_to] to decide. Empty ranges when start == end."""

    position: int  # this instance's last committed sequence
    replay_to: int  # decided and acknowledged elsewhere
    decide_to: int  # delivered but not acknowledged: decided here

    @property
    def replays(self) -> bool:
        return self.replay_to > self.position

    @property
    def decides(self) -> bool:
        return self.decide_to > max(self.position, self.replay_to)


def plan_catch_up(position: int, info: ConsumerInfo | None, recorded: int = 0) -> CatchUp:
    """From this instance's cursor, the durable's state (None: there is no durable yet) and the
    sequence the last holder recorded as decided with its handoffs queued (`recorded`: a holder
    that died between that and its ack decided up to there all the same; one that rebuilt the
    shard after a change of shards read the stream past what the durable delivered). What the
    durable delivers up to there is skipped (the cursor)."""
    if info is None:
        return CatchUp(position, position, position)
    floor = info.ack_floor.stream_seq if info.ack_floor and info.ack_floor.stream_seq else 0
    delivered = info.delivered.stream_seq if info.delivered and info.delivered.stream_seq else 0
    replay_to = max(position, floor, recorded)
    return CatchUp(position, replay_to, max(replay_to, delivered))


async def read_range(
    js: JetStreamContext, after: int, upto: int, subjects: list[str] | None = None
) -> AsyncIterator[list[Msg]]:
    """The EVENTS stream's messages with after < seq <= upto, in batches, in order. Messages the
    stream no longer holds (aged out) are simply not there; the first one read says where it starts.
    `subjects`: only those (a shard's filter, watchd/shards.py); None: every event."""
    if upto <= after:
        return
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=after + 1,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=READ_IDLE_DELETE_S,
        filter_subjects=subjects if subjects and len(subjects) > 1 else None,
    )
    subject = subjects[0] if subjects and len(subjects) == 1 else EVENTS_PREFIX + ">"
    sub = await js.pull_subscribe(subject, stream=bus.EVENTS_STREAM, config=config)
    try:
        if subjects and not (await sub.consumer_info()).num_pending:
            return  # none of these subjects is stored past `after`
        while True:
            try:
                msgs = await sub.fetch(READ_BATCH, timeout=READ_IDLE_S)
            except nats.errors.TimeoutError:
                log.warning("the event stream stopped delivering before seq %d while catching up", upto)
                return
            batch = [m for m in msgs if bus.seq_of(m) <= upto]
            if batch:
                yield batch
            if len(batch) < len(msgs) or (msgs and bus.seq_of(msgs[-1]) >= upto):
                return
            if subjects and msgs and not msgs[-1].metadata.num_pending:
                return  # filtered: nothing more of these subjects is stored up to `upto` or past it
    finally:
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
            await sub.unsubscribe()


async def durable_info(consumer: bus.EventConsumer) -> ConsumerInfo | None:
    """The durable's server-side state, or None when it does not exist yet."""
    try:
        return await consumer.info()
    except nats.js.errors.NotFoundError:
        return None


async def catch_up(
    js: JetStreamContext,
    consumer: bus.EventConsumer,
    position: int,
    consume: Callable[[list[Msg], bool], Awaitable[None]],
    replayed: Callable[[int], None],
    reach_holders_clock: Callable[[], Awaitable[None]],
    *,
    subjects: list[str] | None = None,
    recorded: int = 0,
) -> None:
    """Read from the stream what lies past `position` (this instance's commit cursor) before the
    durable is consumed; the durable is never deleted or recreated (another instance may be bound
    to it). A durable bound again keeps its own start position: the server refuses to change it.
    Events another instance decided are stepped for their state only (`consume(msgs, True)`), then
    the timers it fired are reached, then what was delivered but never acknowledged is decided
    (`consume(msgs, False)`). `replayed(seq)`: the cursor is past the replayed events, even those
    the stream no longer holds. `recorded`: the last holder's recorded position (see plan_catch_up)."""
    info = await durable_info(consumer)
    if info is None:
        if position:  # a new durable on an old stream: from where this store left off
            consumer.config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            consumer.config.opt_start_seq = position + 1
        return
    consumer.config.deliver_policy = info.config.deliver_policy
    consumer.config.opt_start_seq = info.config.opt_start_seq
    consumer.config.opt_start_time = info.config.opt_start_time
    plan = plan_catch_up(position, info, recorded)
    if plan.replays:
        log.info(
            "catching up: replaying events %d..%d, decided by another instance, for their state",
            plan.position + 1,
            plan.replay_to,
        )
        async for msgs in read_range(js, plan.position, plan.replay_to, subjects):
            await consume(msgs, True)
        replayed(plan.replay_to)
    await reach_holders_clock()
    if plan.decides:
        log.warning(
            "resuming the event stream after seq %d: events up to %d were delivered but never acknowledged",
            plan.replay_to,
            plan.decide_to,
        )
        async for msgs in read_range(js, plan.replay_to, plan.decide_to, subjects):
            await consume(msgs, False)


async def read_lag(js: JetStreamContext, delivery: str | None, engines: list[str] | None = None) -> dict[str, int]:
    """The deployment's backlog on its shared consumers, whoever holds the lease: events stored and
    not yet decided (the engine's durable, or the sum over the shards' `engines`), handoffs queued
    and not yet delivered (`delivery`)."""
    lag: dict[str, int] = {}
    wanted = [("events", bus.EVENTS_STREAM, d) for d in engines or [ENGINE_DURABLE]]
    for what, stream, durable in [*wanted, ("handoffs", bus.HANDOFFS_STREAM, delivery)]:
        if durable is None:
            continue
        with contextlib.suppress(nats.js.errors.NotFoundError):
            info = await js.consumer_info(stream, durable)
            lag[what] = lag.get(what, 0) + (info.num_pending or 0) + (info.num_ack_pending or 0)
    return lag


# ---- the lease -----------------------------------------------------------------------------------

LEASE_KEY = shards.LEASE_KEY  # shard 0's, and the whole deployment's when it has one shard
MEMBER_PREFIX = "member."
TICK_PREFIX = "tick."
POSITION_KEY = shards.POSITION_KEY  # in the ticks bucket: it must outlive its holder
LAYOUT_KEY = "engine.layout"  # in the ticks bucket: how many shards the deployment last ran with
LAYOUT_CHANGE_PREFIX = "engine.layout.change."  # in the ticks bucket: + the epoch a change led into
TICKS_TTL_S = 7 * 86400.0  # a tick claim outlives any catch-up a schedule does after an outage
# Fractions of `takeover`: the lease lapses on the server TTL after its last renewal, a standby
# looks every POLL; so a dead holder is replaced within TTL + POLL (+ the server's expiry sweep).
TTL_SHARE = 0.7
RENEW_SHARE = TTL_SHARE / 4
POLL_SHARE = 0.1
FENCE_SHARE = 0.8  # of the TTL: the holder stops deciding this long after its last good renewal


class Member(msgspec.Struct, kw_only=True):
    """What an instance says about itself: in its member key, and in the lease while it holds it."""

    instance: str
    host: str
    pid: int
    state_dir: str
    started: float
    watches: str  # digest of the watch definitions: one deployment decides with one set
    embedded: bool = False
    since: float | None = None  # in the lease: when this holder took it
    shards: int = 1  # [cluster] shards: one deployment splits its watches one way

    def describe(self) -> str:
        return f"watchd on {self.host} (pid {self.pid}, state_dir {self.state_dir})"

    def label(self) -> str:
        """How a decision names the instance that made it (explain)."""
        return f"{self.instance} on {self.host} (pid {self.pid})"


class Position(msgspec.Struct, kw_only=True):
    """How far the holder's engine got: the last sequence it decided and its clock (the instant up
    to which timers fired), both only once the handoffs they made were queued. The stream holds the
    events; this is what it cannot hold. `shards`: the layout it was recorded under (a shard's
    position says nothing of the same index in another layout: other watches, other subjects)."""

    seq: int
    clock: float
    instance: str
    shards: int = 1
    epoch: int = 0  # of the layout (see Layout): the same count of shards again is another layout


class Layout(msgspec.Struct, kw_only=True):
    """How the deployment's watches were split when its shard 0 was last taken. `epoch` counts the
    changes of `shards`: the change into epoch E is recorded under LAYOUT_CHANGE_PREFIX + E."""

    shards: int
    epoch: int = 0


class LayoutChange(msgspec.Struct, kw_only=True):
    """A change of `[cluster] shards`, recorded once by the first instance of the new layout before
    any of its shards decides: for each shard i of the old layout, the stream sequence up to which
    it decided every event (`floors[i]`: its ack floor, or its last holder's recorded position when
    further) and the instant up to which its timers fired (`clocks[i]`). A watch that moves from
    old shard i into a shard of the new layout is decided there only past these."""

    old: int
    new: int
    epoch: int
    floors: list[int]
    clocks: list[float]


def watches_digest(defs: list[WatchDef]) -> str:
    """One digest of the watch definitions (ids and content), whatever the order of files."""
    text = "\n".join(sorted(f"{d.watch.id}={d.digest}" for d in defs))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def bucket_names(name: str) -> tuple[str, str]:
    """The deployment's buckets: leases and members (TTL `takeover`), tick claims (TTL a week)."""
    return f"watchd-cluster-{name}", f"watchd-ticks-{name}"


async def open_bucket(js: JetStreamContext, bucket: str, ttl_s: float, replicas: int | None = None) -> Any:
    """Bind to the bucket, creating it or bringing its TTL to `ttl_s` (the stream's max_age; 0: its
    keys never lapse) and its copies to `replicas` (None: as they are)."""
    try:
        kv = await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        with contextlib.suppress(nats.js.errors.BadRequestError):  # another instance made it meanwhile
            return await js.create_key_value(bucket=bucket, ttl=ttl_s, history=1, replicas=replicas or 1)
        kv = await js.key_value(bucket)
    stream = f"KV_{bucket}"
    info = await js.stream_info(stream)
    cfg = info.config
    if abs((cfg.max_age or 0) - ttl_s) > 0.001 or (replicas and cfg.num_replicas != replicas):
        cfg.max_age = ttl_s
        cfg.duplicate_window = min(cfg.duplicate_window or ttl_s, ttl_s)
        cfg.num_replicas = replicas or cfg.num_replicas
        await js.update_stream(cfg)
    return kv


class Lease:
    """This instance in its deployment: its member key, and the engine lease it holds or waits for.

    `embedded`: the NATS is this instance's own single-node server, so the lease is trivially its
    own; it is still recorded (as embedded), so that an instance pointed at that server refuses.

    With `[cluster] shards` above 1 an instance has one Lease per shard (`names`), all speaking as
    the same member (`me`); only shard 0's keeps the member key and the view of the others."""

    def __init__(
        self,
        js: JetStreamContext,
        config: ClusterConfig,
        takeover_s: float,
        *,
        state_dir: str,
        watches: str,
        embedded: bool,
        replicas: int | None = None,
        names: shards.ShardNames | None = None,
        me: Member | None = None,
    ) -> None:
        self.js = js
        self.names = names or shards.ShardNames(0, 1)
        self.key = self.names.lease_key
        self.keeps_members = self.names.index == 0
        self.replicas = None if embedded else replicas
        self.name = config.name
        self.takeover_s = takeover_s
        self.ttl_s = takeover_s * TTL_SHARE
        self.embedded = embedded
        self.bucket, self.ticks_bucket = bucket_names(config.name)
        self.me = me or Member(
            instance=uuid.uuid4().hex[:12],
            host=socket.gethostname(),
            pid=os.getpid(),
            state_dir=state_dir,
            started=time.time(),
            watches=watches,
            embedded=embedded,
            shards=config.shards,
        )
        self.holder: Member | None = None  # who holds the lease, as last read
        self.members: dict[str, Member] = {}
        self._kv: Any = None
        self._ticks: Any = None
        self._revision = 0  # of the lease, while this instance holds it
        self._valid_until = 0.0  # monotonic: the holder decides until then without a renewal
        self._lost = False
        # The holder's (seq, clock), recorded on renewal; None while it has nothing to record yet.
        self.position: Callable[[], tuple[int, float] | None] | None = None
        self._recording = asyncio.Lock()
        self.epoch = 0  # of the deployment's layout of shards, once `layout_change` read it
        self._recorded = (0, 0.0)  # the last position this holder wrote: never written backwards
        self._announced: str | None = None  # the holder last named in the standby line

    # -- joining --

    async def open(self) -> None:
        try:
            self._kv = await open_bucket(self.js, self.bucket, self.ttl_s, self.replicas)
            self._ticks = await open_bucket(self.js, self.ticks_bucket, TICKS_TTL_S, self.replicas)
        except nats.js.errors.APIError as exc:
            raise NatsUnavailable(
                f"cannot set up the cluster buckets of [cluster] name = {self.name!r}: {exc.description}",
                hint="the NATS user needs JetStream rights for KV buckets (streams KV_watchd-*)",
            ) from None

    async def join(self, may_take: Callable[[], bool] | None = None) -> bool:
        """Refuse a deployment this instance cannot join safely; then take the lease if no one
        holds it (True) or stand by (False). An embedded instance takes it in any case. With
        shards, `may_take` says whether this instance is still below its share."""
        holder = await self._read_holder()
        if holder is not None and holder.instance != self.me.instance and not self.embedded:
            if holder.embedded:
                raise WatchdError(
                    f"cannot join cluster {self.name!r}: its NATS is the embedded single-node server of "
                    f"{holder.describe()}, which cannot be shared",
                    hint='run a NATS server or cluster of your own and set [nats] url = "nats://..." on every instance',
                )
            if holder.shards != self.me.shards:
                raise WatchdError(
                    f"cannot join cluster {self.name!r}: {holder.describe()} holds it with [cluster] shards = "
                    f"{holder.shards}, this config says {self.me.shards}",
                    hint="give every instance the same [cluster] shards (change it with every instance stopped)",
                )
            if holder.watches != self.me.watches:
                raise WatchdError(
                    f"cannot join cluster {self.name!r}: {holder.describe()} holds it with other watch "
                    "definitions than this config's",
                    hint="give every instance the same watch files, or this one another [cluster] name",
                )
        if self.keeps_members:
            await self._put_member()
            await self._read_members()
        if may_take is not None and not may_take():
            return False
        return await self.try_take()

    async def try_take(self) -> bool:
        record = msgspec.structs.replace(self.me, since=time.time())
        sent = time.monotonic()
        try:
            if self.embedded:
                self._revision = await self._kv.put(self.key, msgspec.json.encode(record))
            else:
                self._revision = await self._kv.create(self.key, msgspec.json.encode(record))
        except nats.js.errors.KeyWrongLastSequenceError:
            holder, revision = await self._read_lease()
            self.holder = holder
            if holder is None or holder.instance != self.me.instance:
                return False
            # This instance's own record: an earlier try timed out here (NATS stalled) but reached
            # the server after all. When it was stored is unknown, so renew before deciding anything.
            self._revision = revision
            return await self.renew()
        self.holder = record
        self._valid_until = sent + self.ttl_s * FENCE_SHARE
        self._recorded = (0, 0.0)  # taken anew: whatever the last holder recorded is the one to pass
        return True

    # -- holding --

    def held(self) -> bool:
        """True while this instance may decide: it holds the lease and renewed it recently enough
        that it cannot have lapsed on the server."""
        if self.embedded:
            return self._revision > 0
        return self._revision > 0 and not self._lost and time.monotonic() < self._valid_until

    async def renew(self) -> bool:
        """Renew the lease (False: another instance has it now: lost for good)."""
        assert self.holder is not None
        sent = time.monotonic()
        value = msgspec.json.encode(self.holder)
        for _ in range(2):
            try:
                if self.embedded:
                    self._revision = await self._kv.put(self.key, value)
                else:
                    self._revision = await self._kv.update(self.key, value, last=self._revision)
                break
            except nats.js.errors.KeyWrongLastSequenceError:
                holder, revision = await self._read_lease()
                if holder is None or holder.instance != self.me.instance:
                    self._lost = True
                    self.holder = holder
                    return False
                # Still this instance's, a revision on: an earlier renewal timed out here (NATS
                # stalled) but reached the server after all. No other instance can have held it
                # meanwhile (taking it creates the key anew, under its own name): renew from there.
                self._revision = revision
        else:
            self._lost = True
            self.holder = await self._read_holder()
            return False
        self._valid_until = sent + self.ttl_s * FENCE_SHARE
        if self.position is not None and not self.embedded and (at := self.position()) is not None:
            await self.record_position(*at)
        return True

    async def record_position(self, seq: int, clock: float) -> None:
        """Record the holder's engine position for whoever takes over (not needed when embedded).
        One write at a time and never backwards: a renewal that read the position before a step
        moved it must not overwrite the step's record with its older one."""
        if self.embedded or not self.held():
            return
        async with self._recording:
            if (seq, clock) <= self._recorded:
                return
            value = Position(seq=seq, clock=clock, instance=self.me.instance, shards=self.names.count, epoch=self.epoch)
            with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, TimeoutError):
                await self._ticks.put(self.names.position_key, msgspec.json.encode(value))
                self._recorded = (seq, clock)

    async def record_layout(self) -> None:
        """Record how many shards the deployment's watches are split into (see `layout_change`)."""
        if self.embedded:
            return
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, TimeoutError):
            layout = Layout(shards=self.names.count, epoch=self.epoch)
            await self._ticks.put(LAYOUT_KEY, msgspec.json.encode(layout))

    async def layout_change(self) -> LayoutChange | None:
        """The change of `[cluster] shards` that led to this layout, if any (sets `epoch`). The first
        instance of a new layout records it (KV create: once, whoever comes first), reading the old
        layout's durables and positions before any shard of the new one decides; the others read
        it. No layout recorded: one shard, as before layouts were recorded."""
        if self.embedded:
            return None
        try:
            layout = msgspec.json.decode((await self._ticks.get(LAYOUT_KEY)).value, type=Layout)
        except (nats.js.errors.KeyNotFoundError, msgspec.ValidationError, msgspec.DecodeError):
            layout = Layout(shards=1)
        if layout.shards == self.names.count:
            self.epoch = layout.epoch
            return await self._read_change(layout.epoch)
        self.epoch = layout.epoch + 1
        change = await self._old_layout(layout)
        try:
            await self._ticks.create(LAYOUT_CHANGE_PREFIX + str(self.epoch), msgspec.json.encode(change))
        except nats.js.errors.KeyWrongLastSequenceError:  # another instance of this layout came first
            change = await self._read_change(self.epoch) or change
        await self.record_layout()
        if not any(change.floors):
            return change  # nothing was decided yet: nothing to say
        log.warning(
            "[cluster] shards changed from %d to %d: a watch that changed shards is decided past seq %s "
            "(what its old shard decided), and replayed up to there for its state",
            change.old,
            change.new,
            "/".join(map(str, change.floors)),
        )
        return change

    async def _read_change(self, epoch: int) -> LayoutChange | None:
        try:
            entry = await self._ticks.get(LAYOUT_CHANGE_PREFIX + str(epoch))
            change = msgspec.json.decode(entry.value, type=LayoutChange)
        except (nats.js.errors.KeyNotFoundError, msgspec.ValidationError, msgspec.DecodeError):
            return None
        return change if change.new == self.names.count and change.epoch == epoch else None

    async def _old_layout(self, layout: Layout) -> LayoutChange:
        """Where each shard of the old layout got to: its durable's ack floor, or its last holder's
        recorded position when further (decided, queued, not yet acknowledged); its timers' instant."""
        floors: list[int] = []
        clocks: list[float] = []
        for k in range(layout.shards):
            names = shards.ShardNames(k, layout.shards)
            floor, clock = 0, 0.0
            with contextlib.suppress(nats.js.errors.NotFoundError):
                info = await self.js.consumer_info(bus.EVENTS_STREAM, names.durable)
                floor = info.ack_floor.stream_seq if info.ack_floor and info.ack_floor.stream_seq else 0
            with contextlib.suppress(nats.js.errors.KeyNotFoundError, msgspec.ValidationError, msgspec.DecodeError):
                position = msgspec.json.decode((await self._ticks.get(names.position_key)).value, type=Position)
                if (position.shards, position.epoch) == (layout.shards, layout.epoch):
                    floor, clock = max(floor, position.seq), position.clock
            floors.append(floor)
            clocks.append(clock)
        return LayoutChange(old=layout.shards, new=self.names.count, epoch=self.epoch, floors=floors, clocks=clocks)

    async def read_position(self) -> Position | None:
        """The last holder's position (None when embedded, none was recorded, or it was recorded
        under another count of shards)."""
        if self.embedded:
            return None
        try:
            entry = await self._ticks.get(self.names.position_key)
            position = msgspec.json.decode(entry.value, type=Position)
        except (nats.js.errors.KeyNotFoundError, msgspec.ValidationError, msgspec.DecodeError):
            return None
        return position if (position.shards, position.epoch) == (self.names.count, self.epoch) else None

    async def fenced(self, stop: asyncio.Event) -> None:
        """Wait until the lease is held again (a renewal got through) or the daemon stops."""
        while not self.held() and not stop.is_set() and not self._lost:
            await asyncio.sleep(min(0.05, self.ttl_s / 20))

    async def keep(
        self,
        upkeep: Upkeep,
        on_taken: Callable[[], Any],
        on_lost: Callable[[str], None],
        *,
        may_take: Callable[[], bool] | None = None,
        give_up: Callable[[], Awaitable[bool]] | None = None,
        stand_by: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        """The lease's loop: renew it while held, wait for it while standing by (then `on_taken`),
        and keep this member's key and the view of the others fresh. When the lease is lost,
        `stand_by(why)` lets this loop wait for it again (a shard's), else `on_lost(why)` ends it.
        A shard's lease (watchd/shards.py)
        is taken only while `may_take()` says this instance is below its share, and after each renewal
        `give_up()` may hand it over (True: released). An Upkeep loop (cluster-lease):
        a round that fails (NATS unreachable: fencing stops the decisions meanwhile) is logged,
        counted and tried again after a backoff that never waits longer than the loop's own pace,
        so that a lease is renewed as soon as NATS is back."""
        renew_s, poll_s = self.takeover_s * RENEW_SHARE, self.takeover_s * POLL_SHARE
        last_member = time.monotonic()
        starting = False  # taken, and `on_taken` has not completed yet

        async def taken() -> bool:
            # Renewed meanwhile: a takeover's catch-up can outlast the TTL. One that fails (NATS
            # not answering yet after a node's loss) is run again by the next rounds, which renew
            # the lease first: the lease must not stay held by an instance that decides nothing.
            # False: a renewal meanwhile found the lease another's.
            nonlocal starting
            starting = True
            async with self.renewed():
                await on_taken()
            starting = False
            return not self.found_taken()

        async def lost() -> float | None:
            why = f"lost the lease of cluster {self.name!r}{self._of()} to {_who(self.holder)}"
            if stand_by is None:
                on_lost(why)
                return None  # for good: on_lost stops the daemon
            await stand_by(why)
            self._revision, self._valid_until, self._lost = 0, 0.0, False  # standing by for it
            return poll_s

        async def step() -> float | None:
            nonlocal last_member
            if self._lost:  # found taken by a renewal outside this loop (while taking it)
                return await lost()
            if self._revision:
                if not await self.renew():
                    return await lost()
                if starting:
                    if not await taken():
                        return await lost()
                elif give_up is not None and await give_up():
                    return poll_s
            elif may_take is not None and not may_take():
                self.holder = await self._read_holder()  # who holds it, for the others' shares
            elif await self.try_take():
                log.info("took the lease of cluster %r%s: this instance decides now", self.name, self._of())
                if not await taken():
                    return await lost()
            else:
                self.announce()
            if self.keeps_members and time.monotonic() - last_member >= renew_s:
                await self._put_member()
                await self._read_members()
                last_member = time.monotonic()
            return renew_s if self._revision else poll_s

        pace = min(renew_s, poll_s)
        backoff = Backoff(base_s=min(BACKOFF_BASE_S, pace), cap_s=pace)
        name = "cluster-lease" + ("" if self.keeps_members else f".{self.names.index}")
        await upkeep.every(name, step, interval_s=None, backoff=backoff)

    def found_taken(self) -> bool:
        """A renewal found the lease another's (a call, so mypy does not narrow the flag across awaits)."""
        return self._lost

    @contextlib.asynccontextmanager
    async def renewed(self) -> AsyncIterator[None]:
        """Renew the lease at its pace while the body runs: taking it is followed by a catch-up on
        the stream (replay, bind, and right after a NATS node's loss, requests that wait for new
        stream leaders) that can outlast the TTL, and the loop that renews it waits for that. A
        renewal that fails is tried again at the next turn; one that finds the lease taken stops
        them (`_lost`, for the caller to act on)."""
        task = asyncio.create_task(self._renew_meanwhile(), name="cluster-lease-meanwhile")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _renew_meanwhile(self) -> None:
        while self._revision and not self._lost and not self.embedded:
            await asyncio.sleep(self.takeover_s * RENEW_SHARE)
            # A renewal cut short here by the body's end may still reach the server: the loop's
            # next renewal then finds the lease a revision on, its own, and renews from there.
            with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, TimeoutError):
                if not await self.renew():
                    return

    def _of(self) -> str:
        return f" ({self.names.label()})" if self.names.count > 1 else ""

    async def release(self) -> None:
        """Give this lease up while the deployment runs on (a shard handed to a less loaded
        member): the caller has stopped deciding with it and recorded its position."""
        revision, self._revision = self._revision, 0
        self._valid_until = 0.0
        if revision and not self._lost:
            await self._kv.delete(self.key, last=revision)
        self.holder = None

    def announce(self) -> None:
        """One line each time the holder changes while this instance stands by (shard 0's only:
        with shards, an instance stands by for most of them by design)."""
        if self.holder is not None and self.holder.instance != self._announced and self.keeps_members:
            self._announced = self.holder.instance
            log.info(
                "standing by: cluster %r is held by %s since %s",
                self.name,
                self.holder.describe(),
                iso(self.holder.since),
            )

    async def leave(self) -> None:
        """On a clean stop: give the lease up at once, so a standby need not wait for it to lapse."""
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, TimeoutError):
            if self._revision and not self._lost:
                await self._kv.delete(self.key, last=self._revision)
            if self.keeps_members:
                await self._kv.delete(MEMBER_PREFIX + self.me.instance)
        self._revision = 0

    # -- schedules --

    async def claim_tick(self, schedule: str, tick_at: float) -> bool:
        """Claim a schedule's tick cluster-wide (KV create): True for the one instance that runs it."""
        key = f"{TICK_PREFIX}{schedule}.{round(tick_at * 1000)}"
        try:
            await self._ticks.create(key, msgspec.json.encode(self.me.instance))
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        return True

    # -- what status shows --

    def view(self) -> dict[str, Any]:
        holder = self.holder
        members = sorted(self.members.values(), key=lambda m: m.started)
        return {
            "name": self.name,
            "instance": self.me.instance,
            "role": "holder" if self.held() else "standby",
            "embedded": self.embedded,
            "takeover_s": self.takeover_s,
            "lease": None
            if holder is None
            else {**_member_view(holder), "since": iso(holder.since), "since_ts": holder.since},
            "members": [_member_view(m) for m in members],
        }

    async def _put_member(self) -> None:
        await self._kv.put(MEMBER_PREFIX + self.me.instance, msgspec.json.encode(self.me))
        self.members[self.me.instance] = self.me

    async def _read_members(self) -> None:
        # The subjects of the member keys, from the bucket's stream (a key listing would need a consumer).
        prefix = f"$KV.{self.bucket}."
        info = await self.js.stream_info(f"KV_{self.bucket}", subjects_filter=prefix + MEMBER_PREFIX + ">")
        keys = [subject.removeprefix(prefix) for subject in (info.state.subjects or {})]
        found: dict[str, Member] = {}
        for key in keys:
            with contextlib.suppress(nats.js.errors.KeyNotFoundError, msgspec.ValidationError, msgspec.DecodeError):
                m = msgspec.json.decode((await self._kv.get(key)).value, type=Member)
                found[m.instance] = m
        found[self.me.instance] = self.me
        self.members = found
        if not self._revision:
            self.holder = await self._read_holder()

    async def _read_holder(self) -> Member | None:
        return (await self._read_lease())[0]

    async def _read_lease(self) -> tuple[Member | None, int]:
        """Who holds the lease and the entry's revision; (None, 0) when no one does."""
        try:
            entry = await self._kv.get(self.key)
        except nats.js.errors.KeyNotFoundError:
            return None, 0
        try:
            return msgspec.json.decode(entry.value, type=Member), int(entry.revision or 0)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return None, 0


def _who(m: Member | None) -> str:
    return m.describe() if m is not None else "another instance"


def _member_view(m: Member) -> dict[str, Any]:
    return {"instance": m.instance, "host": m.host, "pid": m.pid, "state_dir": m.state_dir, "started": iso(m.started)}
