"""Two watchd instances on one nats-server (SPEC section 9): takeover time, handoffs across kills,
and the lease's idle cost.

1. Takeover: kill -9 of the lease holder, time until the standby's /healthz says it holds the lease;
   the killed one is started again (it stands by) and the next round kills the new holder. With
   `--rate`, events stream in all along and each fire is handed off (through NATS) to a webhook
   receiver on loopback that records every delivery: lost and duplicated handoffs are counted, and
   the ack window (from the start of a delivery to the queue's ack stored, read from each holder's
   /metrics just before it is killed) says how wide the duplicate risk at a takeover is.
2. Idle cost: CPU seconds per minute of a holder and of a standby with `[cluster] takeover` as
   given, against one instance on the embedded NATS (no lease traffic to speak of) in the same run.

`--samples FILE` appends this run's takeover times to FILE and reports percentiles over all of
them, so 20 kills can be measured as two runs of 10 (each under a minute).

Usage: python benchmarks/bench_cluster.py [--kills 8] [--takeover 3s] [--idle-s 20] [--rate 20]
       [--samples FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from bench_pipeline import free_port, proc_cpu_s
from bench_pipeline import health_or_none as health
from prometheus_client.parser import text_string_to_metric_families

from watchd import bus
from watchd.bus import nats_server_binary
from watchd.errors import WatchdError
from watchd.model import make_event

WATCH = '[[watch]]\nid = "jobs"\nkind = "match"\non = { subject = "job.*" }\nthen = ["notify.hook"]\n'


class Receiver(http.server.ThreadingHTTPServer):
    """A webhook receiver on loopback: every delivery's handoff id and event id, duplicates included."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.events: list[str] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    receiver.ids.append(self.headers.get("X-Watchd-Handoff-Id", ""))
                    receiver.events.append(body["evidence"][0]["id"])
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class Publisher(threading.Thread):
    """Publishes job events at `rate` per second, each re-sent until stored (as a careful source)."""

    def __init__(self, url: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.url, self.rate = url, rate
        self.sent: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        nc = await bus.connect(self.url, name="bench-source")
        js = nc.jetstream()
        n = 0
        while not self.stop.is_set():
            event = make_event("job.run", {"n": n}, id=f"ev-{n:06d}")
            while True:
                try:
                    await bus.publish_event(js, event, timeout_s=2)
                    break
                except WatchdError:
                    await asyncio.sleep(0.1)
            self.sent.append(event.id)
            n += 1
            await asyncio.sleep(1 / self.rate)
        await nc.close()


def ack_window(port: int) -> tuple[float, float, dict[float, float]]:
    """The holder's ack-window histogram: (sum, count, cumulative count per bucket bound)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
        text = r.read().decode()
    total, count, buckets = 0.0, 0.0, {}
    for family in text_string_to_metric_families(text):
        if family.name != "watchd_handoff_ack_window_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_sum"):
                total = sample.value
            elif sample.name.endswith("_count"):
                count = sample.value
            elif sample.name.endswith("_bucket"):
                buckets[float(sample.labels["le"])] = sample.value
    return total, count, buckets


def role(port: int) -> str | None:
    h = health(port)
    cluster = h.get("cluster") if h else None
    return str(cluster["role"]) if isinstance(cluster, dict) else None


class Instance:
    def __init__(self, root: Path, nats: str, extra: str) -> None:
        root.mkdir(parents=True)
        (root / "watches").mkdir()
        (root / "watches" / "jobs.toml").write_text(WATCH)
        self.port = free_port()
        listen = f'url = "{nats}"' if nats != "embedded" else f'url = "embedded"\nlisten = "127.0.0.1:{free_port()}"'
        (root / "config.toml").write_text(
            f'watches = ["watches/"]\nstate_dir = "state"\ntimezone = "UTC"\n[nats]\n{listen}\n'
            f'[http]\nlisten = "127.0.0.1:{self.port}"\n{extra}\n[notify.console]\ntype = "console"\n'
        )
        self.root = root
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.root / "daemon.log", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "watchd", "run", "--config", str(self.root / "config.toml")],
            cwd=self.root,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.time() + 60
        while not (h := health(self.port)) or h.get("pid") != self.proc.pid:
            if time.time() > deadline:
                raise TimeoutError(f"{self.root} did not start")
            time.sleep(0.05)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--takeover", default="3s")
    parser.add_argument("--idle-s", type=float, default=20.0, help="0: skip the idle measure")
    parser.add_argument("--rate", type=float, default=20.0, help="events per second during the kills (0: none)")
    parser.add_argument("--samples", type=Path, help="append takeover times here; report over all of them")
    args = parser.parse_args()
    receiver = Receiver()
    hook = f'[notify.hook]\ntype = "webhook"\nurl = "{receiver.url}"\n'
    extra = f'[cluster]\ntakeover = "{args.takeover}"\n{hook}'
    window_sum, window_count, window_buckets = 0.0, 0.0, dict[float, float]()
    publisher: Publisher | None = None
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        nats_port = free_port()
        server = subprocess.Popen(
            [str(nats_server_binary()), "-js", "-a", "127.0.0.1", "-p", str(nats_port), "-sd", str(base / "js")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"nats://127.0.0.1:{nats_port}"
        pair = [Instance(base / "a", url, extra), Instance(base / "b", url, extra)]
        single = Instance(base / "single", "embedded", hook)
        per_min: dict[str, float] = {}
        try:
            time.sleep(0.3)
            for inst in pair:
                inst.start()
            if args.idle_s > 0:
                # Idle: the holder renews, the standby polls and refreshes the member list.
                single.start()
                time.sleep(2)
                holder = next(i for i in pair if role(i.port) == "holder")
                standby = next(i for i in pair if i is not holder)
                procs = {"holder": holder, "standby": standby, "embedded single": single}
                before = {k: proc_cpu_s(i.proc.pid) for k, i in procs.items() if i.proc}
                time.sleep(args.idle_s)
                per_min = {
                    k: (proc_cpu_s(i.proc.pid) - before[k]) * 60 / args.idle_s for k, i in procs.items() if i.proc
                }
                single.stop()

            if args.rate > 0:
                publisher = Publisher(url, args.rate)
                publisher.start()
            took: list[float] = []
            for _ in range(args.kills):
                holder = next(i for i in pair if role(i.port) == "holder")
                standby = next(i for i in pair if i is not holder)
                time.sleep(0.5)  # deliveries under way when the kill comes
                total, count, buckets = ack_window(holder.port)
                window_sum, window_count = window_sum + total, window_count + count
                for le, n in buckets.items():
                    window_buckets[le] = window_buckets.get(le, 0.0) + n
                holder.kill9()
                killed = time.monotonic()
                while role(standby.port) != "holder":
                    if time.monotonic() - killed > 60:
                        raise TimeoutError("no takeover within 60 s")
                    time.sleep(0.02)
                took.append(time.monotonic() - killed)
                holder.start()  # it comes back and stands by
            if publisher is not None:
                publisher.stop.set()
                publisher.join(10)
                deadline = time.monotonic() + 60
                while set(publisher.sent) - set(receiver.events) and time.monotonic() < deadline:
                    time.sleep(0.2)
                time.sleep(2)  # a late duplicate would come now
        finally:
            for inst in [*pair, single]:
                inst.stop()
            server.terminate()
            server.wait(10)
    samples = took
    if args.samples is not None:
        with args.samples.open("a") as f:
            f.writelines(f"{t:.4f}\n" for t in took)
        samples = [float(line) for line in args.samples.read_text().split()]
    print(f"takeover = {args.takeover}, {args.kills} kill -9 of the holder this run, {len(samples)} in all")
    p50, p99 = statistics.median(samples), percentile(samples, 0.99)
    print(f"  takeover time: p50 {p50:.2f}s  p99 {p99:.2f}s  max {max(samples):.2f}s")
    if publisher is not None:
        sent, got = publisher.sent, receiver.events
        lost = len(set(sent) - set(got))
        doubled = len(got) - len(set(got))
        print(f"  handoffs: {len(sent)} events at {args.rate:g}/s across the kills, {len(got)} deliveries")
        print(f"    lost {lost}, delivered twice {doubled}")
    if window_count:
        bound = next((le for le, n in sorted(window_buckets.items()) if n >= 0.99 * window_count), float("inf"))
        print(
            f"  ack window (delivery started -> ack stored), {window_count:.0f} deliveries of the killed holders: "
            f"mean {window_sum / window_count * 1000:.2f} ms, p99 <= {bound * 1000:g} ms"
        )
    if per_min:
        print(f"idle CPU over {args.idle_s:g}s (CPU-s per minute)")
        for name, value in per_min.items():
            print(f"  {name:16s} {value:.3f}")
        print(f"  lease cost (holder - embedded single): {per_min['holder'] - per_min['embedded single']:+.3f}")


if __name__ == "__main__":
    main()
