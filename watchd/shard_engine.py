"""One shard's engine in the daemon: consume → step → commit → ack; its timers; its catch-up.

With `[cluster] shards = 1` (the default) the daemon has one of these, with the names the single
engine always had. With more, each shard of the deployment's watches (watchd/shards.py) has its
own: an engine holding only the shard's watches, a durable consumer filtered to the subjects they
read, a commit cursor and a clock in the store, and the lease that says which instance steps it.
Every step runs inside the daemon's one lock, so a step, its commit and its ack are never
interleaved with a reload or with another shard's step.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING

import nats.errors
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from watchd import bus, clockjump, cluster, shards, stepping
from watchd.answers import CHAT_SUBJECT
from watchd.config import WatchDef
from watchd.engine import Decision, Engine, EventInput, Outputs, Tick, Verdict, failed_reason
from watchd.engine.answers import ANSWER_SUBJECT
from watchd.engine.base import Kept
from watchd.errors import EventRejected
from watchd.link import reopens_of
from watchd.model import Event, decode_stored_event
from watchd.store import engine_state
from watchd.store.db import connect
from watchd.upkeep import Backoff

if TYPE_CHECKING:
    from watchd.daemon import Daemon

log = logging.getLogger("watchd")

FETCH_BATCH = 512
ENGINE_BACKOFF_CAP_S = 5.0


class ShardEngine:
    def __init__(self, daemon: Daemon, names: shards.ShardNames) -> None:
        self.d = daemon
        self.names = names
        self.engine = Engine(daemon.loaded.zone())
        self.engine.stored_evidence = self._stored_evidence  # what a read or a commit left in SQLite
        if names.count > 1:
            self.engine.applies_answer = self.owns
        self.lease: cluster.Lease | None = None
        self.active = False  # this instance holds the shard's lease and steps its engine
        # The change of `[cluster] shards` that led to this layout (cluster.Lease.layout_change), once
        # the daemon read it (`layout_known`): which watches moved into this shard, from where.
        self.change: cluster.LayoutChange | None = None
        self.layout_known = False
        # While this shard is rebuilt after such a change: each watch's (seq, instant) up to which its
        # old shard decided; its events up to the one and timers up to the other are state only.
        self.bounds: dict[str, tuple[int, float]] | None = None
        self.draining_until: float | None = None  # monotonic: given up, released once nothing more can come
        self.last_seq = 0
        self.committed_clock = 0.0
        # (last_seq, committed_clock) once the handoffs they made were queued: the position a takeover
        # may start from. None until this holder has caught up and queued what it decided.
        self.queued: tuple[int, float] | None = None
        self._holders: cluster.Position | None = None  # the last holder's position, read at catch-up
        self.behind = 0  # events stored past the last one fetched (the stream's own count): the lag
        self.filter: list[str] | None = None  # the consumer's subjects (None: every event, unsharded)
        self._consumer: bus.EventConsumer | None = None
        self._consumer_bound_at = 0  # the connection's reopen count when the consumer was bound
        self._engine_suspect = False  # a step failed after the engine moved: restore it from the store
        self._reader: sqlite3.Connection | None = None  # reads evidence left in the store (`_stored_evidence`)

    @property
    def sharded(self) -> bool:
        return self.names.count > 1

    def owns(self, watch_id: str) -> bool:
        return shards.shard_of(watch_id, self.names.count) == self.names.index

    # ---- definitions ----

    async def load(self, defs: list[tuple[WatchDef, int]], now: float, *, restore: bool) -> None:
        """Install this shard's watches of `defs` (under the daemon's lock). `restore`: first read the
        shard's state and cursor from the store, as it was last committed."""
        store = self.d.store
        assert store is not None
        if restore:
            keep = self.owns if self.sharded else None
            stale = keep is not None and await store.run(store.get_meta, self.names.cursor_key) is None
            if self.layout_known and not stale:
                epoch = int(await store.run(store.get_meta, self.names.epoch_key, "0") or 0)
                stale = epoch != self.epoch and not (
                    self.change is not None and epoch == self.change.epoch - 1 and self.kept_its_watches(defs)
                )
            if stale:
                # This store never committed this shard under this layout: what it holds of these
                # watches was stepped under another layout of the shards, at another cursor. Replayed
                # from the stream from the start instead (catch_up), it is counted once.
                await store.call(engine_state.drop_watch_state, self.owns)
            keys, meta, clock = await store.run(store.load_engine_state, keep, self.names.clock_key)
            self.engine.restore(keys, meta, 0.0 if stale else clock)
            self.last_seq = 0 if stale else await store.run(store.last_seq, self.names.cursor_key)
        self.engine.default_zone = self.d.loaded.zone()
        self.engine.load([(d, v) for d, v in defs if self.owns(d.watch.id)], now)
        await self.commit(stepping.Batch(), last_seq=None)
        wanted = self._filter()
        if wanted != self.filter:
            self.filter = wanted
            self._consumer_bound_at = -1  # bound again with the new subjects

    @property
    def epoch(self) -> int:
        return self.lease.epoch if self.lease is not None else 0

    def kept_its_watches(self, defs: list[tuple[WatchDef, int]]) -> bool:
        """After a change of shards: every watch of this shard was in the same shard before (its
        watch set only shrank, as when the count doubles), so what decided them is this shard's
        durable and position, and a store that stepped it before holds their state."""
        change = self.change
        if change is None:
            return True
        k = self.names.index
        return k < change.old and all(
            shards.shard_of(d.watch.id, change.old) == k for d, _ in defs if self.owns(d.watch.id)
        )

    def _stored_evidence(self, watch: str, key: str | None) -> Kept:
        """A key's evidence as the state database holds it, read when the key fires. On its own
        read-only connection, on the loop: one row by its primary key, only for a key that fires
        unheard since the state was read, and the row's evidence is not written meanwhile."""
        if self._reader is None:
            assert self.d.store is not None
            self._reader = connect(self.d.store.path, readonly=True)
        return engine_state.stored_evidence(self._reader, watch, key)

    def _filter(self) -> list[str] | None:
        if not self.sharded:
            return None
        subjects = {ANSWER_SUBJECT} | ({CHAT_SUBJECT} if self.names.index == 0 else set())
        for logic in self.engine.watches.values():
            if logic.watch.enabled:
                subjects.update(pattern.subject for pattern, _ in logic.routes())
        return shards.filter_subjects(subjects)

    # ---- the consumer ----

    async def bind_consumer(self) -> None:
        """Catch up past this shard's cursor (see catch_up) and bind its durable."""
        d = self.d
        assert d.js is not None and d.nc is not None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        consumer = bus.EventConsumer(d.js, self.names.durable, nc=d.nc)
        if self.filter is not None:  # one subject as filter_subject, as a server before 2.10 takes it
            consumer.config.filter_subject = self.filter[0] if len(self.filter) == 1 else None
            consumer.config.filter_subjects = self.filter if len(self.filter) > 1 else None
        self._consumer_bound_at = reopens_of(d.nc)
        await self.catch_up(consumer)
        await consumer.start()
        self._consumer = consumer

    async def unbind(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def catch_up(self, consumer: bus.EventConsumer) -> None:
        """What lies past this shard's commit cursor, before the durable is consumed (see
        cluster.catch_up): replayed for state, or decided, a batch at a time under the lock."""
        d = self.d
        assert d.js is not None

        async def consume(msgs: list[Msg], replay: bool) -> None:
            async with d.lock:
                await self.consume(msgs, replay=replay)

        def replayed(upto: int) -> None:
            self.last_seq = max(self.last_seq, upto)

        self._holders = await self.lease.read_position() if self.lease is not None else None
        change = self.change
        if change is not None and self._holders is None:  # the first holder of this layout
            if not self.kept_its_watches(self.d.defs):
                await self.rebuild(consumer, change)
                return
            k = self.names.index  # where the old layout's shard k got to: its watches' position
            self._holders = cluster.Position(seq=change.floors[k], clock=change.clocks[k], instance="")
        await cluster.catch_up(
            d.js,
            consumer,
            self.last_seq,
            consume,
            replayed,
            self.reach_holders_clock,
            subjects=self.filter,
            recorded=self._holders.seq if self._holders is not None else 0,
        )

    async def rebuild(self, consumer: bus.EventConsumer, change: cluster.LayoutChange) -> None:
        """The first holder of a shard that gained watches from other shards of the old layout (or is
        new): the stream is read from this store's cursor (the start: see load) to its end, each
        watch decided only past where its old shard decided (`bounds`), then the timers reach the
        instants the old shards' timers fired up to, under the same bounds. The durable, if the
        shard had one, keeps its position; what it delivers up to here is skipped (the cursor)."""
        d = self.d
        assert d.js is not None
        old = change.old
        self.bounds = {
            w: (change.floors[shards.shard_of(w, old)], change.clocks[shards.shard_of(w, old)])
            for w in self.engine.watches
        }
        info = await cluster.durable_info(consumer)
        end = (await d.js.stream_info(bus.EVENTS_STREAM)).state.last_seq or 0
        log.info(
            "rebuilding %s after [cluster] shards changed from %d to %d: events %d..%d, each watch "
            "decided past its old shard's position",
            self.names.label(),
            old,
            change.new,
            self.last_seq + 1,
            end,
        )
        try:
            async for msgs in cluster.read_range(d.js, self.last_seq, end, self.filter):
                async with d.lock:
                    await self.consume(msgs)
            self.last_seq = max(self.last_seq, end)  # past events of other subjects too
            reach = max(change.clocks, default=0.0)
            if reach > self.engine.clock:
                async with d.lock:
                    batch = stepping.Batch()
                    self._tick_bounded(min(reach, d.clock()), batch)
                    await self.commit(batch, last_seq=None)
        finally:
            self.bounds = None
        if info is None:
            if end:  # a new durable: from here on
                consumer.config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
                consumer.config.opt_start_seq = end + 1
        else:
            consumer.config.deliver_policy = info.config.deliver_policy
            consumer.config.opt_start_seq = info.config.opt_start_seq
            consumer.config.opt_start_time = info.config.opt_start_time

    def _bound(self, watch: str) -> tuple[int, float]:
        """Up to where a watch's old shard decided; a decision of no watch (a rejected message):
        up to where every old shard did."""
        bounds = self.bounds or {}
        if watch in bounds:
            return bounds[watch]
        if watch == "":
            return max((b[0] for b in bounds.values()), default=0), max((b[1] for b in bounds.values()), default=0.0)
        return 0, 0.0

    def _tick_bounded(self, to: float, batch: stepping.Batch) -> None:
        """Let the clock reach `to`, stopping at each instant an old shard's timers fired up to on
        the way: so the timers due in one tick are all on one side of each watch's instant, and
        a tick at or below a watch's instant fires only what its old shard fired already."""
        bounds = self.bounds or {}
        for at in sorted({c for _, c in bounds.values() if self.engine.clock < c < to}):
            stepping.take(self.engine, Tick(at), batch, functools.partial(self._past_instant, at=at))
        stepping.take(self.engine, Tick(to), batch, functools.partial(self._past_instant, at=to))

    def _past_instant(self, out: Outputs, at: float) -> None:
        """A tick's outputs: only those of watches whose old shard's timers had not reached `at`."""
        out.fires = [f for f in out.fires if at > self._bound(f.watch)[1]]
        out.decisions = [x for x in out.decisions if at > self._bound(x.watch)[1]]
        out.errors = [(x, e) for x, e in out.errors if at > self._bound(x.watch)[1]]

    def _past_seq(self, out: Outputs, seq: int) -> None:
        """An event's outputs: only those of watches whose old shard had not decided it."""
        out.fires = [f for f in out.fires if seq > self._bound(f.watch)[0]]
        out.decisions = [x for x in out.decisions if seq > self._bound(x.watch)[0]]
        out.errors = [(x, e) for x, e in out.errors if seq > self._bound(x.watch)[0]]

    # ---- the loop ----

    async def run(self) -> None:
        backoff = Backoff(cap_s=ENGINE_BACKOFF_CAP_S)  # events wait while the engine backs off: not long
        await self.d.upkeep.every(self.names.task, self.step, interval_s=0.0, core=True, backoff=backoff)

    async def step(self) -> None:
        """Fetch a batch, step the engine through it, commit, ack; then the timers that are due.

        A failure before the engine moved (a fetch on a lost connection) only binds the consumer
        again; one after it (a commit that failed) also restores the engine from SQLite, as a
        restart would, so the batch is taken again from the committed state."""
        d = self.d
        assert d.nc is not None
        d.last_loop_at = d.clock()
        if (jump := d.jumps.check()) is not None:
            await clockjump.follow(jump, rewind=d.rewind, emit=d.emit)
        if self._engine_suspect:
            async with d.lock:
                await self.load(d.defs, d.clock(), restore=True)
            self._consumer_bound_at = -1
            self._engine_suspect = False
        if self._consumer is None or self._consumer_bound_at != reopens_of(d.nc):
            await self.bind_consumer()
        consumer = self._consumer
        assert consumer is not None
        due = self.engine.next_due()
        wait = d.idle_wait_s if due is None else min(d.idle_wait_s, max(0.001, due - d.clock()))
        try:
            msgs = await consumer.fetch(FETCH_BATCH, timeout_s=wait)
        except nats.errors.Error:
            self._consumer_bound_at = -1  # bound again once the connection is back
            raise
        if self.lease is not None and not self.lease.held():
            await self.lease.fenced(d.stop)  # the lease may have lapsed: decide nothing until renewed
            if not self.lease.held():
                return
        try:
            async with d.lock:
                if not self.active:
                    return  # given up meanwhile: the next holder decides what was fetched
                if msgs:
                    await self.consume(msgs)
                    await self.queue_handoffs()  # before the ack: see watchd/handoff_queue.py
                    # Then the position, before the ack too: a holder that dies before its ack
                    # reaches the server leaves its successor this, to replay for state, not decide.
                    await self.record_queued()
                    await consumer.ack_upto(msgs[-1])
                due = self.engine.next_due()
                # Only once the backlog is drained does the clock jump to the present, so events
                # stored while watchd was down are judged at the time they arrived.
                if due is not None and due <= d.clock() and len(msgs) < FETCH_BATCH:
                    await self.tick()
        except Exception:
            self._engine_suspect = True
            raise

    async def rewind(self, now: float) -> None:
        """The wall clock was set back (under the daemon's lock)."""
        self.engine.rewind(now)
        await self.commit(stepping.Batch(), last_seq=None)

    async def consume(self, msgs: Sequence[bus.StreamMsg], *, replay: bool = False) -> None:
        """Step the engine through a batch and commit. `replay`: events another instance already
        decided, stepped for their state only: nothing they decide is recorded or handed off again.
        An event whose handling raises is recorded as failed and committed with the rest (see
        watchd/stepping.py), so it is never replayed."""
        d = self.d
        batch = stepping.Batch()
        subjects: dict[str, tuple[float, str, int]] = {}
        max_events = d.loaded.config.engine.max_event_bytes
        top = self.last_seq
        events: dict[int, Event] = {}
        id_notes: dict[int, str] = {}  # events whose id watchd had to assign: their decisions say so
        chat: list[tuple[Event, float, int]] = []  # button presses, relayed as answers (answers.py)
        answered: list[Event] = []  # answers applied: their chat messages are edited once committed
        relays = self.names.index == 0  # one shard relays presses: one answer each
        if msgs and not replay:
            self.behind = bus.pending_after(msgs[-1])
        for msg in msgs:
            seq = bus.seq_of(msg)
            if seq <= self.last_seq:
                continue  # redelivered after a crash between commit and ack: already applied
            top = max(top, seq)
            at = bus.time_of(msg)
            try:
                event, id_note = decode_stored_event(msg.data, seq, max_events)
            except EventRejected as exc:
                batch.decisions.append(Decision(at, "", None, Verdict.REJECTED, exc.message, _msg_id(msg), seq))
                continue
            except Exception as exc:  # a value the decoder never met: this event's failure, not the daemon's
                batch.fail(Decision(at, "", None, Verdict.FAILED, failed_reason(exc), _msg_id(msg), seq), exc)
                continue
            d.events_seen += 1
            events[seq] = event
            if id_note:
                id_notes[seq] = id_note
            prev = subjects.get(event.subject)
            subjects[event.subject] = (at, event.source, (prev[2] if prev else 0) + 1)
            if self.bounds is None:
                stepping.take(self.engine, EventInput(event, at, seq), batch)
            else:  # the timers due first, then the event: each with its own bound (see rebuild)
                self._tick_bounded(at, batch)
                past = functools.partial(self._past_seq, seq=seq)
                stepping.take(self.engine, EventInput(event, at, seq), batch, past)
                if seq <= self._bound("")[0]:
                    continue  # relayed and applied by the old layout (a press, an answer)
            if event.subject == CHAT_SUBJECT and relays:
                chat.append((event, at, seq))
            elif event.subject == ANSWER_SUBJECT and (not self.sharded or self.owns(str(event.data.get("watch", "")))):
                answered.append(event)  # applied here: its chat message is edited once committed
        if replay:
            batch = stepping.Batch()
            chat, answered = [], []  # another instance relayed and edited them
        if chat and d.answers is not None:
            batch.decisions += await d.answers.relay(chat)
        batch.decisions = stepping.kept_for_explain(batch.decisions, events)
        for dec in batch.decisions:
            if dec.seq in id_notes:
                dec.reason = f"{dec.reason} ({id_notes[dec.seq]})"
        await self.commit(batch, last_seq=top, subjects=subjects)
        if answered and d.answers is not None:
            d.answers.applied(answered, batch.decisions)

    async def tick(self) -> None:
        """Let the engine's clock reach the present: the timers due fire."""
        batch = stepping.Batch()
        stepping.take(self.engine, Tick(self.d.clock()), batch)
        await self.commit(batch, last_seq=None)
        if batch.fires:
            await self.queue_handoffs()  # before the position: a takeover fires them again, queued once
            # Timers are not on the stream: the instant they fired up to is, for whoever takes over.
            await self.record_queued()
        elif self.queued is not None:
            self.queued = (self.last_seq, self.committed_clock)  # nothing to queue: recorded at renewal

    async def queue_handoffs(self) -> None:
        """On a NATS of one's own, queue the committed handoffs on the stream (raises if it cannot:
        what follows, an ack or a recorded position, must wait until they are there)."""
        if self.d.queue is not None:
            await self.d.queue.queue_pending()

    async def record_queued(self) -> None:
        """What is committed here is queued (queue_handoffs returned): from now on it is the
        position a takeover starts from; recorded for whoever takes the shard next."""
        self.queued = (self.last_seq, self.committed_clock)
        if self.lease is not None:
            await self.lease.record_position(*self.queued)

    async def reach_holders_clock(self) -> None:
        """After a takeover: the timers the last holder fired (up to the instant it recorded) are
        stepped for their state only, so each fires once; those due since fire here."""
        position = self._holders
        if position is None or position.clock <= self.engine.clock:
            return
        async with self.d.lock:
            stepping.take(self.engine, Tick(position.clock), stepping.Batch())
            await self.commit(stepping.Batch(), last_seq=None)

    async def commit(
        self,
        batch: stepping.Batch,
        *,
        last_seq: int | None,
        subjects: dict[str, tuple[float, str, int]] | None = None,
    ) -> None:
        d = self.d
        assert d.store is not None
        d.failures.report(batch.errors)
        stepping.log_bad_input(batch.decisions, d.bad_input_log)
        d.metrics.decided(batch.decisions)
        store = d.store
        now = d.clock()
        clock = min(self.engine.clock, now)  # never a clock ahead of the present
        changes = self.engine.take_changes()
        names = self.names
        # Retried as it is until it is written (a full disk): the engine has already stepped.
        new = await d.storage.write_state(
            store,
            lambda: store.commit_step(
                last_seq=last_seq,
                clock=clock,
                changes=changes,
                decisions=batch.decisions,
                handoffs=batch.handoffs,
                subjects=subjects or {},
                now=now,
                holds=batch.holds,
                cursor_key=names.cursor_key,
                clock_key=names.clock_key,
            ),
        )
        self.engine.written(changes[0])  # committed: evidence read only on a fire may stay there
        if last_seq is not None:
            self.last_seq = max(self.last_seq, last_seq)
        self.committed_clock = self.engine.clock  # every step runs under the lock, as does this commit
        for fire in batch.fires:
            log.info("fired %s%s: %s", fire.watch, f" [{fire.key}]" if fire.key else "", fire.reason)
        if new and d.dispatcher:
            d.dispatcher.wake()
        if new and d.queue is not None:
            d.queue.wake()


def _msg_id(msg: bus.StreamMsg) -> str | None:
    return (msg.headers or {}).get("Nats-Msg-Id")
