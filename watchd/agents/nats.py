"""The `nats` agent: hand a handoff to remote workers over JetStream, and hear back from them.

The protocol (a worker is `watchd worker TARGET -- CMD`, or anything that speaks this):

1. watchd stores the handoff JSON (the handoff object of SPEC section 4) on the subject
   `watchd.handoffs.<target>` (e.g. `watchd.handoffs.agent.claw`) in the JetStream stream
   HANDOFFS, with `Nats-Msg-Id: <handoff id>`: a retry of the same handoff is stored once.
2. Workers consume that subject with a durable pull consumer (`watchd worker` names it
   `worker-<target with dots as dashes>`, e.g. `worker-agent-claw`); workers sharing a durable
   share the work, one handoff to one worker at a time.
3. A worker answers on `watchd.replies.<handoff id>` with the JSON object
   `{"id": "<handoff id>", "status": "accepted" | "done" | "rejected", "detail": "…"}`:
   `accepted` as soon as it takes the handoff, then `done` (the work is finished) or `rejected`
   (it will not do it: the handoff is dead-lettered with the detail). That subject is stored in
   HANDOFFS too, so a reply is kept when watchd is down; publish it through JetStream (and wait for
   the ack) before acking the handoff. A worker that fails retries by itself (nak, redelivery) and
   says nothing until it is done or gives up (`rejected`).
4. watchd subscribes to the reply subject *before* publishing and waits `ack_timeout` for the first
   reply: accepted → state `accepted`, done → `done`, rejected → dead letter, no reply → retried
   with backoff (the handoff stays in the stream; the retry does not store it again). Replies that
   come later (the `done` after an `accepted`, or a worker that only turned up after a retry) are
   recorded by `follow_replies`, a durable consumer of `watchd.replies.>` in the daemon.

Before publishing, the last stored reply for the handoff is looked up: a handoff a worker already
finished is not sent again (a restart of watchd mid-delivery never runs it twice), and one a worker
rejected is sent again as a new message (the delivery after a rejection is `watchd dlq replay`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from watchd import bus
from watchd.config import NatsAgent
from watchd.cron.schedule import format_duration, parse_duration
from watchd.dispatch import Dead, Delivered, Outcome, Retry
from watchd.errors import EventRejected, NatsUnavailable
from watchd.link import pull
from watchd.model import HANDOFFS_PREFIX, REPLIES_PREFIX, Handoff, encode
from watchd.store import Store
from watchd.upkeep import Upkeep

log = logging.getLogger("watchd.agents.nats")

REPLIES_DURABLE = "watchd-replies"
NOT_SETTLED_RETRY_S = 0.5  # a reply for a handoff still being delivered is looked at again after this
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")  # one NATS subject token

Status = Literal["accepted", "done", "rejected"]


class Reply(msgspec.Struct, kw_only=True):
    id: str
    status: Status
    detail: str = ""


@dataclass(frozen=True, slots=True)
class StoredReply:
    reply: Reply
    seq: int  # its sequence in the HANDOFFS stream


_reply_decoder = msgspec.json.Decoder(Reply)


def handoff_subject(target: str) -> str:
    return HANDOFFS_PREFIX + target


def reply_subject(handoff_id: str) -> str:
    return REPLIES_PREFIX + handoff_id


def worker_durable(target: str) -> str:
    """The default durable for a target's workers: consumer names may not contain dots."""
    return "worker-" + target.replace(".", "-")


def decode_reply(raw: bytes) -> Reply | None:
    try:
        return _reply_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def settled(reply: Reply) -> tuple[str, str]:
    """The handoff state and detail a reply stands for."""
    if reply.status == "accepted":
        return "accepted", reply.detail or "accepted by a worker"
    if reply.status == "done":
        return "done", reply.detail or "done"
    return "dead", f"rejected by worker: {reply.detail or 'no reason given'}"


def outcome_of(reply: Reply) -> Outcome:
    state, detail = settled(reply)
    return Dead(detail) if state == "dead" else Delivered(detail, state=state)


