"""The token bill of watch-driven waking vs. polling an agent every 30 minutes, over one simulated day.

A day of events from six sources (mail, laptop heartbeats, auth, GitHub, backups, disk gauges; 10,000+
events) holds a dozen real conditions: urgent mail from a big customer, login storms (5 failures for one
user within 10 minutes), failed backups, a disk over 95%, and the laptop going silent for 15 minutes.

- watch mode: the real engine (pure core) runs the watches over the day; each fire wakes the agent once,
  through the real AnthropicRunner (prompt, caching, checkpoints, accounting) and the real SDK;
- poll mode: every 30 minutes the same agent is woken with everything that arrived since the last wake.

Both talk to the fake Messages API on loopback, whose scripted model answers `done` at once and reports
usage proportional to the request (≈ len(text) / 4 tokens), so the bill is the prompt the agent was
given. A condition is noticed at the fire (watch) or at the first poll after it became true (poll).

Usage: python benchmarks/bench_tokens.py [--seed N]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.fake_anthropic import FakeAnthropic, tool_use

from watchd import config
from watchd.agents.anthropic import AnthropicRunner
from watchd.dispatch import Delivered, handoffs_from_fire
from watchd.engine import Engine, EventInput, Fire, Tick
from watchd.model import Event, Handoff, iso, make_event
from watchd.store import Store

DAY0 = 1_795_046_400.0  # 2026-11-19T00:00:00Z
POLL_S = 1800.0

CONFIG = """watches = ["watches/"]
timezone = "UTC"
[agent.ops]
type = "anthropic"
model = "claude-haiku-4-5"
api_key = "{key}"
base_url = "{url}"
instructions = "You look after a small home and office setup. Decide what needs the user's attention."
tools = ["notify.console"]
max_steps = 4
run_token_budget = 10000000
daily_token_budget = 100000000
"""

WATCHES = """
[[watch]]
id = "urgent-mail"
kind = "match"
on = { subject = "mail.received", where = 'data.from.endsWith("@bigcustomer.com") && data.urgent' }
then = ["agent.ops"]

[[watch]]
id = "login-storm"
kind = "match"
on = { subject = "auth.failed", key = "data.user" }
count = 5
window = "10m"
cooldown = "30m"
then = ["agent.ops"]

[[watch]]
id = "backup-failed"
kind = "match"
on = { subject = "backup.done", where = "data.exit_code != 0" }
then = ["agent.ops"]

[[watch]]
id = "disk-full"
kind = "match"
on = { subject = "disk.usage", where = "data.pct > 95" }
cooldown = "1h"
then = ["agent.ops"]

