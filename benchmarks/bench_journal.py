"""The journal source following a journal that grows at 5,000 entries/s, against what it depends on.

The journal is the recorded-output journalctl stand-in (tests/support/journalctl_standin.py) in its
synthetic mode: entry i is written at start + i / rate, whether or not anyone reads. The source runs
as in the daemon (JournalSource → Publisher → JetStream on a local nats-server, cursor persisted
after each acknowledged batch).

1. Sustained: RATE entries/s for SECONDS; every 0.25 s the lag (now − the write time of the last
   entry stored) is sampled. Keeping up means the lag stays bounded (p99, max) and the final count
   is every entry.
2. Capacity: a backlog of BACKLOG entries already written; the time to store them all, as entries/s
   and as a ratio to (a) the target rate and (b) nats-py alone publishing the same envelopes with
   one JetStream ack each, in this run.

nats-server runs with watchd's `sync = always` (each JetStream write fsynced before its ack) unless
`--sync` says otherwise.

Usage: python benchmarks/bench_journal.py [--rate 5000] [--seconds 20] [--backlog 50000] [--sync 2m]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.journal import StandinJournal

from watchd import bus
from watchd.jspublish import JetStreamPublisher
from watchd.model import make_event
from watchd.sources.base import SourceContext
from watchd.sources.health import SourceHealth
from watchd.sources.journal import JournalSource
from watchd.sources.publish import Publisher
from watchd.sources.settings import JournalSettings
from watchd.sources.state import PositionStore


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def proc_cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def index(cursor: str | None) -> int:
    return int(cursor.split(";")[1][2:], 16) if cursor else -1


async def follow(url: str, root: Path, rate: float, start: float, total: int, *, sample: bool) -> dict[str, float]:
    journal = StandinJournal(root)
    journal.generate(rate, start=start, total=total)
    os.environ["PATH"] = journal.env["PATH"]
    nc = await bus.connect(url, name="bench-journal")
    positions = PositionStore(root / "positions")
    positions.save("units", {"cursor": "s=standin;i=0;b=bench"})  # from the journal's head
    health = SourceHealth("units", "journal")
    source = JournalSource("units", JournalSettings(directory=str(journal.directory)))
    ctx = SourceContext(
        name="units",
        base_dir=root,
        position=positions.load("units"),
        outlet=Publisher("units", JetStreamPublisher(nc).publish_events, positions, health, time.time),
        health=health,
        clock=time.time,
    )
    cpu0, t0 = cpu_s(), time.perf_counter()
    task = asyncio.create_task(source.run(ctx))
    lags: list[float] = []
    while index(ctx.position.get("cursor")) < total - 1:
        if task.done():
            raise RuntimeError(f"the source stopped: {task.exception()}")
        await asyncio.sleep(0.25)
        if sample:
            # Entries are stored in order, one event each, and entry 0 (the cursor resumed from)
            # is not sent again: the last entry stored is the count of events published. (The
            # saved cursor trails it by up to journal.SAVE_EVERY_S.)
            last = health.events
            written = min(total, max(0, int((time.time() - start) * rate)))
            lags.append(max(0.0, (written - 1 - last) / rate))
    elapsed = time.perf_counter() - t0
    cpu = cpu_s() - cpu0
    ctx.stop.set()
    await task
    await nc.close()
    out = {"elapsed_s": elapsed, "cpu_s": cpu, "events": float(health.events)}
    if lags:
        lags.sort()
        out |= {
            "lag_p50_s": statistics.median(lags),
            "lag_p99_s": lags[min(len(lags) - 1, int(len(lags) * 0.99))],
            "lag_max_s": lags[-1],
            "lag_final_s": lags[-1 if len(lags) < 2 else -2],
        }
    return out


async def raw_publish(url: str, n: int) -> float:
    """nats-py alone: the same kind of envelope, one JetStream publish and ack each."""
    nc = await bus.connect(url, name="bench-raw")
    js = nc.jetstream()
    events = [
        make_event("journal.bench.service", {"message": f"line {i}", "unit": "bench.service"}, id=f"raw-{i}")
        for i in range(n)
    ]
    t0 = time.perf_counter()
    for e in events:
        await bus.publish_event(js, e)
    elapsed = time.perf_counter() - t0
    await nc.close()
    return n / elapsed


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=5000)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--backlog", type=int, default=50_000)
    ap.add_argument("--sync", default="always", help="nats-server sync_interval: always (watchd's) or e.g. 2m")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = bus.EmbeddedNats(root / "nats", listen="127.0.0.1:0", sync=args.sync)
        await server.start()
        try:
            nc = await bus.connect(server.url)
            await bus.ensure_streams(nc.jetstream())
            await nc.close()

            total = int(args.rate * args.seconds)
            s = await follow(server.url, root / "sustained", args.rate, time.time(), total, sample=True)
            print(f"nats-server sync = {args.sync}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
            print(f"sustained {args.rate:,.0f} entries/s for {args.seconds:g}s: {s['events']:,.0f} of {total:,} stored")
            print(
                f"  lag p50 {s['lag_p50_s'] * 1000:.0f} ms, p99 {s['lag_p99_s'] * 1000:.0f} ms, "
                f"max {s['lag_max_s'] * 1000:.0f} ms; CPU {s['cpu_s'] / s['elapsed_s']:.2f} s/s in the watchd process"
            )

            server_cpu0 = proc_cpu_s(server.pid)
            b = await follow(server.url, root / "backlog", 1e9, time.time() - 60, args.backlog, sample=False)
            server_cpu = proc_cpu_s(server.pid) - server_cpu0
            capacity = b["events"] / b["elapsed_s"]
            raw = await raw_publish(server.url, min(args.backlog, 20_000))
            print(f"backlog of {args.backlog:,}: {b['elapsed_s']:.2f}s, {capacity:,.0f} entries/s")
            per_entry_us = b["cpu_s"] / b["events"] * 1e6
            print(
                f"  CPU per entry: {per_entry_us:.0f} µs in the watchd process (one core: "
                f"{1e6 / per_entry_us:,.0f} entries/s), {server_cpu / b['events'] * 1e6:.0f} µs in nats-server"
            )
            print(f"  ratio to the {args.rate:,.0f}/s target: {capacity / args.rate:.2f}")
            print(f"  ratio to nats-py publishing alone ({raw:,.0f}/s, one ack each): {capacity / raw:.2f}")
        finally:
            await server.stop()


if __name__ == "__main__":
    asyncio.run(main())
