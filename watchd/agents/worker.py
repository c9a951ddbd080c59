"""`watchd worker TARGET -- CMD`: run a command for each handoff to an agent of type `nats`.

It consumes `watchd.handoffs.<TARGET>` with a durable pull consumer (`worker-<target>`; every
worker with the same durable shares the work) and, for each handoff, speaks the protocol of
`watchd.agents.nats`: replies `accepted`, runs CMD exactly as the `command` agent does (the handoff
JSON on stdin, `WATCHD_HANDOFF_ID` and friends in the environment, its own process group, a timeout
that stops the whole group), then replies `done` (exit 0) or `rejected` (the reject exit code, 75),
and only then acks. Any other failure is retried through JetStream (nak with backoff) and, after
`max_attempts` deliveries, rejected. `WATCHD_ATTEMPT` is the delivery count here.

A small SQLite file remembers the handoffs finished here, written before the `done` reply: a
handoff redelivered after a crash between the two (or the ack lost) is answered `done` again and
never run twice. A handoff whose stored reply is already `done` (another worker finished it) is
acked without running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from watchd import bus
from watchd.agents.command import CommandRunner
from watchd.agents.nats import Status, handoff_subject, last_reply, send_reply, worker_durable
from watchd.config import CommandAgent
from watchd.cron.schedule import format_duration
from watchd.dispatch import MAX_ATTEMPTS, Dead, Delivered, Outcome, backoff_s
from watchd.errors import NatsUnavailable, WatchdError
from watchd.link import pull
from watchd.model import SUBJECT_RE, Handoff
from watchd.store.worker_record import DoneRecord
from watchd.upkeep import Upkeep

log = logging.getLogger("watchd.worker")

FETCH_WAIT_S = 1.0  # longest a fetch waits: how soon a stop is noticed between handoffs
KEEP_RECORD_S = 30 * 86400.0  # handoffs stay in the stream 7 days; remember them well past that
_REJECTED_PREFIX = "rejected by agent: "


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "watchd-worker"


@dataclass
class WorkerOptions:
    target: str
    command: list[str]
    timeout: str = "5m"
    ack_wait_s: float = 60.0
    concurrency: int = 1
    max_attempts: int = MAX_ATTEMPTS
    reject_exit_code: int = 75
    grace_s: float = 10.0
    durable: str = ""
    state_dir: Path = field(default_factory=default_state_dir)

    def __post_init__(self) -> None:
        self.durable = self.durable or worker_durable(self.target)


def check_options(opts: WorkerOptions) -> None:
    """Fail before connecting: a bad target or a missing program would only dead-letter handoffs."""
    if not SUBJECT_RE.match(opts.target):
        raise WatchdError(f"bad target {opts.target!r}", hint="give the agent's name as in `then`, e.g. agent.claw")
    if not opts.command:
        raise WatchdError("no command given", hint="e.g. watchd worker agent.claw -- my-agent handle --stdin")
    program = opts.command[0]
    if shutil.which(program) is None:
        raise WatchdError(f"command not found: {program}", hint="a program on PATH, or a path to an executable file")
    if any(c in opts.durable for c in ".*> \t/\\"):
        raise WatchdError(f"bad --durable {opts.durable!r}: no dots, wildcards, spaces or slashes")


class Worker:
    def __init__(self, opts: WorkerOptions, nc: Client, js: JetStreamContext, record: DoneRecord) -> None:
        self.opts = opts
        self.nc = nc
        self.js = js
        self.record = record
        agent = CommandAgent(command=opts.command, timeout=opts.timeout, reject_exit_code=opts.reject_exit_code)
        self.runner = CommandRunner(agent, name=opts.target)
        self.who = f"{socket.gethostname()} pid {os.getpid()}"
        self.handled = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def subscribe(self) -> JetStreamContext.PullSubscription:
        opts = self.opts
        config = ConsumerConfig(
            durable_name=opts.durable,
            name=opts.durable,
            filter_subject=handoff_subject(opts.target),
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=opts.ack_wait_s,
            max_deliver=-1,
            max_ack_pending=max(1000, opts.concurrency),
        )
        try:
            await self.js.add_consumer(bus.HANDOFFS_STREAM, config)
        except nats.js.errors.NotFoundError:
            raise NatsUnavailable(
                f"NATS has no {bus.HANDOFFS_STREAM} stream", hint="start `watchd run` first: it creates the stream"
            ) from None
        except nats.js.errors.APIError as exc:
            raise NatsUnavailable(
                f"cannot create consumer {opts.durable} on {bus.HANDOFFS_STREAM}: {exc.description}",
                hint="another worker may use this --durable for another target; pick another name",
            ) from None
        return await self.js.pull_subscribe_bind(durable=opts.durable, stream=bus.HANDOFFS_STREAM)

    async def run(self, stop: asyncio.Event, force: asyncio.Event) -> None:
        """Fetch while there is a free slot, until `stop`; then let running handoffs finish within the
        grace period (or until `force`), and stop the rest: their commands are killed, they are nak'd."""
        sub = await self.subscribe()  # a consumer that cannot be made ends the worker with the reason
        log.info(
            "worker for %s ready: consumer %s, %d at a time", self.opts.target, self.opts.durable, self.opts.concurrency
        )
        stopped = asyncio.ensure_future(stop.wait())

        async def room() -> int:
            """Free slots; when there are none, wait until a handoff finishes (or stop)."""
            free = self.opts.concurrency - len(self._tasks)
            if free <= 0:
                await asyncio.wait({*self._tasks, stopped}, return_when=asyncio.FIRST_COMPLETED)
            return max(0, free)

        async def start(msgs: list[Msg]) -> None:
            for msg in msgs:
                task = asyncio.create_task(self._guarded(msg))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

        try:
            await pull(
                Upkeep(stop, logger=log),
                "handoff fetch",
                self.nc,
                self.subscribe,
                start,
                sub=sub,
                batch=room,
                wait_s=FETCH_WAIT_S,
            )
        finally:
            stopped.cancel()
            await self._drain(force)

    async def _drain(self, force: asyncio.Event) -> None:
        if not self._tasks:
            return
        log.info(
            "stopping: waiting up to %s for %d running handoff(s)", format_duration(self.opts.grace_s), len(self._tasks)
        )
        forced = asyncio.ensure_future(force.wait())
        deadline = time.monotonic() + self.opts.grace_s
        while self._tasks and not force.is_set() and (left := deadline - time.monotonic()) > 0:
            await asyncio.wait({*self._tasks, forced}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        forced.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _guarded(self, msg: Msg) -> None:
        try:
            await self.handle(msg)
        except asyncio.CancelledError:
            raise
        except WatchdError as exc:  # NATS went away mid-way: unacked, it is redelivered after ack_wait
            log.warning("%s: %s; it will be redelivered", msg.subject, exc.message)
        except Exception:
            log.exception("handling %s failed; it will be redelivered", msg.subject)

    async def handle(self, msg: Msg) -> None:
        meta = msg.metadata
        seq, delivered = int(meta.sequence.stream), int(meta.num_delivered or 1)
        try:
            handoff = msgspec.json.decode(msg.data, type=Handoff)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("message %d on %s is not a handoff (%s): dropping it", seq, msg.subject, exc)
            await msg.term()
            return
        hid = handoff.id
        done = await self.record.get(hid)
        if done is not None:
            log.info("%s was already done here: replying done again, not running it twice", hid)
            await self._reply(hid, "done", done, seq)
            await msg.ack()
            return
        prior = await last_reply(self.js, hid)
        if prior is not None and prior.reply.status == "done":
            log.info("%s was already done by another worker: not running it again", hid)
            await msg.ack()
            return
        await self._reply(hid, "accepted", f"accepted by {self.who}", seq)
        log.info("%s (watch %s, delivery %d): running %s", hid, handoff.watch, delivered, self.opts.command[0])
        outcome = await self._run(msg, msgspec.structs.replace(handoff, attempt=delivered))
        if isinstance(outcome, Delivered):
            await self.record.put(hid, outcome.detail, time.time())  # before the reply: a crash after it never re-runs
            await self._reply(hid, "done", outcome.detail, seq)
            log.info("%s done", hid)
        elif isinstance(outcome, Dead):
            await self._reply(hid, "rejected", outcome.detail.removeprefix(_REJECTED_PREFIX), seq)
            log.info("%s rejected: %s", hid, outcome.detail)
        elif delivered >= self.opts.max_attempts:
            await self._reply(hid, "rejected", f"gave up after {delivered} attempts: {outcome.detail}", seq)
            log.warning("%s: gave up after %d attempts: %s", hid, delivered, outcome.detail)
        else:
            delay = backoff_s(delivered, outcome.retry_after_s)
            log.warning("%s failed (%s); retrying in %s", hid, outcome.detail, format_duration(delay))
            await msg.nak(delay=delay)
            return
        self.handled += 1
        await msg.ack()

    async def _reply(self, handoff_id: str, status: Status, detail: str, seq: int) -> None:
        await send_reply(self.js, handoff_id, status, detail, seq)

    async def _run(self, msg: Msg, handoff: Handoff) -> Outcome:
        """The command, telling JetStream the handoff is in progress so no other worker takes it."""
        task = asyncio.ensure_future(self.runner.deliver(handoff))
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=max(0.1, self.opts.ack_wait_s / 3))
                if done:
                    return task.result()
                with contextlib.suppress(nats.errors.Error):
                    await msg.in_progress()
        except asyncio.CancelledError:
            task.cancel()  # CommandRunner stops the process group
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            with contextlib.suppress(Exception):
                await msg.nak()  # at once: another worker (or this one, restarted) takes it again
            raise


async def run(urls: str | list[str], opts: WorkerOptions) -> int:
    """Run a worker until SIGTERM or SIGINT (a second one stops running commands at once)."""
    check_options(opts)
    stop, force = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        (force if stop.is_set() else stop).set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    record = await DoneRecord.open(opts.state_dir / f"{opts.durable}.db")
    await record.prune(time.time() - KEEP_RECORD_S)
    nc = await bus.connect(urls, name=f"watchd-worker {opts.target}")
    worker = Worker(opts, nc, nc.jetstream(), record)
    try:
        await worker.run(stop, force)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.flush(), 2)  # the last acks and naks reach the server
        with contextlib.suppress(Exception):
            await nc.close()
        await asyncio.to_thread(record.close)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("worker stopped after %d handoff(s)", worker.handled)
    return worker.handled