async def last_reply(js: JetStreamContext, handoff_id: str) -> StoredReply | None:
    """The latest reply stored for a handoff, or None."""
    try:
        raw = await js.get_last_msg(bus.HANDOFFS_STREAM, reply_subject(handoff_id), direct=True)
    except nats.js.errors.NotFoundError:
        return None
    except (nats.errors.Error, TimeoutError) as exc:
        raise NatsUnavailable(f"cannot read replies for {handoff_id} ({type(exc).__name__})") from None
    reply = decode_reply(raw.data or b"")
    return None if reply is None else StoredReply(reply, int(raw.seq or 0))


async def send_reply(js: JetStreamContext, handoff_id: str, status: Status, detail: str, handoff_seq: int) -> None:
    """Store a reply. Its id names the stored handoff message it answers, so the same answer to a
    redelivered message is stored once, while the answer to a re-sent handoff is a new one."""
    body = encode(Reply(id=handoff_id, status=status, detail=detail))
    await bus.publish_raw(js, reply_subject(handoff_id), body, f"{handoff_id}.{status}.{handoff_seq}")


class NatsRunner:
    """Delivers a handoff to the workers of one target and waits for the first reply."""

    def __init__(
        self, cfg: NatsAgent, *, name: str, js: JetStreamContext, nc: Client, ack_timeout_s: float | None = None
    ) -> None:
        self.cfg = cfg
        self.name = name
        self.js = js
        self.nc = nc
        self.ack_timeout_s = parse_duration(cfg.ack_timeout) if ack_timeout_s is None else ack_timeout_s
        self.subject = handoff_subject(name)

    def __repr__(self) -> str:
        return f"NatsRunner({self.name!r})"

    async def deliver(self, handoff: Handoff) -> Outcome:
        if not _TOKEN.match(handoff.id):
            return Dead(f"{self.name}: handoff id {handoff.id!r} cannot be a NATS subject token")
        try:
            # Subscribe first: a fast worker may answer before publish() even returns.
            sub = await self.nc.subscribe(reply_subject(handoff.id))
        except nats.errors.Error as exc:
            return Retry(f"{self.name}: NATS is not available ({type(exc).__name__})")
        try:
            try:
                prior = await last_reply(self.js, handoff.id)
            except NatsUnavailable as exc:
                return Retry(f"{self.name}: {exc.message}")
            msg_id = handoff.id
            if prior is not None and prior.reply.status != "rejected":
                # A worker has it or finished it (a retry after a restart, or a late worker): never twice.
                return outcome_of(prior.reply)
            if prior is not None:
                # Rejected earlier, so this is a replay of the dead letter: a new message for the
                # workers, keyed by the rejection it follows (a retry of this replay is stored once).
                msg_id = f"{handoff.id}.after.{prior.seq}"
            try:
                await bus.publish_raw(self.js, self.subject, encode(handoff), msg_id)
            except NatsUnavailable as exc:
                return Retry(f"{self.name}: {exc.message}")
            except EventRejected as exc:
                return Dead(f"{self.name}: {exc.message}")
            return await self._first_reply(sub, handoff.id)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _first_reply(self, sub: Subscription, handoff_id: str) -> Outcome:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ack_timeout_s
        while (left := deadline - loop.time()) > 0:
            try:
                msg = await sub.next_msg(timeout=left)
            except TimeoutError:
                break
            except nats.errors.Error as exc:
                return Retry(f"{self.name}: lost NATS while waiting for a worker ({type(exc).__name__})")
            reply = decode_reply(msg.data)
            if reply is None or reply.id != handoff_id:
                log.warning("%s: ignoring a malformed reply on %s: %r", self.name, msg.subject, msg.data[:200])
                continue
            return outcome_of(reply)
        return Retry(
            f"no worker replied within {format_duration(self.ack_timeout_s)} (is `watchd worker {self.name} -- CMD` "
            "running? The handoff waits in the stream for one)"
        )

    async def probe(self) -> tuple[bool, str]:
        """Whether some worker consumes this target, from its durable's state on the server."""
        try:
            info = await self.js.consumer_info(bus.HANDOFFS_STREAM, worker_durable(self.name))
        except nats.js.errors.NotFoundError:
            return False, f"no worker has consumed {self.subject} yet (run `watchd worker {self.name} -- CMD`)"
        except (nats.errors.Error, TimeoutError) as exc:
            return False, f"cannot ask NATS ({type(exc).__name__})"
        waiting, busy, queued = info.num_waiting or 0, info.num_ack_pending or 0, info.num_pending or 0
        return waiting + busy > 0, f"{waiting} worker(s) idle, {busy} handoff(s) in progress, {queued} queued"


