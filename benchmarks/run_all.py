"""Run the benchmarks one after another, each printing its own figures (see RESULTS.md).

Usage: python benchmarks/run_all.py [--only NAME[,NAME]] [--list] [--record]

Each runs with the arguments RESULTS.md gives for it. Left out unless named with --only:
`bench_disk_full` (needs root: it mounts a tmpfs), `soak_load` (a million events: about 20
minutes) and `soak_kill9` (20 kill -9 rounds under load: tests/test_crash.py with 10 cycles).
`--record` writes what they printed, with the machine and the date, into RESULTS.md's section
"Latest recorded run" (replacing the previous one); each script prints its figure beside its
baseline from the same run.
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
    "bench_schedule_shared": ["--schedules", "500", "--rounds", "3"],
    "bench_history": ["--watches", "1000", "--files", "20"],
    "bench_cluster": ["--kills", "6", "--takeover", "3s", "--idle-s", "15"],
    "bench_scaleout": ["--events", "30000"],
    "bench_file_source": [],
    "bench_sources_idle": [],
    "bench_journal": [],
}
ONLY_WHEN_NAMED: dict[str, list[str]] = {"bench_disk_full": [], "soak_load": [], "soak_kill9": []}
# the kill -9 soak is the crash test run for longer: 10 cycles of two kills each
SOAK_KILL9 = ["-m", "pytest", "-q", "-p", "no:cacheprovider", str(HERE.parent / "tests" / "test_crash.py")]
BEGIN, END = "<!-- run_all: begin -->", "<!-- run_all: end -->"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="", help="comma-separated names (bench_engine,bench_cel)")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--record", action="store_true", help="write the output into RESULTS.md")
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
    recorded: list[str] = []
    for name in names:
        if name == "soak_kill9":
            cmd, shown = [sys.executable, *SOAK_KILL9], "WATCHD_KILL_CYCLES=10 pytest tests/test_crash.py"
            run_env = {**env, "WATCHD_KILL_CYCLES": "10"}
        else:
            cmd, shown = [sys.executable, str(HERE / f"{name}.py"), *known[name]], f"{name}.py {' '.join(known[name])}"
            run_env = env
        print(f"\n== {shown}", flush=True)
        start = time.monotonic()
        out = subprocess.PIPE
        done = subprocess.run(cmd, env=run_env, check=False, stdout=out, stderr=subprocess.STDOUT, text=True)
        print(done.stdout, end="", flush=True)
        took = time.monotonic() - start
        print(f"({took:.0f} s)", flush=True)
        if done.returncode != 0:
            failed.append(name)
        status = "ok" if done.returncode == 0 else f"FAILED (exit {done.returncode})"
        recorded.append(f"### `{shown}` — {status}, {took:.0f} s\n\n```\n{done.stdout.strip()}\n```\n")
    if args.record:
        record(recorded)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


def machine() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in lines if "model name" in line), "unknown CPU")
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{os.cpu_count()} × {cpu}, {mem_gib:.0f} GiB, Python {sys.version.split()[0]}, load average {load}"


def record(sections: list[str]) -> None:
    """Replace the generated section of RESULTS.md (or add it at the end)."""
    path = HERE / "RESULTS.md"
    text = path.read_text()
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    body = (
        f"{BEGIN}\n## Latest recorded run\n\nWritten by `python benchmarks/run_all.py --record` on {stamp}; "
        f"{machine()}.\n\n" + "\n".join(sections) + f"\n{END}"
    )
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + body + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    path.write_text(text)
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
