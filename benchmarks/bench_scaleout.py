"""Scale-out (`[cluster] shards`, SPEC section 9): decision throughput with 1, 2 and 3 instances.

Each round starts a fresh nats-server (JetStream) and k `watchd run` processes on it with the same
watches split into `--shards` shards, waits until the shards are spread evenly, freezes the
instances (SIGSTOP), publishes `--events` events, thaws them and times until every shard's durable
has nothing pending or unacknowledged. The watches: `--watches` match watches, each on its own
subject with a `where` that holds for one event in a hundred (near misses are recorded for explain
like any decision). Reported per round: wall time and events/s, the ratio to one instance with the
same shards, and each instance's CPU seconds for the drain. A first round with `shards = 1` (one
instance, as before scale-out) is the baseline for the cost of sharding itself.

The instances are frozen for less than their leases' fence (`takeover = "10s"`), or a holder
would stop (it cannot renew) and the round would measure a takeover instead.

The machine's cores bound what the wall-clock ratio can show: k instances, the nats-server and this
script share them. So the projection: the events over the CPU seconds of the busiest instance is
the rate each instance on a core of its own would sustain; its ratio to one instance is what k
machines would give, as far as NATS itself keeps up.

Usage: python benchmarks/bench_scaleout.py [--events 20000] [--shards 6] [--watches 12] [--instances 1,2,3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_pipeline import free_port, proc_cpu_s
from bench_pipeline import health_or_none as health

from watchd import bus, shards
from watchd.bus import nats_server_binary
from watchd.jspublish import JetStreamPublisher
from watchd.model import make_event


def holding(port: int) -> int:
    h = health(port)
    cluster = h.get("cluster") if h else None
    return len(cluster.get("holding", [])) if isinstance(cluster, dict) else 0


def watches(count: int) -> str:
    text = ""
    for n in range(count):
        text += (
            f'[[watch]]\nid = "w-{n}"\nkind = "match"\n'
            f'on = {{ subject = "job.{n}", where = "data.n % 100 == 0" }}\nthen = ["notify.console"]\n\n'
        )
    return text


class Instance:
    def __init__(self, root: Path, nats: str, extra: str, watch_text: str) -> None:
        root.mkdir(parents=True)
        (root / "watches").mkdir()
        (root / "watches" / "w.toml").write_text(watch_text)
        self.port = free_port()
        (root / "config.toml").write_text(
            f'watches = ["watches/"]\nstate_dir = "state"\ntimezone = "UTC"\n[nats]\nurl = "{nats}"\n'
            f'[http]\nlisten = "127.0.0.1:{self.port}"\n{extra}\n[notify.console]\ntype = "console"\n'
        )
        self.root = root
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.root / "daemon.log", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "watchd", "run", "--config", str(self.root / "config.toml")],
            cwd=self.root,
            stdout=subprocess.DEVNULL,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.time() + 60
        while not (h := health(self.port)) or h.get("pid") != self.proc.pid:
            if time.time() > deadline:
                raise TimeoutError(f"{self.root} did not start")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


async def publish(url: str, events: int, subjects: int) -> None:
    """As fast as the daemon's own publisher stores them, 1,000 in flight."""
    nc = await bus.connect(url, name="bench-publisher")
    publisher = JetStreamPublisher(nc)
    try:
        for start in range(0, events, 1000):
            numbers = range(start, min(events, start + 1000))
            batch = [make_event(f"job.{n % subjects}", {"n": n}, id=f"e-{n}") for n in numbers]
            await asyncio.gather(*(publisher.publish_event(e) for e in batch))
    finally:
        await nc.close()


async def backlog(url: str, durables: list[str]) -> int:
    nc = await bus.connect(url, name="bench-lag")
    try:
        js = nc.jetstream()
        total = 0
        for durable in durables:
            info = await js.consumer_info(bus.EVENTS_STREAM, durable)
            total += (info.num_pending or 0) + (info.num_ack_pending or 0)
        return total
    finally:
        await nc.close()


