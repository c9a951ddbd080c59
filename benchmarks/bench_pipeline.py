"""The daemon through JetStream, against raw nats-py consumption of the same stream in the same run.

1. Throughput: with the daemon stopped, N events are stored; it is started again and the time
   from its first committed batch to the last is compared with a raw nats-py pull consumer
   (nats-py's `fetch` 512 + one ack per batch) reading the same N messages; watchd reads through
   its own pull requests (watchd/pull.py). nats-server runs on its own
   (`[nats] url`), as in a real deployment, so it stays up while the daemon restarts.
2. Latency: events published at 200/s to a matching watch; publish → handoff committed, p50/p99.
3. Idle: CPU seconds of watchd and its nats-server over 60 idle seconds, and the RSS of each.

Usage: python benchmarks/bench_pipeline.py [--events N] [--idle-s 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from watchd import bus
from watchd.model import make_event

WATCHES = (
    "\n".join(
        f"""
[[watch]]
id = "w{i}"
kind = "match"
on = {{ subject = "svc{i % 20}.event", where = 'data.level > 4 && data.host == "h1"' }}
then = ["notify.console"]
"""
        for i in range(100)
    )
    + """
[[watch]]
id = "latency"
kind = "match"
on = { subject = "bench.latency" }
then = ["notify.console"]
"""
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def health(port: int, timeout_s: float = 2) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout_s) as r:
        result: dict[str, object] = json.loads(r.read())
        return result


def health_or_none(port: int, timeout_s: float = 1) -> dict[str, object] | None:
    """`health`, or None while the daemon does not answer (starting, or killed)."""
    try:
        return health(port, timeout_s)
    except (OSError, ValueError):
        return None


def wait_seq(port: int, seq: int, timeout_s: float = 300) -> float:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if int(health(port)["last_seq"]) >= seq:  # type: ignore[call-overload]
                return time.time()
        except OSError:
            pass
        time.sleep(0.02)
    raise TimeoutError(f"daemon did not reach seq {seq}: {health(port)}")


async def publish_many(url: str, n: int) -> None:
    nc = await bus.connect(url)
    js = nc.jetstream()
    for start in range(0, n, 1000):
        await asyncio.gather(
            *(
                bus.publish_event(js, make_event(f"svc{i % 20}.event", {"level": i % 6, "host": f"h{i % 7}"}))
                for i in range(start, min(n, start + 1000))
            )
        )
    await nc.close()


async def raw_consume(url: str, n: int, *, own_pull: bool = False) -> tuple[float, float]:
    """Wall and CPU seconds for a raw consumer to read and ack `n` messages: through nats-py's own
    `fetch` (the raw nats-py baseline), or with `own_pull` through watchd's pull requests."""
    nc = await bus.connect(url)
    durable = "bench-own" if own_pull else "bench-raw"
    consumer = bus.EventConsumer(nc.jetstream(), durable=durable, nc=nc if own_pull else None)
    await consumer.start()
    got = 0
    start, cpu = time.perf_counter(), time.process_time()
    while got < n:
        msgs = await consumer.fetch(512, timeout_s=2)
        if msgs:
            got += len(msgs)
            await consumer.ack_upto(msgs[-1])
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    await nc.close()
    return elapsed, cpu


async def publish_paced(url: str, rate: float, seconds: float) -> dict[str, float]:
    nc = await bus.connect(url)
    js = nc.jetstream()
    sent: dict[str, float] = {}
    interval = 1 / rate
    next_at = time.perf_counter()
    for i in range(int(rate * seconds)):
        event = make_event("bench.latency", {"i": i})
        sent[event.id] = time.time()
        await bus.publish_event(js, event)
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    await nc.close()
    return sent


