"""Compiled CEL subset vs the CEL binding: µs per evaluation, side by side in one run.

For each expression: the binding's `execute` on a context built once (the predicate alone), the
binding with the context built for the event (what judging one event by one watch costs through
it), and the compiled closure on the event itself (it needs no context).

Usage: python benchmarks/bench_cel.py [--events N]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from typing import Any

from watchd import expr
from watchd.model import Event, make_event

SOURCES = [
    "data.level > 3",
    'data.host.startsWith("web")',
    "data.level > 2 && data.ok == false",
    'data.tags.exists(t, t == "urgent")',
    'data.action == "opened"',
    'data.host in ["web1", "db1"]',
    "has(data.ok) && size(data.host) > 2",
    'data.host.matches("^web[0-9]+$")',
    "data.host",
]


def events(n: int) -> list[Event]:
    rnd = random.Random(2)
    return [
        make_event(
            "svc.event",
            {
                "level": rnd.randint(0, 5),
                "host": rnd.choice(["web1", "web2", "db1", "nas"]),
                "ok": rnd.random() < 0.8,
                "tags": rnd.sample(["urgent", "a", "b", "c"], 2),
                "action": rnd.choice(["opened", "closed"]),
            },
            id=f"e{i}",
        )
        for i in range(n)
    ]


def per_call(fn: Callable[[Any], object], items: list[Any]) -> float:
    """µs per call of `fn` over `items`, CPU time, the best of 3 rounds (a shared machine's
    noise is one-sided)."""
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        for item in items:
            fn(item)
        best = min(best, time.process_time() - start)
    return best * 1e6 / len(items)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    evs = events(args.events)
    print(f"{len(evs)} events; µs per evaluation (best of 3)")
    print(f"{'expression':42} {'binding':>9} {'+context':>9} {'compiled':>9} {'ratio':>7} {'ratio+ctx':>9}")
    ratios: list[float] = []
    for source in SOURCES:
        e = expr.compile_expr(source)
        assert e.fast is not None, source
        program, fast, variables = e.program, e.fast, e.variables
        ctxs = [expr.event_context(ev, variables).cel() for ev in evs]
        b = per_call(program.execute, ctxs)
        bc = per_call(lambda ev: program.execute(expr.event_context(ev, variables).cel()), evs)  # noqa: B023
        c = per_call(lambda ev: fast(ev, None), evs)  # noqa: B023
        ratios.append(bc / c)
        print(f"{source:42} {b:9.2f} {bc:9.2f} {c:9.2f} {b / c:6.1f}× {bc / c:8.1f}×")
    geo = 1.0
    for r in ratios:
        geo *= r
    print(f"geometric mean, compiled vs binding with its context: {geo ** (1 / len(ratios)):.1f}× faster")


if __name__ == "__main__":
    main()
