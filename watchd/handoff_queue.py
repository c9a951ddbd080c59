"""Handoffs through NATS (SPEC section 9): the deployment's queue of handoffs.

On a NATS of one's own, a handoff does not wait in the outbox of the instance that decided it: it
is queued on `watchd.handoffs.<target>` in the HANDOFFS stream with `Nats-Msg-Id` = the handoff id,
and the lease holder delivers it from a durable consumer the whole deployment shares
(`watchd-delivery-<cluster name>`, explicit acks: a work queue). So a handoff outlives the instance
that decided it. The embedded single-node NATS has no other instance: its outbox is delivered by
the dispatcher as it always was.

Order in the engine: commit, queue, then acknowledge the events (for timers: commit, queue, then
record the position). A kill anywhere before the acknowledgement leaves the events unacknowledged,
so the next holder decides them again, with the same handoff ids, and the stream stores each id
once: a batch decided twice is handed off once.

What was delivered is the consumer's state, shared by every instance: an acknowledged message is
never delivered again; a message in delivery is kept from redelivery (in-progress acks) while its
deliverer lives, and comes back `ack_wait` after it died; a retry is a nak delayed by the backoff; a
dead letter is terminated. The local SQLite keeps each instance's record of what it decided and
delivered (explain, status, dlq), and settles a message it sees again after a lost ack without
delivering it twice. The duplicate risk that remains, for a target that cannot deduplicate by the
handoff id (Telegram, Slack): a deliverer that dies after its request reached the target and before
the server stored the ack (the request's own time, the local record and one round trip to NATS);
/metrics has how long that was for each delivery (`watchd_handoff_ack_window_seconds`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from watchd import bus
from watchd.dispatch import (
    Dead,
    Delivered,
    Gate,
    Outcome,
    Target,
    fired_ago_s,
    gated_attempt,
    no_target,
    outcome_label,
    settlement,
)
from watchd.errors import EventRejected, NatsUnavailable
from watchd.jspublish import JetStreamPublisher
from watchd.link import Connection, PullSubscription, pull
from watchd.model import HANDOFFS_PREFIX, Handoff, encode
from watchd.store import Store, outbox
from watchd.store.grouped import Grouped
from watchd.upkeep import Backoff, Upkeep

if TYPE_CHECKING:
    from watchd.metrics import Metrics

log = logging.getLogger("watchd.handoff_queue")

CLUSTER_HEADER = "Watchd-Cluster"  # the deployment that queued it: another one on the same NATS skips it
DECIDED_BY_HEADER = "Watchd-Decided-By"  # the instance that decided it (explain)
NOT_BEFORE_HEADER = "Watchd-Not-Before"  # epoch seconds: held for quiet hours until then
QUEUE_BATCH = 256  # handoffs read from the outbox per look
QUEUE_POLL_S = 2.0  # the longest the queueing loop sleeps (a `dlq replay` writes the SQLite from the CLI)
MAX_IN_FLIGHT = 64  # deliveries under way at once (each target has its own limit besides)
MAX_NAK_DELAY_S = 300.0  # a long hold is looked at again after this, so a changed clock is seen
PAUSED_NAK_S = 1.0  # a handoff to an agent whose release is being checked is looked at again after this
_SETTLED = ("delivered", "accepted", "done", "dead", "dropped")
_decoder = msgspec.json.Decoder(Handoff)


def handoff_subject(target: str) -> str:
    """`watchd.handoffs.<target>`; a character a subject cannot hold (a space, a wildcard) becomes `_`
    (the deliverer reads the target from the handoff itself)."""
    tokens = [re.sub(r"[^A-Za-z0-9_-]", "_", t) or "_" for t in target.split(".")]
    return HANDOFFS_PREFIX + ".".join(tokens)


def durable_name(cluster: str) -> str:
    """The deployment's delivery consumer: consumer names may not hold dots."""
    return "watchd-delivery-" + re.sub(r"[^A-Za-z0-9_-]", "-", cluster)


