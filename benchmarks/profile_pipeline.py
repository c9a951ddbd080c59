"""Where the daemon's CPU goes while it drains a backlog: py-spy samples split into stages.

The set-up of bench_pipeline.py (the same watches and events, nats-server on its own): N events
are stored while the daemon is down; it is started again and py-spy samples it (every thread)
from its first committed batch to the last. Each sample is put in the first stage, in the order
below, whose functions are on its stack; the top functions by own samples follow.

Usage: python benchmarks/profile_pipeline.py [--events N] [--rate 250]
(needs py-spy, allowed to attach to a process of the same user)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_pipeline import WATCHES, health, publish_many, start_on_own_nats, wait_seq, watchd_run

# (stage, substrings of a frame "function (file:line)"): the first stage matched names the sample.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("deliver handoffs (not in raw)", ("HandoffQueue._deliver", "Store.finish", "take_queued", "Grouped._write")),
    ("queue handoffs (not in raw)", ("queue_pending", "mark_queued", "unqueued")),
    ("SQLite engine commit", ("commit_step",)),
    ("SQLite, other", ("store/writer.py",)),
    ("ack", ("ack_upto",)),
    ("decode", ("decode_stored_event",)),
    ("engine step", ("stepping.py:take", "take (watchd/stepping.py")),
    ("keep for explain", ("kept_for_explain",)),
    ("commit (loop side)", ("_commit (", "ShardEngine.commit (")),
    ("consume, rest", ("_consume (", "ShardEngine.consume (")),
    ("read: pull requests, parse", ("watchd/pull.py", "nats/aio/client.py", "nats/aio/msg.py", "nats/protocol")),
    ("event loop, other tasks", ("asyncio/",)),
]


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of `pid`, by thread id (py-spy's samples also count waits in I/O)."""
    out: dict[str, float] = collections.defaultdict(float)
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = task.name
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def wait_delivered(db_file: Path, timeout_s: float = 60) -> int:
    """Wait until every handoff is delivered (the deliverer may lag behind the engine); how many are not."""
    deadline = time.monotonic() + timeout_s
    while True:
        db = sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)
        try:
            left = int(db.execute("SELECT COUNT(*) FROM handoffs WHERE state != 'delivered'").fetchone()[0])
        finally:
            db.close()
        if left == 0 or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def stage_of(stack: str) -> str:
    for name, needles in STAGES:
        if any(n in stack for n in needles):
            return name
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server, daemon, url, http_port = start_on_own_nats(root, WATCHES)
        spy: subprocess.Popen[bytes] | None = None
        try:
            wait_seq(http_port, 0, timeout_s=30)
            daemon.terminate()
            daemon.wait(20)
            asyncio.run(publish_many(url, args.events))
            daemon = watchd_run(root)
            wait_seq(http_port, 1)
            out = root / "spy.txt"
            spy = subprocess.Popen(
                [
                    pyspy,
                    "record",
                    "--pid",
                    str(daemon.pid),
                    "--format",
                    "raw",
                    "--threads",
                    "--nonblocking",
                    "--rate",
                    str(args.rate),
                    "--output",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            first = int(health(http_port)["last_seq"])  # type: ignore[call-overload]
            cpu0 = thread_cpu_s(daemon.pid)
            wait_seq(http_port, args.events)
            cpu1 = thread_cpu_s(daemon.pid)
            drained_at = time.perf_counter()
            left = wait_delivered(root / "state" / "watchd.db")
            cpu2 = thread_cpu_s(daemon.pid)
            tail_s = time.perf_counter() - drained_at
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
            spy = None
            n = args.events - first
            raw = out.read_text()
            names = dict(re.findall(r"thread \((\d+)\): ([^;]+);", raw))
            print("CPU per event by thread (/proc):", end="")
            for tid in sorted(cpu1, key=lambda t: cpu0.get(t, 0.0) - cpu1[t])[:4]:
                print(f" {names.get(tid, tid)} {(cpu1[tid] - cpu0.get(tid, 0.0)) * 1e6 / n:.0f} µs", end="")
            print()
            after, total = sum(cpu2.values()) - sum(cpu1.values()), sum(cpu2.values()) - sum(cpu0.values())
            print(
                f"the handoffs' delivery went on {tail_s:.1f} s after the drain ({left} left undelivered): "
                f"{after * 1e6 / n:.0f} µs per event more, {total * 1e6 / n:.0f} µs per event with it"
            )
            report(raw, n, args.rate, args.top)
        finally:
            if spy is not None:
                spy.kill()
            daemon.terminate()
            daemon.wait(20)
            server.terminate()
            server.wait(10)


def report(raw: str, events: int, rate: int, top: int) -> None:
    stages: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()  # watchd's functions, with what they call
    per_thread: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    by_task: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        threads[frames[0].partition(": ")[2] or frames[0]] += count
        stage = stage_of(stack)
        stages[stage] += count
        per_thread[frames[0].partition(": ")[2] or frames[0]][stage] += count
        by_task[stage][" < ".join(f.split(" (")[0] for f in reversed(frames[-3:]))] += count
        own[frames[-1]] += count
        for frame in {f.rpartition(":")[0] + ")" for f in frames if "(watchd/" in f}:
            inclusive[frame] += count
    us = 1e6 / rate / events  # µs of CPU per event for one sample (samples of running threads only)
    print(f"{events} events drained; {total} samples at {rate}/s: {total * us:.0f} µs per event in all")
    for name, count in stages.most_common():
        print(f"  {name:<32} {count * us:6.1f} µs/event  {count / total:6.1%}")
    for thread, count in threads.most_common(2):
        parts = ", ".join(f"{s} {c * us:.1f}" for s, c in per_thread[thread].most_common())
        print(f"{thread} ({count / total:.0%} of samples), µs/event: {parts}")
    print(f"top {top} by own samples:")
    for frame, count in own.most_common(top):
        print(f"  {count * us:6.1f} µs/event  {frame}")
    for name in ("event loop, other tasks", "other"):
        print(f"in {name!r}, by the outermost frames of each sample below the thread's:")
        for frame, count in by_task[name].most_common(6):
            print(f"  {count * us:6.1f} µs/event  {frame}")
    print(f"top {top} of watchd's functions, with what they call:")
    for frame, count in inclusive.most_common(top):
        print(f"  {count * us:6.1f} µs/event  {frame}")


if __name__ == "__main__":
    main()
