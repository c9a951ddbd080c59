"""Delivery through the real daemon to fake Telegram servers on loopback.

The daemon runs as a subprocess (`watchd run`, embedded NATS, free ports, a temp dir). The fakes are the
test suite's `FakeTelegram` (tests/fakes.py), each served by its own event loop in a background thread, so
the publisher never delays their timestamps. Times are wall-clock (`time.time()`) in this one process:
"sent" just before the JetStream publish, "received" when the fake has read the request body.

1. Latency: events published at --rate/s for --seconds to a watch whose only target is `notify.fast`;
   publish → the fake Telegram has the sendMessage request, p50/p99/max.
2. Isolation: the same, to a watch with two targets (`notify.fast` and `notify.slow`): first with both
   healthy, then with `notify.slow` hanging on every request (30 s; the notifier gives up after 10 s and
   retries). `notify.fast`'s latency must not move.
3. Throughput, two ways:
   a. queued: a watch with quiet hours ending on the next minute boundary at least 25 s away; 1,000
      events are published, their 1,000 handoffs wait `pending` in the outbox, all due at that instant.
      Timed from the release instant to the last message the fake received.
   b. burst: 1,000 events published at once (concurrent publishes) to a watch without quiet hours;
      first → last message at the fake, with the engine deciding while delivery runs.

Usage: python benchmarks/bench_delivery.py [--rate 50] [--seconds 20] [--queued 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bench_pipeline import free_port
from bench_pipeline import health_or_none as health
from support.fake_telegram import FakeTelegram

from watchd import bus, credentials
from watchd.model import make_event

T = TypeVar("T")

WATCHES = """
[[watch]]
id = "lat"
kind = "match"
on = { subject = "bench.lat" }
then = ["notify.fast"]
message = "lat {event.data.i}"

[[watch]]
id = "pair"
kind = "match"
on = { subject = "bench.pair" }
then = ["notify.fast", "notify.slow"]
message = "pair {event.data.i}"

