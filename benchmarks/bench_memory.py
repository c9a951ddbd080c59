"""Memory of a running daemon: RSS of watchd and of its embedded nats-server after start and after
N events, and which heavy modules the daemon loaded.

Two daemons in one run, each in a temp project with the embedded nats-server:
- `compiled`: 100 watches whose `where`s are all in the compiled CEL subset, no agent;
- `binding`: the same with one `where` outside the subset (`data.level + 1 > 5`): the CEL binding
  is loaded for it.
- `GOMEMLIMIT=off`: as `compiled`, with the embedded nats-server's soft memory limit lifted.
The modules come from `python -X importtime` of the daemon process itself.

Usage: python benchmarks/bench_memory.py [--events N] [--gomemlimit off] [--idle-s 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_pipeline import free_port, health, proc_cpu_s, proc_rss_mb

from watchd import bus, credentials
from watchd.model import make_event

HEAVY = ("anthropic", "cel", "aiohttp", "prompt_toolkit", "rich", "jinja2", "selectolax", "httpx")


def watches(outside: bool) -> str:
    out = []
    for i in range(100):
        where = 'data.level > 4 && data.host == "h1"'
        if outside and i == 0:
            where = "data.level + 1 > 5"
        out.append(
            f'[[watch]]\nid = "w{i}"\nkind = "match"\n'
            f'on = {{ subject = "svc{i % 20}.event", where = \'{where}\' }}\nthen = ["notify.console"]\n'
        )
    return "\n".join(out)


def wait_seq(port: int, seq: int, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if int(health(port).get("last_seq", -1)) >= seq:  # type: ignore[call-overload]
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"last_seq did not reach {seq}")


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


def measure(label: str, outside: bool, events: int, env: dict[str, str], idle_s: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "watches").mkdir()
        (root / "watches" / "w.toml").write_text(watches(outside))
        nats_port, http_port = free_port(), free_port()
        (root / "config.toml").write_text(
            f'watches = ["watches/"]\nstate_dir = "state"\n[nats]\nurl = "embedded"\n'
            f'listen = "127.0.0.1:{nats_port}"\n[http]\nlisten = "127.0.0.1:{http_port}"\n'
            '[notify.console]\ntype = "console"\n'
        )
        cmd = [sys.executable, "-X", "importtime", "-m", "watchd", "run", "--config", str(root / "config.toml")]
        err = open(root / "stderr.txt", "w")  # noqa: SIM115 - closed below, after the process
        daemon = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        try:
            wait_seq(http_port, 0, 60)
            time.sleep(1.0)  # settle: the first probes and timers ran
            nats_pid = int((root / "state" / "nats" / "nats-server.pid").read_text())
            start = proc_rss_mb(daemon.pid), proc_rss_mb(nats_pid)
            creds = credentials.load(root / "state")
            url = f"nats://127.0.0.1:{nats_port}"
            admin = creds.url(url, "admin") if creds is not None else url
            t0 = time.perf_counter()
            asyncio.run(publish_many(admin, events))
            wait_seq(http_port, events, 600)
            took = time.perf_counter() - t0
            after = proc_rss_mb(daemon.pid), proc_rss_mb(nats_pid)
            cpu0 = proc_cpu_s(daemon.pid), proc_cpu_s(nats_pid)
            time.sleep(idle_s)
            idle = proc_cpu_s(daemon.pid) - cpu0[0], proc_cpu_s(nats_pid) - cpu0[1]
        finally:
            daemon.terminate()
            daemon.wait(30)
            err.close()
        loaded = {
            line.rsplit("|", 1)[1].strip()
            for line in (root / "stderr.txt").read_text().splitlines()
            if line.startswith("import time:") and "|" in line
        }
        heavy = sorted(m for m in HEAVY if m in loaded)
        print(
            f"{label:9} watchd RSS {start[0]:5.1f} MB after start, {after[0]:5.1f} MB after {events:,} events; "
            f"nats-server {start[1]:5.1f} → {after[1]:5.1f} MB; heavy modules: {', '.join(heavy) or 'none'} "
            f"({events / took:,.0f} events/s published and decided); idle {idle_s:.0f} s after: CPU watchd "
            f"{idle[0]:.2f} s, nats-server {idle[1]:.2f} s"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--gomemlimit", default="", help="the third run's GOMEMLIMIT (default: off, no limit)")
    parser.add_argument("--idle-s", type=float, default=10.0, help="CPU measured over this idle time after the events")
    args = parser.parse_args()
    env = dict(os.environ)
    measure("compiled", False, args.events, env, args.idle_s)
    measure("binding", True, args.events, env, args.idle_s)
    # The embedded nats-server's default soft memory limit (watchd/bus.py) lifted, or another one.
    other = args.gomemlimit or "off"
    measure(f"GOMEMLIMIT={other}", False, args.events, {**env, "GOMEMLIMIT": other}, args.idle_s)


if __name__ == "__main__":
    main()