[[watch]]
id = "laptop-silent"
kind = "absent"
expect = { subject = "heartbeat.laptop" }
for = "15m"
then = ["agent.ops"]
"""


@dataclass
class Condition:
    name: str
    at: float  # when it became true


def simulate_day(seed: int) -> tuple[list[Event], list[Condition]]:
    rnd = random.Random(seed)
    events: list[Event] = []

    def ev(subject: str, at: float, data: dict[str, Any], source: str) -> None:
        events.append(make_event(subject, data, time_s=at, source=source))

    senders = ["alice@example.org", "news@shop.example", "bob@partner.example", "ops@bigcustomer.com"]
    for _ in range(1400):
        t = DAY0 + rnd.uniform(0, 86400)
        ev(
            "mail.received",
            t,
            {
                "from": rnd.choice(senders),
                "urgent": False,
                "subject": "weekly update " * 3,
                "size": rnd.randint(2_000, 90_000),
            },
            "imap",
        )
    silent_from, silent_to = DAY0 + 14 * 3600 + 7 * 60, DAY0 + 14 * 3600 + 41 * 60  # the laptop sleeps
    t = DAY0
    while t < DAY0 + 86400:
        if not silent_from <= t < silent_to:
            ev("heartbeat.laptop", t, {"host": "laptop", "load": round(rnd.uniform(0, 3), 2)}, "agent")
        t += 60
    for _ in range(3000):
        t = DAY0 + rnd.uniform(0, 86400)
        ev("auth.ok", t, {"user": rnd.choice(["alice", "bob", "carol"]), "ip": f"10.0.0.{rnd.randint(2, 250)}"}, "sshd")
    for _ in range(300):  # background failures, never 5 for one user within 10 minutes
        t = DAY0 + rnd.uniform(0, 86400)
        ev("auth.failed", t, {"user": f"typo{rnd.randint(0, 10_000)}", "ip": "10.0.0.9"}, "sshd")
    for _ in range(3100):
        t = DAY0 + rnd.uniform(0, 86400)
        ev(
            "github.push",
            t,
            {
                "repo": rnd.choice(["site", "infra", "notes"]),
                "commits": rnd.randint(1, 5),
                "message": "fix typo in docs and bump deps",
            },
            "github",
        )
    for i in range(24 * 12 * 1):  # disk gauges every 5 minutes per volume
        for vol in ("root", "nas", "backup"):
            ev("disk.usage", DAY0 + i * 300 + 7, {"volume": vol, "pct": rnd.randint(40, 80)}, "node")
    for h in range(0, 24, 4):
        ev("backup.done", DAY0 + h * 3600 + 1800, {"exit_code": 0, "duration_s": 812.4}, "exec")

    conditions: list[Condition] = []
    for hour in (8.2, 11.7, 16.05, 21.4):
        t = DAY0 + hour * 3600
        ev("mail.received", t, {"from": "ceo@bigcustomer.com", "urgent": True, "subject": "Invoice overdue"}, "imap")
        conditions.append(Condition("urgent-mail", t))
    for hour, user in ((3.3, "root"), (13.1, "admin"), (19.9, "alice")):
        base = DAY0 + hour * 3600
        for k in range(5):
            ev("auth.failed", base + k * 40, {"user": user, "ip": "203.0.113.7"}, "sshd")
        conditions.append(Condition("login-storm", base + 4 * 40))
    for hour in (2.6, 17.2):
        t = DAY0 + hour * 3600
        ev("backup.done", t, {"exit_code": 2, "duration_s": 14.0}, "exec")
        conditions.append(Condition("backup-failed", t))
    for hour in (10.05, 22.55):
        t = DAY0 + hour * 3600 + 3
        ev("disk.usage", t, {"volume": "nas", "pct": 97}, "node")
        conditions.append(Condition("disk-full", t))
    last_beat = max(e.ts for e in events if e.subject == "heartbeat.laptop" and e.ts < silent_from)
    conditions.append(Condition("laptop-silent", last_beat + 15 * 60))
    events.sort(key=lambda e: e.ts)
    return events, sorted(conditions, key=lambda c: c.at)


def watch_fires(defs: list[config.WatchDef], events: list[Event]) -> list[Fire]:
    engine = Engine("UTC")
    engine.load([(d, 1) for d in defs], DAY0)
    fires: list[Fire] = []
    for seq, e in enumerate(events, 1):
        due = engine.next_due()
        while due is not None and due <= e.ts:
            fires += engine.step(Tick(due)).fires
            due = engine.next_due()
        fires += engine.step(EventInput(e, e.ts, seq)).fires
    return fires


def noticed(conditions: list[Condition], wakes: list[tuple[float, set[str]]]) -> list[float | None]:
    """Per condition, how late the first wake that covered it was (None: never noticed)."""
    late: list[float | None] = []
    for c in conditions:
        hit = next((at for at, names in wakes if c.name in names and at >= c.at - 1e-6), None)
        late.append(None if hit is None else max(0.0, hit - c.at))
    return late


@dataclass
class Bill:
    wakes: int = 0
    input_tokens: int = 0  # uncached + cache reads + cache writes
    output_tokens: int = 0
    cost_usd: float = 0.0


async def bill(store: Store, handoffs: list[Handoff], runner: AnthropicRunner) -> Bill:
    for h in handoffs:
        outcome = await runner.deliver(h)
        assert isinstance(outcome, Delivered), outcome
    row = store.conn.execute(
        "SELECT COUNT(*), SUM(input_tokens + cache_read_tokens + cache_write_tokens), SUM(output_tokens), "
        "SUM(cost_usd) FROM agent_runs"
    ).fetchone()
    return Bill(row[0], row[1] or 0, row[2] or 0, row[3] or 0.0)


async def main(seed: int) -> None:
    events, conditions = simulate_day(seed)
    async with FakeAnthropic() as fake:
        fake.model = lambda body: tool_use("done", {"status": "resolved", "summary": "looked at it"})
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            (root / "watches").mkdir()
            (root / "watches" / "day.toml").write_text(WATCHES)
            (root / "config.toml").write_text(CONFIG.format(key=fake.api_key, url=fake.url))
            loaded = config.load(root / "config.toml")
            agent = loaded.config.agent["ops"]
            assert isinstance(agent, config.AnthropicAgent)

            t0 = time.perf_counter()
            fires = watch_fires(loaded.watches, events)
            engine_s = time.perf_counter() - t0
            watch_store = Store(root / "watch.db")
            watch_runner = AnthropicRunner(agent, name="agent.ops", config=loaded.config, store=watch_store)
            watch_handoffs = [h for f in fires for h in handoffs_from_fire(f)]
            watch_bill = await bill(watch_store, watch_handoffs, watch_runner)
            watch_late = noticed(conditions, [(f.fired_at, {f.watch}) for f in fires])

            poll_store = Store(root / "poll.db")
            poll_runner = AnthropicRunner(agent, name="agent.ops", config=loaded.config, store=poll_store)
            polls: list[Handoff] = []
            poll_wakes: list[tuple[float, set[str]]] = []
            i = 0
            at = DAY0 + POLL_S
            while at <= DAY0 + 86400:
                batch: list[Event] = []
                while i < len(events) and events[i].ts <= at:
                    batch.append(events[i])
                    i += 1
                polls.append(
                    Handoff(
                        id=f"h_poll_{int(at)}",
                        watch="poll",
                        watch_version=1,
                        kind="schedule",
                        key=None,
                        target="agent.ops",
                        trigger="schedule",
                        reason="the 30-minute check-in",
                        fired_at=iso(at) or "",
                        evidence=[
                            {"id": e.id, "subject": e.subject, "time": iso(e.ts), "source": e.source, "data": e.data}
                            for e in batch
                        ],
                    )
                )
                # The poll sees every condition that became true by now (generously: the model never misses one).
                poll_wakes.append((at, {c.name for c in conditions if c.at <= at}))
                at += POLL_S
            poll_bill = await bill(poll_store, polls, poll_runner)
            poll_late = noticed(conditions, poll_wakes)
            for r in (watch_runner, poll_runner):
                await r.close()
            watch_store.close()
            poll_store.close()

    def late_text(late: list[float | None]) -> str:
        seen = [x for x in late if x is not None]
        missed = len(late) - len(seen)
        return (
            f"missed {missed}, lateness median {sorted(seen)[len(seen) // 2] / 60:.1f} min, "
            f"max {max(seen) / 60:.1f} min"
            if seen
            else f"missed {missed}"
        )

    print(f"simulated day: {len(events):,} events from 6 sources, {len(conditions)} real conditions")
    print(f"engine over the day: {engine_s * 1000:.0f} ms, {len(fires)} fires")
    for name, b, late in (("watch-driven", watch_bill, watch_late), ("poll every 30m", poll_bill, poll_late)):
        print(
            f"{name:>15}: {b.wakes:3d} wake-ups, {b.input_tokens:>10,} input tokens, {b.output_tokens:>7,} output "
            f"tokens, ${b.cost_usd:.4f}; {late_text(late)}"
        )
    ratio = poll_bill.input_tokens / max(1, watch_bill.input_tokens)
    later = sum(1 for w, p in zip(watch_late, poll_late, strict=True) if w is None or (p is not None and w > p))
    print(f"input tokens: {ratio:.1f}x fewer with watches; conditions watches noticed later than polling: {later}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7)
    asyncio.run(main(parser.parse_args().seed))
