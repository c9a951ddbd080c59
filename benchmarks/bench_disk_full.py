"""The disk fills under a steady stream of events, then space returns: does health say so, does
watchd recover by itself, and is every event stored and decided exactly once?

`watchd run` (a real process) keeps its state on a small tmpfs. A careful sender POSTs events at a
steady rate, each with its own Idempotency-Key, and re-sends a refused one (503) with the same key
until it is stored. After a while the disk is filled; later the filler is removed. Reported:
- detection: from the fill to the first 503, and to /healthz answering 503;
- recovery: from the space coming back to /healthz 200 again, and to the next stored event;
- whether the daemon process ever restarted (it must not), and its nats-server's restarts;
- events sent, stored (stream messages), decided (handoffs): equal, none lost, none twice.

Needs root (it mounts a tmpfs). Usage: python benchmarks/bench_disk_full.py [--rate 20] [--full-s 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench_pipeline import free_port

from watchd import bus, credentials

WATCH = '[[watch]]\nid = "seen"\nkind = "match"\non = { subject = "bench.disk" }\nthen = ["notify.console"]\n'


def request(port: int, method: str, path: str, body: bytes | None = None, key: str | None = None) -> int:
    headers = {"Content-Type": "application/json"} | ({"Idempotency-Key": key} if key else {})
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def fill(disk: Path) -> None:
    with contextlib.suppress(OSError), open(disk / "filler", "wb") as f:
        while True:
            f.write(b"\0" * (1 << 16))
            f.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=20.0, help="events per second")
    parser.add_argument("--before-s", type=float, default=3.0, help="sending before the disk fills")
    parser.add_argument("--full-s", type=float, default=10.0, help="how long the disk stays full")
    parser.add_argument("--size-mib", type=int, default=64)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root: it mounts a tmpfs")

    root = Path(tempfile.mkdtemp(prefix="watchd-diskfull-"))
    state = root / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={args.size_mib}m,mode=0700", "tmpfs", str(state)], check=True)
    http_port, nats_port = free_port(), free_port()
    (root / "watches").mkdir()
    (root / "watches" / "w.toml").write_text(WATCH)
    (root / "config.toml").write_text(
        f'watches = ["watches/"]\nstate_dir = "state"\ntimezone = "UTC"\n'
        f'[nats]\nlisten = "127.0.0.1:{nats_port}"\n[http]\nlisten = "127.0.0.1:{http_port}"\n'
        + "".join(f"[schedule.{name}]\nenabled = false\n" for name in ("heartbeat", "backup", "canary"))
    )
    daemon = subprocess.Popen(
        [sys.executable, "-m", "watchd", "run", "--config", str(root / "config.toml")],
        stdout=subprocess.DEVNULL,
        stderr=open(root / "watchd.log", "wb"),  # noqa: SIM115 - open for the process's life
    )
    try:
        deadline = time.monotonic() + 30
        while request(http_port, "GET", "/healthz") != 200:
            if time.monotonic() > deadline or daemon.poll() is not None:
                sys.exit(f"watchd did not start: {(root / 'watchd.log').read_text()[-2000:]}")
            time.sleep(0.1)

        marks: dict[str, float] = {}
        sent = stored = refused = 0
        pad = "x" * 4096  # a page each: a full tmpfs refuses the next one
        interval = 1 / args.rate
        start = time.monotonic()
        filled_at = freed_at = 0.0
        pending: str | None = None
        i = 0
        while True:
            now = time.monotonic()
            if not filled_at and now - start >= args.before_s:
                fill(state)
                filled_at = marks["filled"] = time.monotonic()
            if filled_at and not freed_at and now - filled_at >= args.full_s:
                (state / "filler").unlink()
                freed_at = marks["freed"] = time.monotonic()
            if filled_at and "unhealthy" not in marks and request(http_port, "GET", "/healthz") == 503:
                marks["unhealthy"] = time.monotonic()
            if freed_at and "healthy_again" not in marks and request(http_port, "GET", "/healthz") == 200:
                marks["healthy_again"] = time.monotonic()
            if "healthy_again" in marks and now - marks["healthy_again"] > 2 and pending is None:
                break
            if pending is None:
                pending, i = f"disk-{i}", i + 1
                sent += 1
            body = json.dumps({"n": i, "pad": pad}).encode()
            status = request(http_port, "POST", "/events/bench.disk", body, key=pending)
            if status == 202:
                stored += 1
                pending = None
                if freed_at and "stored_again" not in marks:
                    marks["stored_again"] = time.monotonic()
            else:
                refused += 1
                marks.setdefault("first_refusal", time.monotonic())
            time.sleep(max(0.0, interval - (time.monotonic() - now)))
            if time.monotonic() - start > 300:
                sys.exit("gave up after 300 s")

        creds = credentials.load(state)
        assert creds is not None
        url = creds.url(f"nats://127.0.0.1:{nats_port}", "admin")

        async def stream_count() -> int:
            nc = await bus.connect(url)
            try:
                subjects = await nc.jetstream().stream_info(bus.EVENTS_STREAM, subjects_filter="watchd.events.bench.>")
                return int(sum((subjects.state.subjects or {}).values()))
            finally:
                await nc.close()

        deadline = time.monotonic() + 60
        while True:
            conn = sqlite3.connect(f"file:{state / 'watchd.db'}?mode=ro", uri=True)
            decided = conn.execute("SELECT COUNT(*) FROM handoffs WHERE watch = 'seen'").fetchone()[0]
            conn.close()
            if decided >= sent or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        in_stream = asyncio.run(stream_count())
        log = (root / "watchd.log").read_text(errors="replace")
        server_restarts = log.count("restarting the embedded nats-server")
        print(f"events: sent {sent}, stored {in_stream}, decided {decided}, refused attempts {refused} (re-sent)")
        print(f"lost {sent - min(in_stream, decided)}, stored twice {max(0, in_stream - sent)}")
        print(
            f"detection: first 503 {marks.get('first_refusal', 0) - filled_at:.1f}s after the fill, "
            f"/healthz 503 after {marks.get('unhealthy', 0) - filled_at:.1f}s"
        )
        print(
            f"recovery: /healthz 200 {marks['healthy_again'] - freed_at:.1f}s after space returned, "
            f"next event stored after {marks.get('stored_again', 0) - freed_at:.1f}s"
        )
        print(
            f"watchd process restarted: {'no' if daemon.poll() is None else 'YES'}; "
            f"embedded nats-server restarted by watchd: {server_restarts}"
        )
    finally:
        daemon.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            daemon.wait(15)
        daemon.kill()
        subprocess.run(["umount", "-l", str(state)], check=False)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