# ---- replies after the delivery ended -------------------------------------------------------------

# From which states a late reply moves a handoff: a worker that turned up after watchd gave up still
# did the work (dead → done), but nothing overrides `done`, a drop, or a delivery in flight.
_SETTLE_FROM: dict[str, tuple[str, ...]] = {
    "accepted": ("retrying",),
    "done": ("retrying", "accepted", "dead"),
    "rejected": ("retrying", "accepted"),
}


async def follow_replies(
    js: JetStreamContext,
    store: Store,
    stop: asyncio.Event,
    *,
    clock: Callable[[], float] = time.time,
    fetch_wait_s: float = 5.0,
    upkeep: Upkeep | None = None,
    nc: Client | None = None,
) -> None:
    """Record workers' replies that arrive when no delivery waits for them: `accepted → done`, a
    rejection after acceptance, a worker that answered only after watchd moved on to retrying.
    `nc` is the connection under `js`: when it is opened again, the consumer is bound again."""
    config = ConsumerConfig(
        durable_name=REPLIES_DURABLE,
        name=REPLIES_DURABLE,
        filter_subject=REPLIES_PREFIX + ">",
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=30.0,
        max_deliver=-1,
    )

    async def bind() -> JetStreamContext.PullSubscription:
        try:
            await js.add_consumer(bus.HANDOFFS_STREAM, config)
            return await js.pull_subscribe_bind(durable=REPLIES_DURABLE, stream=bus.HANDOFFS_STREAM)
        except nats.js.errors.APIError as exc:
            raise NatsUnavailable(
                f"cannot create consumer {REPLIES_DURABLE} on stream {bus.HANDOFFS_STREAM}: {exc.description}",
                hint=f"if its config changed incompatibly, delete it: nats consumer rm {bus.HANDOFFS_STREAM} "
                f"{REPLIES_DURABLE}",
            ) from None

    async def record(msgs: list[Msg]) -> None:
        for msg in msgs:
            try:
                await _settle(js, store, msg, clock)
            except Exception:  # one bad reply must not stop the others; it comes back after ack_wait
                log.exception("replies: cannot record %s", msg.subject)

    await pull(upkeep or Upkeep(stop), "nats-replies", nc, bind, record, sub=await bind(), wait_s=fetch_wait_s)


async def _settle(js: JetStreamContext, store: Store, msg: Msg, clock: Callable[[], float]) -> None:
    handoff_id = msg.subject.removeprefix(REPLIES_PREFIX)
    reply = decode_reply(msg.data)
    if reply is None or reply.id != handoff_id:
        log.warning("replies: ignoring a malformed reply on %s", msg.subject)
        await msg.ack()
        return
    latest = await last_reply(js, handoff_id)
    if latest is not None and latest.seq != msg.metadata.sequence.stream:
        await msg.ack()  # a newer reply for this handoff stands; it is settled on its own
        return
    state, detail = settled(reply)
    before = await store.run(store.settle, handoff_id, state, clock(), detail, _SETTLE_FROM[reply.status])
    if before == "delivering":
        await msg.nak(delay=NOT_SETTLED_RETRY_S)  # the delivery in flight records its outcome first
        return
    if before is not None and before in _SETTLE_FROM[reply.status]:
        log.info("handoff %s: %s (reply from its worker)", handoff_id, state)
    await msg.ack()
