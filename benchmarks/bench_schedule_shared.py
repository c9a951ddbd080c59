"""What a deployment of several instances adds to the schedule runner (watchd/cron/shared.py).

N schedules (default 500) with `cron = "* * * * *"` and a trivial `then` come due at one minute,
on a virtual clock, in-process with a real state file and a nats-server of its own. Measured: the
wall time of the runner's wake-up at that minute (plan, claim, start the runs; the runs themselves
are awaited outside the figure), for

- one instance alone (ticks claimed in SQLite only);
- an instance of a deployment (also: the position moved by compare-and-set, each run claimed on
  its tick), steady state;
- an instance that has just come to run all N (a shard taken over): it first reads each
  schedule's position, then claims.

Figures are per wake-up and per schedule, with the ratio to the instance alone, in one run.

Usage: python benchmarks/bench_schedule_shared.py [--schedules 500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_scheduler import loaded_with

from watchd import bus, cluster
from watchd.config import ClusterConfig
from watchd.cron.runner import Scheduler
from watchd.cron.shared import SharedSchedules
from watchd.store import Store, db_path


class Clock:
    def __init__(self, at: float) -> None:
        self.t = at

    def __call__(self) -> float:
        return self.t


async def _nothing(subject: str, data: dict[str, Any]) -> None:
    return None


async def instance(root: Path, n: int, clock: Clock, js: Any | None) -> tuple[Scheduler, Store]:
    loaded = loaded_with(root, n, "* * * * *")
    store = Store(db_path(loaded.state_dir))
    shared = None
    if js is not None:
        lease = cluster.Lease(js, ClusterConfig(), 15.0, state_dir=str(root), watches="w", embedded=False)
        await lease.open()
        shared = SharedSchedules(js, "watchd", lease.me.instance, lease.claim_tick)
        await shared.open()
    sched = Scheduler(store, loaded, emit=_nothing, clock=clock, shared=shared)
    await sched.start()
    return sched, store


async def timed_step(sched: Scheduler, clock: Clock, at: float) -> float:
    clock.t = at
    started = time.perf_counter()
    await sched.step()
    took = time.perf_counter() - started
    await sched.idle()
    return took


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--schedules", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    n, rounds = args.schedules, args.rounds
    minute = (int(time.time() // 60) + 1) * 60.0
    with tempfile.TemporaryDirectory() as tmp:
        server = bus.EmbeddedNats(Path(tmp) / "nats", listen="127.0.0.1:0")
        await server.start()
        nc = await bus.connect(server.url, name="bench")
        js = nc.jetstream()
        try:
            figures: dict[str, list[float]] = {"alone": [], "deployment": [], "taken over": []}
            clocks = {k: Clock(minute - 55) for k in ("alone", "deployment", "other")}
            alone, s1 = await instance(Path(tmp) / "alone", n, clocks["alone"], None)
            member, s2 = await instance(Path(tmp) / "member", n, clocks["deployment"], js)
            other, s3 = await instance(Path(tmp) / "other", n, clocks["other"], js)
            for k in range(rounds):
                at = minute + 60 * k + 5
                figures["alone"].append(await timed_step(alone, clocks["alone"], at))
                if k == 0:
                    await timed_step(member, clocks["deployment"], at)  # its own first read of the positions
                    continue
                figures["deployment"].append(await timed_step(member, clocks["deployment"], at))
            # `other` has not run them since it started: it takes them over from `member`.
            figures["taken over"].append(await timed_step(other, clocks["other"], minute + 60 * rounds + 5))
            for sched, store in ((alone, s1), (member, s2), (other, s3)):
                await sched.stop_runs("benchmark over")
                store.close()
        finally:
            await nc.close()
            await server.stop()
    base = statistics.median(figures["alone"])
    print(f"{n} schedules due at one minute; one wake-up (plan, claim, start the runs), median of the rounds:")
    for what, values in figures.items():
        mid = statistics.median(values)
        print(
            f"  {what:>10}: {mid * 1000:8.1f} ms per wake-up, {mid / n * 1e6:7.0f} µs per schedule, "
            f"{mid / base:5.2f}× the instance alone ({len(values)} rounds)"
        )


if __name__ == "__main__":
    asyncio.run(main())
