"""The nats worker's done record: how long the event loop stalls while handoffs are recorded.

Usage: python benchmarks/bench_worker_record.py [--puts N] [--dir PATH]

Each `done` is written with synchronous=FULL (it guards against running a handoff twice), so a
write waits for the disk. Recorded on the event loop, as the worker did, every write stalls the
loop where the other handoffs' replies, acks and in-progress pings wait; on the record's own
thread (DoneRecord now), the loop runs on. A ticker measures the loop's lateness in both ways, in
one run, on the same disk.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from watchd.store.worker_record import DoneRecord, put_done

TICK_S = 0.001


async def lateness_while(work: Callable[[], Awaitable[None]]) -> tuple[float, list[float]]:
    """Run `work` beside a ticker that sleeps TICK_S at a time; its duration and each tick's lateness."""
    late: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(TICK_S)
            late.append(time.perf_counter() - t0 - TICK_S)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    t0 = time.perf_counter()
    await work()
    took = time.perf_counter() - t0
    done.set()
    await task
    return took, late


def show(name: str, took: float, late: list[float], puts: int) -> float:
    worst = max(late) * 1000
    p99 = statistics.quantiles(late, n=100)[98] * 1000 if len(late) >= 100 else worst
    print(
        f"{name:<22} {puts / took:8.0f} puts/s   loop late: max {worst:7.2f} ms, p99 {p99:7.2f} ms, ticks {len(late)}"
    )
    return worst


async def main(puts: int, folder: Path) -> None:
    record = await DoneRecord.open(folder / "worker.db")
    try:
        blocked: list[float] = []

        async def on_loop() -> None:  # as before: the statement and its fsync on the loop's thread
            for i in range(puts):
                t0 = time.perf_counter()
                put_done(record.conn, f"h_loop_{i}", "exit 0", time.time())
                blocked.append(time.perf_counter() - t0)
                await asyncio.sleep(0)

        async def on_thread() -> None:  # DoneRecord.put: on the record's own thread
            for i in range(puts):
                await record.put(f"h_thread_{i}", "exit 0", time.time())

        print(f"{puts} `done` records, synchronous=FULL, in {folder}")
        worst_loop = show("on the event loop", *await lateness_while(on_loop), puts)
        worst_thread = show("on the record's thread", *await lateness_while(on_thread), puts)
        print(f"worst stall, loop / thread: {worst_loop / max(worst_thread, 1e-6):.1f}x")
        print(
            f"each write held the loop {statistics.mean(blocked) * 1000:.2f} ms on average, "
            f"{max(blocked) * 1000:.2f} ms at worst (the disk's fsync): now the record's thread waits instead"
        )
    finally:
        await asyncio.to_thread(record.close)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--puts", type=int, default=300)
    ap.add_argument("--dir", type=Path, default=None, help="a folder on the disk to measure (default: a temp one)")
    args = ap.parse_args()
    if args.dir is not None:
        asyncio.run(main(args.puts, args.dir))
    else:
        with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
            asyncio.run(main(args.puts, Path(tmp)))
