"""The `command` agent with real processes: exit codes to outcomes, the handoff on stdin, its
environment, output tails, and a timeout that takes the whole process group down."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import pytest
from support.handoffs import make_handoff
from support.processes import pid_gone
from support.waiting import wait_until

from watchd.agents.command import TAIL_BYTES, CommandRunner
from watchd.config import CommandAgent, load
from watchd.dispatch import Dead, Delivered, Retry
from watchd.model import Handoff
from watchd.notify.http_client import HttpClient, Misconfigured
from watchd.targets import build_targets

PY = sys.executable


def handoff(**kw: object) -> Handoff:
    base: dict[str, object] = {
        "id": "h_abc123",
        "watch": "disk-full",
        "watch_version": 2,
        "key": "host1",
        "target": "agent.fixer",
        "reason": "disk over 90%",
        "fired_at": "2026-11-22T02:00:00Z",
        "evidence": [{"id": "e1", "subject": "disk.usage", "data": {"pct": 93}}],
        "attempt": 3,
    }
    return make_handoff(**{**base, **kw})


def runner(*command: str, timeout: str = "10s", **kw: object) -> CommandRunner:
    return CommandRunner(CommandAgent(command=list(command), timeout=timeout), name="agent.fixer", **kw)  # type: ignore[arg-type]


async def test_exit_0_is_done_and_the_handoff_arrives_on_stdin_with_its_env(tmp_path: Path) -> None:
    seen = tmp_path / "seen.json"
    script = (
        "import json, os, sys\n"
        "h = json.load(sys.stdin)\n"
        "env = {k: v for k, v in os.environ.items() if k.startswith('WATCHD_')}\n"
        f"open({str(seen)!r}, 'w').write(json.dumps({{'handoff': h, 'env': env}}))\n"
        "print('fixed it')\n"
    )
    outcome = await runner(PY, "-c", script).deliver(handoff())
    assert isinstance(outcome, Delivered) and outcome.state == "done"
    assert "fixed it" in outcome.detail
    got = json.loads(seen.read_text())
    assert got["handoff"]["id"] == "h_abc123" and got["handoff"]["evidence"][0]["data"] == {"pct": 93}
    assert got["handoff"]["reason"] == "disk over 90%"
    assert got["env"] == {
        "WATCHD_HANDOFF_ID": "h_abc123",
        "WATCHD_WATCH": "disk-full",
        "WATCHD_TARGET": "agent.fixer",
        "WATCHD_ATTEMPT": "3",
    }


async def test_reject_exit_code_is_dead_with_the_agents_words() -> None:
    outcome = await runner("sh", "-c", "echo 'not my job: no disk here' >&2; exit 75").deliver(handoff())
    assert outcome == Dead("rejected by agent: not my job: no disk here")


async def test_custom_reject_code() -> None:
    r = CommandRunner(CommandAgent(command=["sh", "-c", "exit 9"], reject_exit_code=9), name="agent.x")
    outcome = await r.deliver(handoff())
    assert isinstance(outcome, Dead) and outcome.detail.startswith("rejected by agent")


async def test_other_failures_retry_with_the_code_and_the_output_tail() -> None:
    outcome = await runner("sh", "-c", "echo out; echo boom >&2; exit 3").deliver(handoff())
    assert isinstance(outcome, Retry)
    assert outcome.detail == "exit 3: out\nboom"


async def test_only_the_last_4kb_of_output_are_kept() -> None:
    script = "import sys; sys.stdout.write('A' * 50000 + 'THE-END'); sys.exit(1)"
    outcome = await runner(PY, "-c", script).deliver(handoff())
    assert isinstance(outcome, Retry)
    assert outcome.detail.endswith("THE-END") and "…A" in outcome.detail
    assert len(outcome.detail) <= TAIL_BYTES + 20


async def test_a_program_that_ignores_stdin_is_fine_even_with_a_large_handoff() -> None:
    big = handoff(evidence=[{"id": str(i), "data": {"x": "y" * 1000}} for i in range(300)])  # ~300 KB
    outcome = await runner("true").deliver(big)
    assert isinstance(outcome, Delivered) and outcome.state == "done"


async def test_command_not_found_is_dead_with_a_hint() -> None:
    outcome = await runner("/nonexistent/watchd-agent-xyz").deliver(handoff())
    assert isinstance(outcome, Dead)
    assert "command not found: /nonexistent/watchd-agent-xyz" in outcome.detail and "PATH" in outcome.detail


async def test_not_executable_is_dead(tmp_path: Path) -> None:
    script = tmp_path / "agent.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    outcome = await runner(str(script)).deliver(handoff())
    assert isinstance(outcome, Dead) and "not executable" in outcome.detail


async def test_relative_command_resolves_from_the_config_dir(tmp_path: Path) -> None:
    script = tmp_path / "bin" / "agent.sh"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\necho from-config-dir\n")
    script.chmod(0o755)
    r = CommandRunner(CommandAgent(command=["bin/agent.sh"]), name="agent.x", base_dir=tmp_path)
    outcome = await r.deliver(handoff())
    assert isinstance(outcome, Delivered) and "from-config-dir" in outcome.detail


async def test_killed_by_a_signal_is_retried() -> None:
    outcome = await runner("sh", "-c", "kill -9 $$").deliver(handoff())
    assert isinstance(outcome, Retry) and "SIGKILL" in outcome.detail


def _read_pids(path: Path) -> list[int]:
    return [int(p) for p in path.read_text().split()] if path.exists() else []


async def test_timeout_kills_the_whole_process_group_including_a_grandchild(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # The program starts a grandchild in the background and both hang; both print first.
    script = f"echo started; sleep 60 & echo $! > {pids}; echo $$ >> {pids}; wait"
    started = time.monotonic()
    outcome = await runner("sh", "-c", script, timeout="700ms").deliver(handoff())
    assert isinstance(outcome, Retry)
    assert outcome.detail == "timed out after 700ms: started"
    assert time.monotonic() - started < 4  # SIGTERM was enough: no wait for the SIGKILL grace
    grandchild, child = _read_pids(pids)
    wait_until(lambda: pid_gone(grandchild) and pid_gone(child), 3, "the agent's process group to be gone")


async def test_a_group_that_ignores_sigterm_gets_sigkill_after_the_grace(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # SIG_IGN is inherited across fork and exec: the grandchild ignores SIGTERM as well.
    script = f"trap '' TERM; sleep 60 & echo $! > {pids}; wait; wait"
    started = time.monotonic()
    outcome = await runner("sh", "-c", script, timeout="300ms", kill_grace_s=0.5).deliver(handoff())
    elapsed = time.monotonic() - started
    assert isinstance(outcome, Retry) and outcome.detail.startswith("timed out after 300ms")
    assert 0.7 < elapsed < 4
    (grandchild,) = _read_pids(pids)
    wait_until(lambda: pid_gone(grandchild), 3, "the grandchild to be killed")


async def test_a_cancelled_delivery_stops_the_group_watchd_stopping(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    task = asyncio.create_task(runner("sh", "-c", f"sleep 60 & echo $! > {pids}; wait").deliver(handoff()))
    await asyncio.to_thread(wait_until, lambda: _read_pids(pids), 5, "the agent to start")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (grandchild,) = _read_pids(pids)
    wait_until(lambda: pid_gone(grandchild), 3, "the agent's grandchild to be stopped")


async def test_a_leftover_child_holding_the_output_does_not_hold_up_the_outcome(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    started = time.monotonic()
    outcome = await runner("sh", "-c", f"sleep 30 & echo $! > {pids}; echo done-here").deliver(handoff())
    assert isinstance(outcome, Delivered) and "done-here" in outcome.detail
    assert time.monotonic() - started < 3
    for pid in _read_pids(pids):
        os.kill(pid, 9)


def test_build_targets_wires_command_agents_and_dead_letters_unusable_ones(tmp_path: Path) -> None:
    cfg = tmp_path / "watchd.toml"
    cfg.write_text(
        'state_dir = "state"\n'
        '[agent.fixer]\ntype = "command"\ncommand = ["my-agent", "--stdin"]\ntimeout = "2m"\n'
        '[agent.triage]\ntype = "anthropic"\nmodel = "claude-haiku-4-5"\n'
        '[agent.remote]\ntype = "nats"\n'
    )
    targets = build_targets(load(cfg), http=HttpClient())  # no notifier sends: nothing to close
    fixer = targets["agent.fixer"]
    assert isinstance(fixer, CommandRunner) and fixer.timeout_s == 120
    triage = targets["agent.triage"]
    assert isinstance(triage, Misconfigured) and triage.reason == "agent.triage: no state store to keep its runs in"
    remote = targets["agent.remote"]  # a nats agent without the daemon's connection (see test_nats_agent.py)
    assert isinstance(remote, Misconfigured) and remote.reason == "agent.remote: no NATS connection to hand off on"
    assert "notify.console" in targets


def test_empty_command_is_a_config_error(tmp_path: Path) -> None:
    from watchd.errors import ConfigError

    cfg = tmp_path / "watchd.toml"
    cfg.write_text('[agent.fixer]\ntype = "command"\ncommand = []\n')
    with pytest.raises(ConfigError) as info:
        load(cfg)
    assert "watchd.toml:3:" in info.value.problems[0] and "`command` needs" in info.value.problems[0]
