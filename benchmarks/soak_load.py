"""Load soak: a million events through JetStream into a daemon with 1,000 watches, and 1,000 slow
HTTP clients against its listener. What it proves: nothing lost (every stored event decided),
memory bounded (peak RSS sampled throughout), the backlog drained, latency back to normal after.

1. nats-server runs on its own; the daemon runs; N events (default 1,000,000) are published as
   fast as one client can, while the daemon consumes. Sampled every 0.5 s: the daemon's RSS and
   its backlog (stream last sequence − the daemon's committed one).
2. After the drain: events decided == events stored; publish → handoff latency at 200/s for 10 s.
3. 1,000 connections that send half a request header and stall: /healthz and POST /events still
   answer at once, and the stalled ones are closed by the header timeout.

Usage: python benchmarks/soak_load.py [--events 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from bench_pipeline import handoff_latencies_ms, health, pct, proc_rss_mb, publish_paced, start_on_own_nats, wait_seq

from watchd import bus
from watchd.model import make_event


def watches() -> str:
    """1,000 watches over 100 subjects: 700 match with a where, 200 count per key, 100 absent per key."""
    out = []
    for i in range(700):
        out.append(
            f'[[watch]]\nid = "m{i}"\nkind = "match"\n'
            f'on = {{ subject = "svc{i % 100}.event", where = \'data.level > 4 && data.host == "h{i % 7}"\' }}\n'
            'then = ["notify.console"]\ncooldown = "1m"\n'
        )
    for i in range(200):
        out.append(
            f'[[watch]]\nid = "c{i}"\nkind = "match"\n'
            f'on = {{ subject = "svc{i % 100}.event", key = "data.host" }}\ncount = 50\nwindow = "1m"\n'
            'then = ["notify.console"]\ncooldown = "10m"\n'
        )
    for i in range(100):
        out.append(
            f'[[watch]]\nid = "a{i}"\nkind = "absent"\nexpect = {{ subject = "svc{i}.event", key = "data.host" }}\n'
            'for = "1h"\nthen = ["notify.console"]\n'
        )
    out.append(
        '[[watch]]\nid = "latency"\nkind = "match"\non = { subject = "bench.latency" }\nthen = ["notify.console"]\n'
    )
    return "\n".join(out)


async def publish_all(url: str, n: int, done: list[float]) -> None:
    nc = await bus.connect(url)
    js = nc.jetstream()
    for start in range(0, n, 1000):
        await asyncio.gather(
            *(
                bus.publish_event(js, make_event(f"svc{i % 100}.event", {"level": i % 6, "host": f"h{i % 7}", "i": i}))
                for i in range(start, min(n, start + 1000))
            )
        )
    done.append(time.time())
    await nc.close()


async def slow_clients(port: int, n: int) -> dict[str, float]:
    """n connections that send half a header and stall; meanwhile, is the listener still there?"""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, n + 512)), hard))
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    for _ in range(n):
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            break
        w.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # no blank line: the header never ends
        conns.append((r, w))
    t = time.perf_counter()
    ok = await asyncio.to_thread(lambda: health(port).get("ok"))
    healthz_ms = (time.perf_counter() - t) * 1000
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/events/soak.during-slow", data=b"{}", headers={"Content-Type": "application/json"}
    )
    t = time.perf_counter()
    status = await asyncio.to_thread(lambda: urllib.request.urlopen(req, timeout=5).status)
    post_ms = (time.perf_counter() - t) * 1000
    await asyncio.sleep(12)  # past the 10 s header timeout
    closed = 0
    for r, w in conns:
        try:  # the server closed it (with a 408, or at once) or it would still be waiting
            await asyncio.wait_for(r.read(), 0.05)
            closed += 1
        except (TimeoutError, ConnectionError):
            pass
        w.close()
    return {
        "opened": len(conns),
        "healthz_ok": bool(ok),
        "healthz_ms": round(healthz_ms, 1),
        "post_status": status,
        "post_ms": round(post_ms, 1),
        "closed_by_server_after_12s": closed,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--slow-clients", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server, daemon, url, http_port = start_on_own_nats(root, watches())
        try:
            wait_seq(http_port, 0, timeout_s=60)
            rss_start = proc_rss_mb(daemon.pid)
            done: list[float] = []
            t0 = time.time()
            publisher = threading.Thread(target=lambda: asyncio.run(publish_all(url, args.events, done)), daemon=True)
            publisher.start()
            peak_rss, peak_backlog, samples, slowest_healthz = rss_start, 0, 0, 0.0
            while True:
                time.sleep(0.5)
                samples += 1
                peak_rss = max(peak_rss, proc_rss_mb(daemon.pid))
                asked = time.perf_counter()
                try:
                    h = health(http_port, timeout_s=30)
                except OSError as exc:
                    print(f"  /healthz failed during the load: {exc}")
                    continue
                slowest_healthz = max(slowest_healthz, time.perf_counter() - asked)
                seq = int(h["last_seq"])  # type: ignore[call-overload]
                published = args.events if done else None
                if published is None:
                    continue
                peak_backlog = max(peak_backlog, args.events - seq)
                if seq >= args.events:
                    break
            t1 = time.time()
            publisher.join()
            h = health(http_port)
            decided = int(h["events"])  # type: ignore[call-overload]
            print(f"events: {args.events:,}, watches: 1,001 (700 match + where, 200 count per key, 100 absent per key)")
            print(f"published in {done[0] - t0:.1f} s ({args.events / (done[0] - t0):,.0f}/s, one client)")
            print(
                f"all decided {t1 - t0:.1f} s after the first publish ({args.events / (t1 - t0):,.0f} events/s overall)"
            )
            own = max(0, decided - args.events)  # the heartbeat's and other jobs' events go through it too
            lost = max(0, args.events - (decided - own))
            print(f"events decided: {decided:,} ({args.events:,} published + {own} of watchd's own; lost: {lost})")
            print(f"peak backlog after publishing ended: {peak_backlog:,} events")
            print(f"slowest /healthz answer during the load: {slowest_healthz * 1000:.0f} ms")
            print(
                f"RSS: {rss_start:.0f} MB at start, peak {peak_rss:.0f} MB ({samples} samples), "
                f"{proc_rss_mb(daemon.pid):.0f} MB after"
            )
            sent = asyncio.run(publish_paced(url, 200, 10))
            wait_seq(http_port, args.events + len(sent), timeout_s=120)
            time.sleep(0.5)
            lat = handoff_latencies_ms(root / "state", sent)
            print(
                f"after the drain, publish → handoff at 200/s ({len(lat)} events): "
                f"p50 {statistics.median(lat):.1f} ms, p99 {pct(lat, 0.99):.1f} ms"
            )
            slow = asyncio.run(slow_clients(http_port, args.slow_clients))
            print(f"slow clients: {slow}")
            print(f"daemon alive at the end: {daemon.poll() is None}")
        finally:
            daemon.terminate()
            daemon.wait(30)
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
