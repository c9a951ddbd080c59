"""kill -9 at random moments while events pour in: after the last restart drains the backlog there is
exactly one fire and one handoff per event id — none lost, none doubled. The real daemon, the real
embedded nats-server (which each kill takes down with the daemon), real SQLite."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import threading
import time
from collections.abc import Callable

import nats.errors
import pytest
from support.processes import DaemonProc
from support.waiting import wait_until

from watchd import bus
from watchd.errors import WatchdError
from watchd.model import make_event

N = 400  # from the background publisher
BURST = 40
CYCLES = 3  # each kills twice: once at a random moment, once mid-backlog
BACKLOG = 1500  # published while the daemon is down, per cycle
TOTAL = N + CYCLES * BACKLOG

WATCHES = {
    "jobs.toml": """
[[watch]]
id = "jobs"
kind = "match"
on = { subject = "job.*" }
then = ["notify.console"]
"""
}


pytestmark = pytest.mark.usefixtures("subreaper")  # kill -9 leaves nats-server orphans to reap


class Publisher(threading.Thread):
    """Publishes events with fixed ids in bursts, re-sending each until NATS acks it (as a careful
    source does across a server restart: a re-send with the same id is stored once)."""

    def __init__(self, url: str, ids: list[str], pause_s: float) -> None:
        super().__init__(daemon=True, name="publisher")
        self.url, self.ids, self.pause_s = url, ids, pause_s
        self.acks: dict[str, bus.PubAckInfo] = {}
        self.retries = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:
            self.error = exc

    async def _run(self) -> None:
        nc = await bus.connect(self.url, name="test-publisher", timeout_s=20)
        try:
            js = nc.jetstream()
            for n, event_id in enumerate(self.ids):
                event = make_event("job.run", {"n": n}, id=event_id, source="test")
                deadline = time.monotonic() + 30
                while True:
                    try:
                        self.acks[event_id] = await bus.publish_event(js, event, timeout_s=1)
                        break
                    except (WatchdError, nats.errors.Error, TimeoutError):
                        if time.monotonic() > deadline:
                            raise
                        self.retries += 1
                        await asyncio.sleep(0.05)
                if n % BURST == BURST - 1:
                    await asyncio.sleep(self.pause_s)
        finally:
            with contextlib.suppress(Exception):
                await nc.close()


def test_kill9_during_publishing_loses_nothing_and_doubles_nothing(
    process_factory: Callable[..., DaemonProc],
) -> None:
    seed = int(os.environ.get("WATCHD_TEST_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    d = process_factory(WATCHES).start()
    ids = [f"ev-{seed}-{i:04d}" for i in range(N)]
    pub = Publisher(d.nats_url, list(ids), pause_s=0.15)
    pub.start()

    acks: dict[str, bus.PubAckInfo] = {}
    old_nats: list[int] = []
    for cycle in range(CYCLES):
        # A kill at a random moment while the background publisher runs.
        time.sleep(rng.uniform(0.0, 0.4))
        old_nats.append(d.nats_pid() or 0)
        d.kill9()
        # While it is down a backlog piles up on the orphaned server; the next daemon fetches it in
        # batches and is killed again as soon as it has committed one: mid-backlog, with a fetched
        # batch not yet committed (the case where an ack of later messages could swallow it).
        burst = [make_event("job.burst", {"n": n}, id=f"burst-{seed}-{cycle}-{n:04d}") for n in range(BACKLOG)]
        acks.update((e.id, a) for e, a in zip(burst, d.publish(*burst), strict=True))
        ids += [e.id for e in burst]
        before = int(d.meta("last_seq") or 0)
        d.start(wait=False)
        wait_until(
            lambda b=before: int(d.meta("last_seq") or 0) > b,
            timeout_s=60,
            step_s=0.002,
            what="the first backlog batch to commit",
        )
        time.sleep(rng.uniform(0.0, 0.03))
        old_nats.append(d.nats_pid() or 0)
        d.kill9()
        d.start()
    pub.join(60)
    assert not pub.is_alive() and pub.error is None, f"publisher failed (seed {seed}): {pub.error!r}"
    assert len(pub.acks) == N
    acks.update(pub.acks)
    assert d.nats_pid() not in old_nats, "the new daemon did not replace the orphaned nats-server"
    assert "left over from an earlier run" in d.stderr()
    assert "resuming the event stream after seq" in d.stderr(), "no kill landed mid-backlog"

    top = max(a.seq for a in acks.values())
    # Every event stored once, even those re-sent across a restart.
    assert len({a.seq for a in acks.values()}) == len(ids) == TOTAL

    def drained() -> bool:
        return int(d.meta("last_seq") or 0) >= top and not d.query(
            "SELECT 1 FROM handoffs WHERE state != 'delivered' LIMIT 1"
        )

    wait_until(drained, timeout_s=30, what=f"the backlog to drain (seed {seed})")

    # Re-sending already-stored ids: stored once (duplicate acks), no new fire.
    again = [make_event("job.run", {"again": True}, id=i) for i in rng.sample(ids, 50)]
    dup_acks = d.publish(*again)
    assert all(a.duplicate for a in dup_acks)
    assert {a.seq for a in dup_acks} == {acks[e.id].seq for e in again}
    time.sleep(0.3)
    assert d.alive()

    fired = d.decisions("jobs", "fired")
    fired_ids = [f["event_id"] for f in fired]
    assert len(fired) == TOTAL, f"{len(fired)} fires for {TOTAL} events (seed {seed})"
    assert sorted(fired_ids) == sorted(ids), f"lost or doubled events (seed {seed})"
    assert len({f["seq"] for f in fired}) == TOTAL

    handoffs = d.handoffs("jobs")
    assert len(handoffs) == TOTAL
    evidence_ids = [h["evidence"][0]["id"] for h in handoffs]
    assert sorted(evidence_ids) == sorted(ids)
    assert {h["state"] for h in handoffs} == {"delivered"}
    assert len({h["id"] for h in handoffs}) == TOTAL
    # Delivery is at-least-once (a kill between printing and recording may print one again), so
    # every handoff id was printed, and nothing else was.
    printed = {line.rsplit("handoff ", 1)[1].split()[0] for line in d.stdout().splitlines() if "handoff h_" in line}
    assert printed == {h["id"] for h in handoffs}
    assert d.term() == 0

    # A fresh state store (watchd.db removed) binds to the same durable and replays the stream for
    # the engine's state only: nothing already decided is handed off again.
    for f in d.state_dir.glob("watchd.db*"):
        f.unlink()
    d.start()
    d.publish(make_event("job.after", id=f"after-{seed}"))
    (h,) = wait_until(lambda: d.handoffs("jobs"), what="a fire on a fresh state store")
    assert h["evidence"][0]["id"] == f"after-{seed}"
    assert d.term() == 0