class HandoffQueue:
    """Queues this instance's new handoffs on the stream, and (while it holds the lease) delivers the
    deployment's from it. `targets` is read at each delivery: a reload swaps them."""

    def __init__(
        self,
        js: JetStreamContext,
        nc: Client,
        store: Store,
        targets: Callable[[], dict[str, Target]],
        *,
        cluster: str,
        instance: str,
        ack_wait_s: float,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        per_target: int = 4,
        gate: Gate | None = None,
    ) -> None:
        self.gate = gate  # agents' releases: a paused target waits unclaimed, a held one waits pending
        self.js = js
        self.nc = nc
        self.store = store
        self.targets = targets
        self.cluster = cluster
        self.instance = instance
        self.clock = clock
        self.metrics = metrics
        self.per_target = per_target
        self.ack_wait_s = ack_wait_s
        self.durable = durable_name(cluster)
        self.config = ConsumerConfig(
            durable_name=self.durable,
            name=self.durable,
            filter_subject=HANDOFFS_PREFIX + ">",
            # NEW: made before this deployment queues anything (at join), so it misses nothing of its
            # own, and never delivers what the stream held before (workers' handoffs, history).
            deliver_policy=DeliverPolicy.NEW,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait_s,
            max_deliver=-1,  # retries are counted here (settlement), not by the server
            max_ack_pending=4 * MAX_IN_FLIGHT,
        )
        self.queued = 0
        self.duplicates = 0  # queued again by an instance that decided a batch again: dropped by id
        # A delivery's two records (taken, settled), each committed with those of the deliveries
        # under way beside it (watchd/store/grouped.py): one transaction per burst, not two each.
        self._take_queued: Grouped[tuple[str, int]] = Grouped(store, outbox.take_queued_within)
        self._finish: Grouped[None] = Grouped(store, outbox.finish_within)
        # Queued with the publisher the listener stores events with (watchd/jspublish.py), at under
        # half of nats-py's `js.publish` per message; the same errors.
        self._publisher = JetStreamPublisher(nc) if isinstance(nc, Connection) else None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one queueing pass at a time (the engine's and the loop's)
        self._limits: dict[str, asyncio.Semaphore] = {}
        self._in_flight = 0
        self._freed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        # Messages being delivered here, kept from redelivery; by identity (a Msg compares by value).
        self._under_way: dict[int, Msg] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        self._handling: set[str] = set()  # handoff ids being delivered here

    def wake(self) -> None:
        self._wake.set()

    # ---- queueing ----

    async def ensure_consumer(self) -> None:
        """Create the delivery consumer, or bring an existing one's settings up to date."""
        try:
            await self.js.add_consumer(bus.HANDOFFS_STREAM, self.config)
        except nats.js.errors.APIError as exc:
            raise NatsUnavailable(
                f"cannot create consumer {self.durable} on stream {bus.HANDOFFS_STREAM}: {exc.description}",
                hint=f"if its config changed incompatibly, delete it: nats consumer rm {bus.HANDOFFS_STREAM} "
                f"{self.durable}",
            ) from None

    async def queue_pending(self) -> int:
        """Queue every handoff of the outbox that is not in the stream yet; how many. Raises
        NatsUnavailable when the stream cannot store one: the caller must not acknowledge the
        events behind them until this succeeds."""
        async with self._lock:
            n = 0
            while True:
                rows = await self.store.call(outbox.unqueued, QUEUE_BATCH)
                # Published together (one round trip's wait for the lot, not one each); those that
                # got through are recorded even when another failed, which is then raised.
                results = await asyncio.gather(*(self._queue(*row) for row in rows), return_exceptions=True)
                for (h, _, _), r in zip(rows, results, strict=True):
                    if isinstance(r, EventRejected):  # it never will be (too big): a dead letter, not a stuck engine
                        log.warning("handoff %s to %s cannot be queued: %s", h.id, h.target, r.message)
                        await self.store.run(self.store.finish, h.id, "dead", self.clock(), f"not queued: {r.message}")
                queued = [r for r in results if isinstance(r, tuple)]
                if queued:
                    await self.store.call(outbox.mark_queued, queued, self.clock(), self.instance)
                for r in results:
                    if isinstance(r, BaseException) and not isinstance(r, EventRejected):
                        raise r
                n += len(rows)
                if len(rows) < QUEUE_BATCH:
                    return n

    async def _queue(self, h: Handoff, not_before: float, updated_at: float) -> tuple[str, int, str]:
        # A handoff queued for the first time has its id as Nats-Msg-Id, on every instance that
        # decides it; a dead letter replayed by a user is a new message, named by the replay.
        msg_id = h.id if h.state == "pending" else f"{h.id}.replay.{round(updated_at * 1000)}"
        headers = {CLUSTER_HEADER: self.cluster, DECIDED_BY_HEADER: self.instance}
        if not_before > self.clock():
            headers[NOT_BEFORE_HEADER] = repr(not_before)
        h.state, h.attempt = "pending", 1
        subject = handoff_subject(h.target)
        if self._publisher is not None:
            ack = await self._publisher.publish(subject, encode(h), msg_id, headers=headers)
        else:
            ack = await bus.publish_raw(self.js, subject, encode(h), msg_id, headers=headers)
        if ack.duplicate:
            self.duplicates += 1
            # Decided again (a batch whose ack never reached the server), here after a restart or by
            # the instance that took over: the stream's dedup by id keeps the first.
            log.info("handoff %s was already queued (seq %d): not handed off again", h.id, ack.seq)
            detail = f"already queued by another instance or before a restart (HANDOFFS seq {ack.seq}): not again"
        else:
            self.queued += 1
            detail = f"queued on {subject} (HANDOFFS seq {ack.seq})"
        return h.id, ack.seq, detail

    async def keep_queueing(self, stop: asyncio.Event, upkeep: Upkeep) -> None:
        """Queue what the scheduler, agents and `dlq replay` add to the outbox (the engine queues
        its own before each ack), when woken and every QUEUE_POLL_S."""

        async def step() -> None:
            await self.queue_pending()

        await upkeep.every(
            "handoff-queue", step, interval_s=QUEUE_POLL_S, wake=self._wake, core=True, backoff=Backoff(cap_s=10.0)
        )

    # ---- delivering ----

    async def deliver(self, upkeep: Upkeep) -> None:
        """Take handoffs from the deployment's queue and deliver them, until upkeep's stop."""

        async def bind() -> PullSubscription:
            await self.ensure_consumer()
            return await self.js.pull_subscribe_bind(durable=self.durable, stream=bus.HANDOFFS_STREAM)

        await pull(upkeep, "handoff-delivery", self.nc, bind, self._take, batch=self._room, wait_s=1.0)

    async def drain(self, timeout_s: float) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_s)

    async def _room(self) -> int:
        while self._in_flight >= MAX_IN_FLIGHT:
            self._freed.clear()
            await self._freed.wait()
        return MAX_IN_FLIGHT - self._in_flight

    async def _take(self, msgs: list[Msg]) -> None:
        for msg in msgs:
            self._in_flight += 1
            task = asyncio.create_task(self._deliver(msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, msg: Msg) -> None:
        try:
            await self._deliver_one(msg)
        except Exception:  # recording failed, or NATS went away: the message comes back after ack_wait
            log.exception("delivering the queued handoff at seq %s failed", msg.metadata.sequence.stream)
        finally:
            self._in_flight -= 1
            self._freed.set()

    async def _deliver_one(self, msg: Msg) -> None:
        headers = msg.headers or {}
        if headers.get(CLUSTER_HEADER) != self.cluster:
            await msg.ack()  # a nats agent's own message for its workers, or another deployment's
            return
        try:
            h = _decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            seq = msg.metadata.sequence.stream
            log.warning("the handoff queue holds a message that is not a handoff (seq %s)", seq)
            await msg.term()
            return
        if h.id in self._handling:
            return  # a redelivery overtook this instance's own delivery of it: that one settles the message
        self._handling.add(h.id)
        try:
            # From receipt to ack: a slow store or a full target must not let ack_wait lapse and
            # the server hand the message out again while it is being delivered.
            async with self._in_progress(msg):
                await self._deliver_handoff(msg, h, headers)
        finally:
            self._handling.discard(h.id)

    async def _deliver_handoff(self, msg: Msg, h: Handoff, headers: dict[str, str]) -> None:
        now = self.clock()
        not_before = float(headers.get(NOT_BEFORE_HEADER) or 0.0)
        if not_before > now:
            await msg.nak(delay=min(not_before - now, MAX_NAK_DELAY_S))
            return
        if self.gate is not None and self.gate.paused(h.target):  # its release is being checked
            await msg.nak(delay=PAUSED_NAK_S)
            return
        seq = int(msg.metadata.sequence.stream)
        state, tries = await self._take_queued(h, seq, now, headers.get(DECIDED_BY_HEADER))
        if state in _SETTLED:
            await msg.ack()  # settled here already: its ack was lost, or it was dropped
            return
        # The attempt: this instance's count when it has tried before; else the server's (the
        # deliveries of an instance that died count too).
        h.attempt = tries if state != "new" else max(1, int(msg.metadata.num_delivered or 1))
        target = self.targets().get(h.target)
        started = time.monotonic()
        if target is None:
            outcome: Outcome = Dead(no_target(h))
        else:
            async with self._limit(h.target):
                started = time.monotonic()  # the request may reach the target from here on
                outcome = await gated_attempt(self.gate, target, h)
        now = self.clock()
        if self.metrics is not None:
            latency = fired_ago_s(h, now) if isinstance(outcome, Delivered) else None
            self.metrics.delivered(h.target, outcome_label(outcome), latency)
        state, detail, next_at = settlement(h, outcome, now)
        await self._finish(h.id, state, now, detail, next_at)
        if state in ("retrying", "pending"):
            await msg.nak(delay=min(max(0.0, (next_at or now) - now), MAX_NAK_DELAY_S))
        elif state == "dead":
            log.warning("handoff %s to %s dead-lettered: %s", h.id, h.target, detail)
            await msg.term()
        else:
            await msg.ack_sync(timeout=5.0)
            if self.metrics is not None:  # the window in which this instance's death means a second delivery
                self.metrics.ack_window.observe(time.monotonic() - started)

    def _limit(self, target: str) -> asyncio.Semaphore:
        limit = self._limits.get(target)
        if limit is None:
            limit = self._limits[target] = asyncio.Semaphore(self.per_target)
        return limit

    @contextlib.asynccontextmanager
    async def _in_progress(self, msg: Msg) -> AsyncIterator[None]:
        """Keep the server from handing the message to another deliverer while this one works on it
        (an agent's run may take minutes); once this instance dies, it comes back after ack_wait.
        One heartbeat for every delivery under way, not a task each: most end long before it beats,
        and a burst of them shares one."""
        self._under_way[id(msg)] = msg
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.create_task(self._beat(), name="handoff-in-progress")
        try:
            yield
        finally:
            self._under_way.pop(id(msg), None)
            if not self._under_way and self._heartbeat is not None:
                self._heartbeat.cancel()  # nothing left to keep: no task outlives the deliveries
                self._heartbeat = None

    async def _beat(self) -> None:
        """Every third of ack_wait, an in-progress ack for each message under way (one taken just
        before a beat gets it early, one just after within the third: never later)."""
        while self._under_way:
            await asyncio.sleep(self.ack_wait_s / 3)
            for msg in list(self._under_way.values()):
                with contextlib.suppress(nats.errors.Error):
                    await msg.in_progress()
