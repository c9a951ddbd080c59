"""The `command` agent: run a program with the handoff JSON on stdin, and read its exit code.

0 is done; `reject_exit_code` (75, EX_TEMPFAIL, by default) means the agent looked and said no, so
the handoff is dead-lettered with the agent's own words; anything else is a failure to retry. The
program runs without a shell, in its own session (so its own process group): on a timeout, or when
watchd stops mid-run, the whole group is stopped — SIGTERM, then SIGKILL — so a grandchild cannot
outlive it. Only the last few KB of its combined stdout and stderr are kept, whatever it prints.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from watchd.agents import state_file
from watchd.config import CommandAgent
from watchd.cron.proc import KILL_GRACE_S, TAIL_BYTES, run_in_group, signal_name
from watchd.cron.schedule import format_duration, parse_duration
from watchd.dispatch import Dead, Delivered, Outcome, Retry
from watchd.model import Handoff
from watchd.store import Store

__all__ = ["KILL_GRACE_S", "TAIL_BYTES", "CommandRunner"]

PROBE_TIMEOUT_S = 15.0  # the canary waits a little longer for any probe


def _with_tail(head: str, tail: str) -> str:
    return f"{head}: {tail}" if tail else f"{head} (no output)"


def _resolve(argv: list[str], base_dir: Path | None) -> list[str]:
    """Relative paths resolve from the config file (SPEC 3); a bare name is looked up on PATH."""
    argv = list(argv)
    if argv and base_dir is not None and "/" in argv[0] and not os.path.isabs(argv[0]):
        argv[0] = str(base_dir / argv[0])
    return argv


class CommandRunner:
    def __init__(
        self,
        cfg: CommandAgent,
        *,
        name: str,
        base_dir: Path | None = None,
        kill_grace_s: float = KILL_GRACE_S,
        store: Store | None = None,
        state_dir: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.state_dir = state_dir
        self.clock = clock
        self.name = name
        self.timeout_s = parse_duration(cfg.timeout)
        self.kill_grace_s = kill_grace_s
        self.argv = _resolve(cfg.command, base_dir)
        self.probe_argv = _resolve(cfg.probe or [], base_dir)

    def __repr__(self) -> str:
        return f"CommandRunner({self.name!r})"

    def _env(self, handoff: Handoff, handed: state_file.Handed | None = None) -> dict[str, str]:
        return {
            **os.environ,
            **state_file.env_of(handed),
            "WATCHD_HANDOFF_ID": handoff.id,
            "WATCHD_WATCH": handoff.watch,
            "WATCHD_TARGET": handoff.target,
            "WATCHD_ATTEMPT": str(handoff.attempt),
        }

    async def deliver(self, handoff: Handoff) -> Outcome:
        if not self.argv:
            return Dead(f"{self.name}: `command` is empty")
        handed = None
        if self.cfg.state is not None and self.store is not None and self.state_dir is not None:
            handed = await state_file.hand_over(self.store, self.state_dir, self.cfg.state, self.name, handoff)
        outcome = await self._run(handoff, handed)
        if handed is not None and self.store is not None:
            timed_out = isinstance(outcome, Retry) and outcome.detail.startswith("timed out")
            await state_file.take_back(self.store, handed, handoff, self.clock(), timed_out=timed_out)
        return outcome

    async def _run(self, handoff: Handoff, handed: state_file.Handed | None) -> Outcome:
        try:
            done = await run_in_group(
                self.argv,
                stdin=state_file.stdin_of(handoff, handed),
                env=self._env(handoff, handed),
                timeout_s=self.timeout_s,
                kill_grace_s=self.kill_grace_s,
            )
        except FileNotFoundError:
            return Dead(
                f"{self.name}: command not found: {self.argv[0]} (check `command` in [{self.name}]: "
                "a program on watchd's PATH, or a path relative to the config file)"
            )
        except PermissionError:
            return Dead(f"{self.name}: {self.argv[0]} is not executable (chmod +x it, or run it via its interpreter)")
        except OSError as exc:
            return Retry(f"{self.name}: cannot start {self.argv[0]}: {exc.strerror}")
        # (a cancelled delivery — watchd stopping — stopped the group; the handoff is retried on start)
        if done.code is None:
            return Retry(_with_tail(f"timed out after {format_duration(self.timeout_s)}", done.tail))
        return self._outcome(done.code, done.tail)

    def _outcome(self, code: int, tail: str) -> Outcome:
        if code == 0:
            return Delivered(_with_tail("exit 0", tail), state="done")
        if code == self.cfg.reject_exit_code:
            return Dead(f"rejected by agent: {tail or f'exit {code}, no output'}")
        if code < 0:
            return Retry(_with_tail(f"killed by {signal_name(code)}", tail))
        return Retry(_with_tail(f"exit {code}", tail))

    async def probe(self) -> tuple[bool, str]:
        """The agent's `probe` command when it has one (exit 0 in time: healthy; the last line of its
        output is the detail), else whether the program can be found, without running it."""
        if not self.argv:
            return False, "`command` is empty"
        if self.probe_argv:
            name = self.probe_argv[0]
            try:
                done = await run_in_group(self.probe_argv, timeout_s=PROBE_TIMEOUT_S, kill_grace_s=1.0)
            except OSError as exc:
                return False, f"cannot run probe {name}: {exc.strerror or type(exc).__name__}"
            last = done.tail.splitlines()[-1][:200] if done.tail else ""
            if done.code == 0:
                return True, _with_tail(f"probe {name}: exit 0", last)
            if done.code is None:
                return False, _with_tail(f"probe {name} timed out after {format_duration(PROBE_TIMEOUT_S)}", last)
            return False, _with_tail(f"probe {name} failed with exit {done.code}", last)
        found = shutil.which(self.argv[0])
        return (True, f"{self.argv[0]} found") if found else (False, f"command not found: {self.argv[0]}")
