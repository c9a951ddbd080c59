"""Engine core alone: 1,000 watches over 100 subjects with mixed CEL predicates, events/s on one core.

Usage: python benchmarks/bench_engine.py [--events N]
"""

from __future__ import annotations

import argparse
import random
import time

import msgspec

from watchd.config import Watch, WatchDef
from watchd.engine import Engine, EventInput
from watchd.model import make_event

SUBJECTS = [f"svc{i}.event" for i in range(100)]
WHERES = [
    None,
    "data.level > 3",
    'data.host.startsWith("web")',
    "data.level > 2 && data.ok == false",
    'data.tags.exists(t, t == "urgent")',
]


def build_watches(n: int = 1000) -> list[tuple[WatchDef, int]]:
    rnd = random.Random(1)
    out = []
    for i in range(n):
        subject = SUBJECTS[i % len(SUBJECTS)]
        where = WHERES[i % len(WHERES)]
        kind = ["match", "match", "match", "absent"][i % 4]
        raw: dict[str, object] = {"id": f"w{i}", "kind": kind, "then": ["notify.console"]}
        pattern: dict[str, object] = {"subject": subject}
        if where:
            pattern["where"] = where
        if kind == "match":
            raw["on"] = pattern
            if rnd.random() < 0.3:
                pattern["key"] = "data.host"
                raw["count"], raw["window"] = 5, "10m"
        else:
            pattern["key"] = "data.host"
            raw["expect"], raw["for"] = pattern, "15m"
        out.append((WatchDef(msgspec.convert(raw, Watch), "bench", 1, str(i)), 1))
    return out


def build_events(n: int, t0: float) -> list[EventInput]:
    rnd = random.Random(2)
    events = []
    for i in range(n):
        data = {
            "level": rnd.randint(0, 5),
            "host": rnd.choice(["web1", "web2", "db1", "nas"]),
            "ok": rnd.random() < 0.8,
            "tags": rnd.sample(["urgent", "a", "b", "c"], 2),
        }
        at = t0 + i * 0.01
        events.append(EventInput(make_event(rnd.choice(SUBJECTS), data, id=f"e{i}", time_s=at), at, i + 1))
    return events


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    t0 = 1_800_000_000.0
    engine = Engine()
    engine.load(build_watches(), t0)
    events = build_events(args.events, t0)
    decisions = fires = 0
    start = time.process_time()
    for inp in events:
        out = engine.step(inp)
        decisions += len(out.decisions)
        fires += len(out.fires)
    cpu = time.process_time() - start
    print(f"watches: 1000 over {len(SUBJECTS)} subjects; events: {len(events)}")
    print(f"decisions: {decisions} ({decisions / len(events):.1f}/event); fires: {fires}")
    print(f"engine core: {len(events) / cpu:,.0f} events/s on one core ({cpu * 1e6 / len(events):.1f} µs/event)")


if __name__ == "__main__":
    main()
