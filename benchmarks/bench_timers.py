"""Restart with many armed per-key timers: time to ready, memory per armed key, and the lateness of
the first ones to come due.

The state of one `absent` watch (`for = "1h"`, split by `data.host`) with N keys heard is built by
the pure engine and written to a fresh state database, as a daemon that ran and stopped leaves it.
The first `--due` keys were last heard just under an hour ago, so they come due a few seconds after
the start; the others were heard just now. Then `watchd run` starts on it (embedded nats-server),
and, in the same run, on the same config with no state: the baseline.

- ready: from the process start to /healthz answering ok, wall time and the process's CPU time
  (on a shared machine the wall time mostly measures the other jobs);
- RSS of watchd once ready, and the difference per key against the baseline;
- lateness: each of the first due keys' handoff committed, against its due instant.

Also the parts alone, in this process: reading the state back from SQLite, and the engine taking
it (its timers armed).

Usage: python benchmarks/bench_timers.py [--keys N] [--due 100]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from bench_pipeline import free_port, proc_cpu_s, proc_rss_mb
from bench_pipeline import health_or_none as health

from watchd import config
from watchd.engine import Engine, EventInput
from watchd.model import make_event
from watchd.store import schema
from watchd.store.db import connect
from watchd.store.engine_state import assign_versions, commit_step, load_engine_state

FOR_S = 3600.0
WATCH = """
[[watch]]
id = "quiet"
kind = "absent"
expect = { subject = "hb", key = "data.host" }
for = "1h"
then = ["notify.console"]
"""


def project(root: Path) -> tuple[Path, int]:
    (root / "watches").mkdir(parents=True)
    (root / "watches" / "w.toml").write_text(WATCH)
    http_port = free_port()
    (root / "config.toml").write_text(
        f'watches = ["watches/"]\nstate_dir = "state"\n[nats]\nurl = "embedded"\n'
        f'listen = "127.0.0.1:{free_port()}"\n[http]\nlisten = "127.0.0.1:{http_port}"\n'
        '[notify.console]\ntype = "console"\n'
    )
    return root / "config.toml", http_port


def build_state(config_path: Path, keys: int, due: int, start_in_s: float) -> float:
    """The state database with `keys` armed keys; returns the instant the first keys are due."""
    loaded = config.load(config_path)
    defs = loaded.watches
    state = config_path.parent / "state"
    state.mkdir(mode=0o700)
    conn = connect(state / "watchd.db")
    schema.create(conn)
    now = time.time()
    versions = assign_versions(conn, {d.watch.id: d.digest for d in defs}, now)
    engine = Engine()
    first_due = now + start_in_s
    engine.load([(d, versions[d.watch.id]) for d in defs], first_due - FOR_S - 1)
    for i in range(keys):
        # The first `due` keys heard an hour before `first_due` (0.01 s apart), the rest just now.
        at = first_due - FOR_S + i * 0.01 if i < due else now
        engine.step(EventInput(make_event("hb", {"host": f"host-{i:06d}.example.net"}, id=f"e{i}"), at, 0))
    commit_step(
        conn, last_seq=None, clock=now, changes=engine.take_changes(), decisions=[], handoffs=[], subjects={}, now=now
    )
    conn.close()
    return first_due


def start(config_path: Path, http_port: int) -> tuple[subprocess.Popen[bytes], float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "watchd", "run", "--config", str(config_path)],
        stdout=subprocess.DEVNULL,
        stderr=open(config_path.parent / "stderr.txt", "wb"),  # noqa: SIM115 - the child holds it
    )
    while True:
        h = health(http_port)
        if h and h.get("ok") and h.get("pid") == proc.pid:
            return proc, time.perf_counter() - t0
        if proc.poll() is not None:
            err = (config_path.parent / "stderr.txt").read_text()[-2000:]
            raise RuntimeError(f"watchd exited with {proc.returncode}: {err}")
        time.sleep(0.01)


def parts_alone(db: Path, config_path: Path) -> tuple[float, float, float]:
    """CPU seconds to read the state and for the engine to take it (best of 3), and the bytes it
    holds per key (tracemalloc, in a fourth run)."""
    defs = config.load(config_path).watches
    conn = sqlite3.connect(db)
    read_s = take_s = float("inf")
    for _ in range(3):
        t0 = time.process_time()
        keys, meta, clock = load_engine_state(conn, lazy_evidence=True)  # as the daemon reads it
        t1 = time.process_time()
        engine = Engine()
        engine.restore(keys, meta, clock)
        engine.load([(d, 1) for d in defs], clock)
        read_s, take_s = min(read_s, t1 - t0), min(take_s, time.process_time() - t1)
        del keys, meta, engine
    tracemalloc.start()
    keys, meta, clock = load_engine_state(conn, lazy_evidence=True)
    engine = Engine()
    engine.restore(keys, meta, clock)
    engine.load([(d, 1) for d in defs], clock)
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    n = sum(len(k) for k in keys.values())
    conn.close()
    return read_s, take_s, held / n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--due", type=int, default=100)
    parser.add_argument("--due-in", type=float, default=40.0, help="seconds from the start until the first are due")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base_cfg, base_port = project(Path(tmp) / "empty")
        full_cfg, full_port = project(Path(tmp) / "full")
        t0 = time.perf_counter()
        first_due = build_state(full_cfg, args.keys, args.due, start_in_s=args.due_in)
        print(f"state with {args.keys:,} armed keys built and written in {time.perf_counter() - t0:.1f} s")

        base, base_ready = start(base_cfg, base_port)
        base_cpu = proc_cpu_s(base.pid)
        time.sleep(1.0)
        base_rss = proc_rss_mb(base.pid)
        base.terminate()
        base.wait(30)
        proc, ready = start(full_cfg, full_port)
        try:
            ready_cpu = proc_cpu_s(proc.pid)
            time.sleep(1.0)
            rss = proc_rss_mb(proc.pid)
            print(
                f"ready: {ready:.2f} s with {args.keys:,} keys, {base_ready:.2f} s with none "
                f"(+{ready - base_ready:.2f} s); CPU to ready {ready_cpu:.2f} s vs {base_cpu:.2f} s "
                f"(+{ready_cpu - base_cpu:.2f} s)"
            )
            extra = (rss - base_rss) * 1024 * 1024 / args.keys
            print(f"RSS: {rss:.0f} MB with the keys, {base_rss:.0f} MB without: {extra:,.0f} B per armed key")
            wait = first_due + args.due * 0.01 + 5 - time.time()
            if wait < 0:
                print(f"the first keys came due {-wait:.0f} s before watchd was ready: raise start_in_s")
            time.sleep(max(0.0, wait))
            db = sqlite3.connect(full_cfg.parent / "state" / "watchd.db")
            rows = db.execute("SELECT key, created_at FROM handoffs WHERE watch = 'quiet'").fetchall()
            late = sorted(
                (created - (first_due + int(key.rsplit("-", 1)[1].split(".")[0]) * 0.01)) * 1000
                for key, created in rows
            )
            if late:
                print(
                    f"first {len(late)} due keys fired: lateness p50 {statistics.median(late):.0f} ms, "
                    f"max {late[-1]:.0f} ms"
                )
            else:
                print("none of the due keys fired")
        finally:
            proc.terminate()
            proc.wait(30)
        read_s, take_s, per_key = parts_alone(full_cfg.parent / "state" / "watchd.db", full_cfg)
        print(
            f"alone, CPU best of 3: reading the state {read_s:.2f} s, the engine taking it {take_s:.2f} s; "
            f"{per_key:,.0f} B per key held (tracemalloc)"
        )


if __name__ == "__main__":
    main()
