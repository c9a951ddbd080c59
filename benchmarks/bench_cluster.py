"""Two watchd instances on one nats-server (SPEC section 9): takeover time and the lease's idle cost.

1. Takeover: kill -9 of the lease holder, time until the standby's /healthz says it holds the lease;
   the killed one is started again (it stands by) and the next round kills the new holder.
2. Idle cost: CPU seconds per minute of a holder and of a standby with `[cluster] takeover` as
   given, against one instance on the embedded NATS (no lease traffic to speak of) in the same run.

Usage: python benchmarks/bench_cluster.py [--kills 8] [--takeover 3s] [--idle-s 20]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from watchd.bus import nats_server_binary

WATCH = '[[watch]]\nid = "jobs"\nkind = "match"\non = { subject = "job.*" }\nthen = ["notify.console"]\n'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def health(port: int) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
            result: dict[str, object] = json.loads(r.read())
            return result
    except (OSError, ValueError):
        return None


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--takeover", default="3s")
    parser.add_argument("--idle-s", type=float, default=20.0)
    args = parser.parse_args()
    extra = f'[cluster]\ntakeover = "{args.takeover}"\n'
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
        single = Instance(base / "single", "embedded", "")
        try:
            time.sleep(0.3)
            for inst in pair:
                inst.start()
            # Idle: the holder renews, the standby polls and refreshes the member list.
            single.start()
            time.sleep(2)
            holder = next(i for i in pair if role(i.port) == "holder")
            standby = next(i for i in pair if i is not holder)
            procs = {"holder": holder, "standby": standby, "embedded single": single}
            before = {k: cpu_s(i.proc.pid) for k, i in procs.items() if i.proc}
            time.sleep(args.idle_s)
            per_min = {k: (cpu_s(i.proc.pid) - before[k]) * 60 / args.idle_s for k, i in procs.items() if i.proc}
            single.stop()

            took: list[float] = []
            for _ in range(args.kills):
                holder = next(i for i in pair if role(i.port) == "holder")
                standby = next(i for i in pair if i is not holder)
                holder.kill9()
                killed = time.monotonic()
                while role(standby.port) != "holder":
                    if time.monotonic() - killed > 60:
                        raise TimeoutError("no takeover within 60 s")
                    time.sleep(0.02)
                took.append(time.monotonic() - killed)
                holder.start()  # it comes back and stands by
        finally:
            for inst in [*pair, single]:
                inst.stop()
            server.terminate()
            server.wait(10)
    took.sort()
    p99 = took[min(len(took) - 1, round(0.99 * (len(took) - 1)))]
    print(f"takeover = {args.takeover}, {args.kills} kill -9 of the holder")
    print(f"  takeover time: p50 {statistics.median(took):.2f}s  p99 {p99:.2f}s  max {took[-1]:.2f}s")
    print(f"idle CPU over {args.idle_s:g}s (CPU-s per minute)")
    for name, value in per_min.items():
        print(f"  {name:16s} {value:.3f}")
    print(f"  lease cost (holder - embedded single): {per_min['holder'] - per_min['embedded single']:+.3f}")


if __name__ == "__main__":
    main()
