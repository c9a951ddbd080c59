"""The schedule runner: lateness of many schedules firing at once, and wake-ups while idle.

The runner is driven in-process with a real state file (temp dir), the real loop (`Scheduler.run`)
and the real wall-clock timer (timerfd on Linux); events are collected in memory instead of being
published, so only the runner is measured.

1. Lateness: N schedules (default 1,000) with `cron = "* * * * *"` and a trivial `then` (one
   handoff into the outbox, no delivery) all fire at the same minute boundary. Lateness is the
   time from the tick instant to the moment the run starts (`lateness_s` in the `started` event),
   p50/p99/max, for --rounds consecutive minutes.
2. Idle: the same number of schedules whose next tick is far away (`0 0 1 1 *`); for --idle seconds
   nothing is due. Counted: loop iterations of the runner, the process's voluntary context switches
   (getrusage: every thread's wake-ups from a blocking wait), and CPU time. The same is then measured
   with the timerfd disabled (chunked sleeps, the fallback elsewhere than Linux) for comparison.

Usage: python benchmarks/bench_scheduler.py [--schedules 1000] [--rounds 2] [--idle 60]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from watchd import config
from watchd.cron.runner import Scheduler
from watchd.cron.walltimer import WallTimer
from watchd.model import iso
from watchd.store import Store, db_path

OFF = "[schedule.heartbeat]\nenabled = false\n[schedule.backup]\nenabled = false\n[schedule.canary]\nenabled = false\n"


def loaded_with(root: Path, n: int, cron: str) -> config.Loaded:
    body = "".join(f'[schedule.s{i}]\ncron = "{cron}"\nthen = ["notify.console"]\n' for i in range(n))
    root.mkdir(parents=True, exist_ok=True)
    path = root / "config.toml"
    path.write_text(f'state_dir = "state"\ntimezone = "UTC"\n{OFF}{body}')
    return config.load(path)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def lateness(root: Path, n: int, rounds: int) -> None:
    loaded = loaded_with(root, n, "* * * * *")
    store = Store(db_path(loaded.state_dir))
    late: dict[str, list[float]] = {}

    async def emit(subject: str, data: dict[str, Any]) -> None:
        # (at start-up each also runs the tick of the minute before, within the grace: not measured)
        if subject.endswith(".started") and data["tick"] >= iso(first):
            late.setdefault(data["tick"], []).append(data["lateness_s"])

    first = (int(time.time() // 60) + 1) * 60
    if first - time.time() < 3:
        first += 60
    sched = Scheduler(store, loaded, emit=emit)
    stop = asyncio.Event()
    task = asyncio.create_task(sched.run(stop))
    try:
        print(f"lateness: {n} schedules, waiting {first - time.time():.0f}s for the minute boundary …")
        while len(late) < rounds or len(late[max(late)]) < n:
            await asyncio.sleep(0.5)
            if time.time() > first + 60 * rounds + 30:
                raise SystemExit(f"timed out: {[len(v) for v in late.values()]}")
        await sched.idle()
    finally:
        stop.set()
        await task
        store.close()
    for tick, values in sorted(late.items())[:rounds]:
        ms = [v * 1000 for v in values]
        print(
            f"  tick {tick}: {len(ms)} runs started; lateness p50 {pct(ms, 50):.1f} ms, p99 {pct(ms, 99):.1f} ms, "
            f"max {max(ms):.1f} ms, mean {statistics.fmean(ms):.1f} ms"
        )


async def idle(root: Path, n: int, seconds: float, exact: bool) -> None:
    loaded = loaded_with(root, n, "0 0 1 1 *")
    store = Store(db_path(loaded.state_dir))

    async def emit(subject: str, data: dict[str, Any]) -> None:
        return None

    timer = WallTimer()
    if not exact:
        timer.close()  # the fallback: sleep in chunks, as on systems without timerfd
    sched = Scheduler(store, loaded, emit=emit, timer=timer)
    stop = asyncio.Event()
    task = asyncio.create_task(sched.run(stop))
    await asyncio.sleep(2)  # settle: start-up is not idle
    before = (sched.wakeups, resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw, time.process_time())
    await asyncio.sleep(seconds)
    after = (sched.wakeups, resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw, time.process_time())
    stop.set()
    await task
    store.close()
    per_min = 60 / seconds
    kind = "timerfd" if exact else "chunked sleeps (fallback)"
    # The benchmark's own asyncio.sleep ends with one wake-up of the process: counted, not subtracted.
    print(
        f"idle, {kind}: {n} schedules, {seconds:.0f}s: runner loop iterations {(after[0] - before[0]) * per_min:.1f}"
        f"/min, process voluntary context switches {(after[1] - before[1]) * per_min:.1f}/min, "
        f"CPU {(after[2] - before[2]) * 1000 * per_min:.1f} ms/min"
    )


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--schedules", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--idle", type=float, default=60.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        await lateness(Path(tmp) / "late", args.schedules, args.rounds)
        await idle(Path(tmp) / "idle", args.schedules, args.idle, exact=True)
        await idle(Path(tmp) / "idle2", args.schedules, args.idle, exact=False)


if __name__ == "__main__":
    asyncio.run(main())