def handoff_latencies_ms(state_dir: Path, sent: dict[str, float]) -> list[float]:
    """Publish → handoff committed, in ms, for each `latency` handoff of events in `sent` (id → time)."""
    db = sqlite3.connect(state_dir / "watchd.db")
    try:
        rows = db.execute("SELECT evidence, created_at FROM handoffs WHERE watch = 'latency'").fetchall()
    finally:
        db.close()
    return [(created - sent[json.loads(ev)[0]["id"]]) * 1000 for ev, created in rows]


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def start_on_own_nats(root: Path, watches: str) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes], str, int]:
    """A project in `root` with `watches`, a nats-server of its own (`[nats] url`) and `watchd run` on
    it: (server, daemon, NATS URL, HTTP port). The caller stops both."""
    (root / "watches").mkdir()
    (root / "watches" / "bench.toml").write_text(watches)
    nats_port, http_port = free_port(), free_port()
    url = f"nats://127.0.0.1:{nats_port}"
    (root / "config.toml").write_text(
        f'state_dir = "state"\n[nats]\nurl = "{url}"\n[http]\nlisten = "127.0.0.1:{http_port}"\n'
    )
    server = subprocess.Popen(
        [str(bus.nats_server_binary()), "-js", "-sd", str(root / "nats"), "-a", "127.0.0.1", "-p", str(nats_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return server, watchd_run(root), url, http_port


def watchd_run(root: Path) -> subprocess.Popen[bytes]:
    """`watchd run` on the project in `root` (started again after a stop)."""
    cmd = [sys.executable, "-m", "watchd", "run", "--config", str(root / "config.toml")]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--idle-s", type=float, default=60)
    parser.add_argument("--rate", type=float, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server, daemon, url, http_port = start_on_own_nats(root, WATCHES)
        nats_pid = server.pid
        try:
            wait_seq(http_port, 0, timeout_s=30)  # streams and the durable consumer exist now
            daemon.terminate()
            daemon.wait(20)

            # 1. throughput: a backlog stored while the daemon is down, then drained
            asyncio.run(publish_many(url, args.events))
            daemon = watchd_run(root)
            t0 = wait_seq(http_port, 1)
            cpu_t0 = proc_cpu_s(daemon.pid)
            first = int(health(http_port)["last_seq"])  # type: ignore[call-overload]
            t1 = wait_seq(http_port, args.events)
            daemon_cpu = proc_cpu_s(daemon.pid) - cpu_t0
            daemon_rate = (args.events - first) / (t1 - t0)
            raw_wall, raw_cpu = asyncio.run(raw_consume(url, args.events))
            raw_rate = args.events / raw_wall
            print(
                f"events: {args.events}, watches: 101 (100 with a CEL where; 1 event in 42 fires five: "
                "a handoff per 8.4 events)"
            )
            print(f"raw nats-py pull consumption: {raw_rate:,.0f} events/s")
            print(f"watchd consume+decide+commit: {daemon_rate:,.0f} events/s")
            print(f"ratio: {daemon_rate / raw_rate:.2f}")
            # CPU per event: the same comparison, less at the mercy of what else the machine runs
            # while one of the two is measured (the clock tick makes it coarse on short runs).
            daemon_us, raw_us = daemon_cpu * 1e6 / (args.events - first), raw_cpu * 1e6 / args.events
            print(f"CPU per event: watchd {daemon_us:.0f} µs, raw nats-py {raw_us:.0f} µs")
            print(f"ratio by CPU: {raw_us / daemon_us:.2f}")
            own_wall, own_cpu = asyncio.run(raw_consume(url, args.events, own_pull=True))
            print(
                f"reading alone, CPU per event: nats-py fetch {raw_us:.0f} µs, watchd's pull requests "
                f"{own_cpu * 1e6 / args.events:.0f} µs ({args.events / own_wall:,.0f} events/s)"
            )

            # 2. latency at a steady rate
            sent = asyncio.run(publish_paced(url, args.rate, 10))
            wait_seq(http_port, args.events + len(sent), timeout_s=60)
            time.sleep(0.5)
            lat = handoff_latencies_ms(root / "state", sent)
            print(
                f"latency publish → handoff committed at {args.rate:.0f}/s ({len(lat)} events): "
                f"p50 {statistics.median(lat):.1f} ms, p99 {pct(lat, 0.99):.1f} ms, max {max(lat):.1f} ms"
            )

            # 3. idle
            time.sleep(5)
            cpu0 = proc_cpu_s(daemon.pid), proc_cpu_s(nats_pid)
            time.sleep(args.idle_s)
            cpu1 = proc_cpu_s(daemon.pid), proc_cpu_s(nats_pid)
            print(
                f"idle {args.idle_s:.0f}s CPU: watchd {cpu1[0] - cpu0[0]:.2f}s, nats-server {cpu1[1] - cpu0[1]:.2f}s, "
                f"total {sum(cpu1) - sum(cpu0):.2f}s"
            )
            print(f"RSS: watchd {proc_rss_mb(daemon.pid):.0f} MB, nats-server {proc_rss_mb(nats_pid):.0f} MB")
        finally:
            daemon.terminate()
            daemon.wait(20)
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