def run_round(root: Path, k: int, shard_count: int, args: argparse.Namespace) -> tuple[float, list[float], list[float]]:
    """(wall seconds of the drain, CPU seconds of each instance during it, each instance's idle CPU
    seconds per minute before it: the leases' renewals and polls, `--idle-s` long)."""
    port = free_port()
    store = root / "nats"
    store.mkdir(parents=True)
    server = subprocess.Popen(
        [str(nats_server_binary()), "-js", "-sd", str(store), "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"nats://127.0.0.1:{port}"
    extra = f'[cluster]\ntakeover = "10s"\nshards = {shard_count}\n'
    instances = [Instance(root / f"i{n}", url, extra, watches(args.watches)) for n in range(k)]
    try:
        time.sleep(0.5)
        for inst in instances:
            inst.start()
        deadline = time.time() + 30
        while True:
            counts = [holding(inst.port) for inst in instances]
            if sum(counts) == shard_count and max(counts) - min(counts) <= 1:
                break
            if time.time() > deadline:
                raise TimeoutError(f"shards never spread: {counts}")
            time.sleep(0.2)
        idle: list[float] = []
        if args.idle_s > 0:
            time.sleep(2.0)  # the start's own work done
            at = [proc_cpu_s(inst.pid) for inst in instances]
            time.sleep(args.idle_s)
            idle = [(proc_cpu_s(inst.pid) - a) * 60 / args.idle_s for inst, a in zip(instances, at, strict=True)]
        for inst in instances:
            os.kill(inst.pid, signal.SIGSTOP)
        frozen = time.monotonic()
        asyncio.run(publish(url, args.events, args.watches))
        if time.monotonic() - frozen > 5:  # the leases' fence (0.8 x 0.7 x takeover) is 5.6 s
            raise TimeoutError("publishing took longer than the instances' leases can stay frozen")
        before = [proc_cpu_s(inst.pid) for inst in instances]
        began = time.monotonic()
        for inst in instances:
            os.kill(inst.pid, signal.SIGCONT)
        durables = [shards.ShardNames(i, shard_count).durable for i in range(shard_count)]
        deadline = time.monotonic() + 60
        while (left := asyncio.run(backlog(url, durables))) > 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{left} events still not decided after 60 s ({root})")
            time.sleep(0.02)
        wall = time.monotonic() - began
        return wall, [proc_cpu_s(inst.pid) - b for inst, b in zip(instances, before, strict=True)], idle
    finally:
        for inst in instances:
            if inst.proc is not None and inst.proc.poll() is None:
                os.kill(inst.pid, signal.SIGCONT)
            inst.stop()
        server.terminate()
        server.wait(10)


def idle_words(idle: list[float]) -> str:
    return f"; idle CPU-s/min per instance {', '.join(f'{c:.2f}' for c in idle)}" if idle else ""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--shards", type=int, default=6)
    parser.add_argument("--watches", type=int, default=12)
    parser.add_argument("--instances", default="1,2,3")
    parser.add_argument("--idle-s", type=float, default=0.0, help="measure idle CPU this long first (0: no)")
    args = parser.parse_args()
    counts = [int(x) for x in args.instances.split(",")]
    print(f"{args.events} events, {args.watches} watches, {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp:
        root = Path(tmp)
        base_wall, base_cpu, base_idle = run_round(root / "base", 1, 1, args)
        print(
            f"baseline, 1 instance, shards = 1: {base_wall:.2f} s, {args.events / base_wall:,.0f} events/s, "
            f"CPU {base_cpu[0]:.2f} s" + idle_words(base_idle),
            flush=True,
        )
        one_rate = one_projected = 0.0
        for k in counts:
            wall, cpu, idle = run_round(root / f"k{k}", k, args.shards, args)
            rate, projected = args.events / wall, args.events / max(cpu)
            if k == counts[0]:
                one_rate, one_projected = rate, projected  # the first count given (1): the reference
            print(
                f"{k} instance(s), shards = {args.shards}: {wall:.2f} s, {rate:,.0f} events/s "
                f"(ratio to one {rate / one_rate:.2f}); CPU per instance "
                + ", ".join(f"{c:.2f}" for c in cpu)
                + f" s; projected one core each: {projected:,.0f} events/s (ratio {projected / one_projected:.2f})"
                + idle_words(idle),
                flush=True,
            )


if __name__ == "__main__":
    main()
