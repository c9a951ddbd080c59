"""Run the benchmarks one after another, each printing its own figures (see RESULTS.md).

Usage: python benchmarks/run_all.py [--only NAME[,NAME]] [--list]

Each runs with the arguments RESULTS.md gives for it. Left out unless named with --only:
`bench_disk_full` (needs root: it mounts a tmpfs) and `soak_load` (runs for hours).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name → arguments, in the order RESULTS.md tells them
BENCHMARKS: dict[str, list[str]] = {
    "bench_cel": ["--events", "20000"],
    "bench_engine": ["--events", "100000"],
    "bench_pipeline": ["--events", "50000", "--idle-s", "60"],
    "bench_memory": ["--events", "100000"],
    "bench_timers": ["--keys", "100000"],
    "bench_delivery": [],
    "bench_backup": ["--rows", "1000000"],
    "bench_webhook": [],
    "bench_tokens": [],
    "bench_scheduler": ["--rounds", "3", "--idle", "60"],
    "bench_history": ["--watches", "1000", "--files", "20"],
    "bench_cluster": ["--kills", "6", "--takeover", "3s", "--idle-s", "15"],
    "bench_file_source": [],
    "bench_sources_idle": [],
    "bench_journal": [],
}
ONLY_WHEN_NAMED: dict[str, list[str]] = {"bench_disk_full": [], "soak_load": []}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="", help="comma-separated names (bench_engine,bench_cel)")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    known = {**BENCHMARKS, **ONLY_WHEN_NAMED}
    if args.list:
        for name, argv in known.items():
            print(f"{name} {' '.join(argv)}")
        return
    names = [n for n in args.only.split(",") if n] or list(BENCHMARKS)
    unknown = [n for n in names if n not in known]
    if unknown:
        sys.exit(f"unknown benchmark {', '.join(unknown)}: see --list")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))}
    failed = []
    for name in names:
        cmd = [sys.executable, str(HERE / f"{name}.py"), *known[name]]
        print(f"\n== {name} {' '.join(known[name])}", flush=True)
        start = time.monotonic()
        if subprocess.run(cmd, env=env, check=False).returncode != 0:
            failed.append(name)
        print(f"({time.monotonic() - start:.0f} s)", flush=True)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