[[watch]]
id = "burst"
kind = "match"
on = { subject = "bench.burst" }
then = ["notify.fast"]
message = "burst {event.data.i}"
"""

QUEUED_WATCH = """
[[watch]]
id = "queued"
kind = "match"
on = {{ subject = "bench.queued" }}
then = ["notify.fast"]
message = "queued {{event.data.i}}"
quiet = {{ from = "{start}", to = "{end}", timezone = "UTC" }}
"""


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


class FakeThread:
    """A fake server on its own event loop in a daemon thread; scripting goes through that loop."""

    def __init__(self, fake: FakeTelegram) -> None:
        self.fake = fake
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="fake")
        self.thread.start()
        self.call(fake.start())

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float = 10) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def stall_all(self, seconds: float) -> None:
        async def go() -> None:
            self.fake.stall(seconds, times=1_000_000)

        self.call(go())

    def arrivals(self, prefix: str) -> dict[str, float]:
        """Text → arrival time of the first sendMessage request whose text starts with prefix."""
        out: dict[str, float] = {}
        for req in list(self.fake.requests):
            text = req.json.get("text") if isinstance(req.json, dict) else None
            if isinstance(text, str) and text.startswith(prefix):
                out.setdefault(text.removeprefix("(held during quiet hours) "), req.at)
        return out

    def stop(self) -> None:
        self.call(self.fake.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def wait(pred: Any, timeout_s: float, what: str) -> Any:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError(what)


async def publish_paced(
    js: Any, subject: str, rate: float, seconds: float, label: str, start: int = 0
) -> dict[str, float]:
    sent: dict[str, float] = {}
    interval = 1 / rate
    next_at = time.perf_counter()
    for i in range(start, start + int(rate * seconds)):
        event = make_event(subject, {"i": i})
        sent[f"{label} {i}"] = time.time()
        await bus.publish_event(js, event)
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    return sent


async def publish_burst(js: Any, subject: str, n: int) -> float:
    start = time.time()
    await asyncio.gather(*(bus.publish_event(js, make_event(subject, {"i": i})) for i in range(n)))
    return time.time() - start


def latencies_ms(sent: dict[str, float], fake: FakeThread, label: str, timeout_s: float = 30) -> list[float]:
    got = wait(
        lambda: (a := fake.arrivals(label + " ")) and len(a) >= len(sent) and a, timeout_s, f"all {label} messages"
    )
    return [(got[text] - at) * 1000 for text, at in sent.items()]


def summary(lat: list[float]) -> str:
    return f"p50 {statistics.median(lat):.1f} ms, p99 {pct(lat, 0.99):.1f} ms, max {max(lat):.1f} ms (n={len(lat)})"


def outbox(db: Path, watch: str) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute("SELECT state, COUNT(*) FROM handoffs WHERE watch = ? GROUP BY state", (watch,))
        return {state: n for state, n in rows}
    finally:
        conn.close()


def quiet_window(min_wait_s: float) -> tuple[str, str, float]:
    """A UTC quiet window that is open now and ends on the next minute boundary >= min_wait_s away."""
    now = datetime.now(UTC)
    end = (now + timedelta(seconds=min_wait_s)).replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = end - timedelta(minutes=30)
    return start.strftime("%H:%M"), end.strftime("%H:%M"), end.timestamp()


async def run(args: argparse.Namespace, root: Path, fast: FakeThread, slow: FakeThread) -> None:
    nats_port, http_port = free_port(), free_port()
    (root / "watches").mkdir()
    (root / "watches" / "bench.toml").write_text(WATCHES)
    q_start, q_end, release = quiet_window(25)
    (root / "watches" / "queued.toml").write_text(QUEUED_WATCH.format(start=q_start, end=q_end))
    notifiers = "".join(
        f'[notify.{name}]\ntype = "telegram"\ntoken = "{f.fake.token}"\nchat_id = "42"\napi_base = "{f.fake.url}"\n'
        for name, f in (("fast", fast), ("slow", slow))
    )
    (root / "config.toml").write_text(
        f'watches = ["watches/"]\nstate_dir = "state"\ntimezone = "UTC"\n'
        f'[nats]\nurl = "embedded"\nlisten = "127.0.0.1:{nats_port}"\n'
        f'[http]\nlisten = "127.0.0.1:{http_port}"\n{notifiers}'
    )
    db = root / "state" / "watchd.db"
    cmd = [sys.executable, "-m", "watchd", "run", "--config", str(root / "config.toml")]
    log = open(root / "daemon.log", "wb")  # noqa: SIM115
    daemon = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT)
    nc = None
    try:
        await asyncio.to_thread(wait, lambda: (h := health(http_port)) and h.get("ok"), 30, "daemon ready")
        creds = credentials.load(root / "state")  # made by the daemon on its first start
        assert creds is not None
        nc = await bus.connect(creds.url(f"nats://127.0.0.1:{nats_port}", "publish"))
        js = nc.jetstream()

        # 3a. queued: 1,000 handoffs pending in the outbox, all released at one instant
        took = await publish_burst(js, "bench.queued", args.queued)
        await asyncio.to_thread(
            wait, lambda: outbox(db, "queued").get("pending", 0) >= args.queued, 60, "queued handoffs committed"
        )
        print(
            f"queued: {args.queued} events published in {took:.2f}s; {args.queued} handoffs pending, "
            f"released in {release - time.time():.0f}s (quiet hours end {q_end} UTC)"
        )
        arrived = await asyncio.to_thread(
            wait,
            lambda: len(a := fast.arrivals("(held during quiet hours) queued ")) >= args.queued and a,
            release - time.time() + 120,
            "queued messages",
        )
        first, last = min(arrived.values()), max(arrived.values())
        print(
            f"queued drain: release → first message {(first - release) * 1000:.0f} ms, release → last "
            f"{last - release:.2f}s: {args.queued / (last - release):,.0f} messages/s "
            f"(first → last {args.queued / (last - first):,.0f}/s)"
        )
        print(f"  outbox after: {outbox(db, 'queued')}")

        # 1. latency, one target
        sent = await publish_paced(js, "bench.lat", args.rate, args.seconds, "lat")
        lat = await asyncio.to_thread(latencies_ms, sent, fast, "lat")
        print(f"latency publish → Telegram fake, {args.rate:g}/s for {args.seconds:g}s, one target: {summary(lat)}")

        # 2. isolation: two healthy targets, then the second one hanging
        sent = await publish_paced(js, "bench.pair", args.rate, args.seconds / 2, "pair")
        lat = await asyncio.to_thread(latencies_ms, sent, fast, "pair")
        print(f"  notify.fast beside a healthy notify.slow ({args.seconds / 2:g}s): {summary(lat)}")
        await asyncio.to_thread(wait, lambda: outbox(db, "pair") == {"delivered": 2 * len(sent)}, 30, "pair done")
        slow.stall_all(30)
        sent = await publish_paced(js, "bench.pair", args.rate, args.seconds, "pair", start=len(sent))
        lat = await asyncio.to_thread(latencies_ms, sent, fast, "pair")
        print(f"  notify.fast beside a stalled notify.slow ({args.seconds:g}s): {summary(lat)}")
        slow_requests = len([r for r in slow.fake.requests if r.at > min(sent.values())])
        states = outbox(db, "pair")
        print(f"  notify.slow meanwhile: {slow_requests} requests hanging or timed out; pair outbox {states}")

        # 3b. burst: publish 1,000 at once, engine and delivery concurrently
        took = await publish_burst(js, "bench.burst", args.queued)
        arrived = await asyncio.to_thread(
            wait, lambda: len(a := fast.arrivals("burst ")) >= args.queued and a, 120, "burst messages"
        )
        first, last = min(arrived.values()), max(arrived.values())
        print(
            f"burst: {args.queued} events published in {took:.2f}s; first → last message {last - first:.2f}s: "
            f"{args.queued / (last - first):,.0f} messages/s"
        )
    finally:
        if nc is not None:
            await nc.close()
        daemon.terminate()
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(10)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--queued", type=int, default=1000)
    args = parser.parse_args()
    fast = FakeThread(FakeTelegram(token="111:fast"))
    slow = FakeThread(FakeTelegram(token="222:slow"))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(run(args, Path(tmp), fast, slow))
    finally:
        for f in (fast, slow):
            with contextlib.suppress(Exception):
                f.stop()


if __name__ == "__main__":
    main()
