"""More than one machine (SPEC section 9): where the engine resumes on the shared event stream.

The engine's durable consumer is shared by every instance of a deployment and is never deleted or
recreated: another live instance may be bound to it. What an instance needs past its own commit
cursor it reads straight from the stream (an ephemeral consumer, no acks), in two parts:

- up to the durable's ack floor, events another instance already decided and acknowledged (commit,
  then ack): replayed through the pure engine for its state only, never handed off again;
- from there to what the durable has delivered, events fetched by an instance that died before
  acknowledging them: the server redelivers them only after ack_wait, and an ack of any later event
  (AckPolicy.ALL) would acknowledge them unseen, so they are decided here, in stream order, first.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy

from watchd import bus
from watchd.model import EVENTS_PREFIX

log = logging.getLogger(__name__)

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


def plan_catch_up(position: int, info: ConsumerInfo | None) -> CatchUp:
    """From this instance's cursor and the durable's state (None: there is no durable yet)."""
    if info is None:
        return CatchUp(position, position, position)
    floor = info.ack_floor.stream_seq if info.ack_floor and info.ack_floor.stream_seq else 0
    delivered = info.delivered.stream_seq if info.delivered and info.delivered.stream_seq else 0
    replay_to = max(position, floor)
    return CatchUp(position, replay_to, max(replay_to, delivered))


async def read_range(js: JetStreamContext, after: int, upto: int) -> AsyncIterator[list[Msg]]:
    """The EVENTS stream's messages with after < seq <= upto, in batches, in order. Messages the
    stream no longer holds (aged out) are simply not there; the first one read says where it starts."""
    if upto <= after:
        return
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=after + 1,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=READ_IDLE_DELETE_S,
    )
    sub = await js.pull_subscribe(EVENTS_PREFIX + ">", stream=bus.EVENTS_STREAM, config=config)
    try:
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
    finally:
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
            await sub.unsubscribe()


async def durable_info(consumer: bus.EventConsumer) -> ConsumerInfo | None:
    """The durable's server-side state, or None when it does not exist yet."""
    try:
        return await consumer.info()
    except nats.js.errors.NotFoundError:
        return None
