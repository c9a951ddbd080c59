"""Engine core alone, in instructions per event (callgrind): exact where CPU time on a shared
machine moves by a third between runs. The workloads are bench_engine.py's; every subject's plan
is made in a warm-up first, and the same run with no counted steps is subtracted.

`--parts` also counts the run with each kind's handler made a no-op in turn (and all of them,
and the step with no watch judged), which splits an event's instructions by part. Needs valgrind.
Each count is two runs under callgrind, ~20 s each.

Usage: python benchmarks/bench_engine_instructions.py [--events 3000] [--equalities] [--alone] [--parts]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
WARM_UP = 1000
PARTS = {
    "match handlers": ("MatchLogic",),
    "count handlers": ("CountLogic",),
    "absent handlers": ("AbsentLogic",),
    "all handlers": ("MatchLogic", "CountLogic", "AbsentLogic"),
}


def child(events: int, count: int, equalities: bool, alone: bool, no_op: tuple[str, ...], judge: bool) -> None:
    """A warm-up, then `count` steps (`events` or none: the same events are made either way)."""
    sys.path.insert(0, str(HERE))
    import bench_engine as b

    from watchd.engine import Engine
    from watchd.engine.index import SubjectIndex

    t0 = 1_800_000_000.0
    inputs = (b.build_equality_events if equalities else b.build_events)(WARM_UP + events, t0)
    engine = Engine(shares=not alone)
    engine.load((b.build_equality_watches if equalities else b.build_watches)(), t0)
    if no_op:
        engine.index = SubjectIndex()
        for logic in engine.watches.values():
            for pattern, handle in logic.routes():
                skip = type(logic).__name__ in no_op
                engine.index.add(pattern.subject, (logic, pattern, (lambda s, k, i: None) if skip else handle))
    for inp in inputs[:WARM_UP]:
        engine.step(inp)
    if not judge:
        engine._on_event = lambda inp: None  # type: ignore[method-assign]
    for inp in inputs[WARM_UP : WARM_UP + count]:
        engine.step(inp)


def instructions(args: list[str]) -> int:
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__, "--child", *args]
    env = {**os.environ, "PYTHONPATH": f"{HERE.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stderr
    found = re.search(r"I\s+refs:\s+([\d,]+)", out)
    if found is None:
        raise SystemExit(f"no instruction count in valgrind's output:\n{out[-2000:]}")
    return int(found.group(1).replace(",", ""))


def per_event(events: int, flags: list[str]) -> int:
    run = ["--events", str(events), *flags]
    return (instructions([*run, "--count", str(events)]) - instructions([*run, "--count", "0"])) // events


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--equalities", action="store_true", help="bench_engine.py's equality-index workload")
    parser.add_argument("--alone", action="store_true", help="also each candidate judged on its own")
    parser.add_argument("--parts", action="store_true", help="also each kind's handlers made no-ops in turn")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--no-op", default="", help=argparse.SUPPRESS)
    parser.add_argument("--step-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    base = ["--equalities"] if args.equalities else []
    if args.child:
        no_op = tuple(filter(None, args.no_op.split(",")))
        child(args.events, args.count, args.equalities, args.alone, no_op, judge=not args.step_only)
        return
    workload = "--equalities" if args.equalities else "main"
    full = per_event(args.events, base)
    print(f"{workload}: {full:,} instructions per event (routed)")
    if args.alone:
        print(f"{workload}: {per_event(args.events, [*base, '--alone']):,} instructions per event (each watch alone)")
    if args.parts:
        step = per_event(args.events, [*base, "--step-only"])
        print(f"  the step without judging any watch: {step:,}")
        for name, kinds in PARTS.items():
            left = per_event(args.events, [*base, "--no-op", ",".join(kinds)])
            print(f"  {name}: {full - left:,}")
            if name == "all handlers":
                print(f"  routing (candidates, where and key slots, misses, dispatch): {left - step:,}")


if __name__ == "__main__":
    main()
