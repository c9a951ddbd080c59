"""The `command` agent: run a program with the handoff JSON on stdin, and read its exit code.

0 is done; `reject_exit_code` (75, EX_TEMPFAIL, by default) means the agent looked and said no, so
the handoff is dead-lettered with the agent's own words; anything else is a failure to retry. The
program runs without a shell, in its own session (so its own process group): on a timeout, or when
watchd stops mid-run, the whole group is stopped — SIGTERM, then SIGKILL — so a grandchild cannot
outlive it. Only the last few KB of its combined stdout and stderr are kept, whatever it prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from pathlib import Path

import msgspec

from watchd.config import CommandAgent
from watchd.dispatch import Dead, Delivered, Outcome, Retry
from watchd.model import Handoff
from watchd.schedule import format_duration, parse_duration

TAIL_BYTES = 4096
KILL_GRACE_S = 5.0  # SIGTERM, then this long for the group to go, then SIGKILL
EOF_GRACE_S = 0.5  # after the program exits, how long a leftover child may keep its output open


class _Tail(asyncio.Protocol):
    """Collects the last TAIL_BYTES of a pipe, and notes its end."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.cut = False
        self.eof: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > TAIL_BYTES:
            del self.buf[: len(self.buf) - TAIL_BYTES]
            self.cut = True

    def eof_received(self) -> bool:
        self._done()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._done()

    def _done(self) -> None:
        if not self.eof.done():
            self.eof.set_result(None)

    def text(self) -> str:
        body = self.buf.decode("utf-8", "replace").strip()
        return ("…" + body) if self.cut and body else body


def _with_tail(head: str, tail: str) -> str:
    return f"{head}: {tail}" if tail else f"{head} (no output)"


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _live_member(pgid)


def _live_member(pgid: int) -> bool:
    """Whether the group has a member that is not a zombie. A killed grandchild is re-parented and
    stays a zombie until its new parent (PID 1, a subreaper) reaps it, and `killpg(pgid, 0)` still
    counts it; on Linux /proc tells the two apart. Elsewhere, assume alive (SIGKILL follows)."""
    try:
        entries = [e for e in os.scandir("/proc") if e.name.isdigit()]
    except OSError:
        return True
    for entry in entries:
        try:
            with open(os.path.join(entry.path, "stat")) as f:
                fields = f.read().rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, pgrp, …
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


class CommandRunner:
    def __init__(self, cfg: CommandAgent, *, name: str, base_dir: Path | None = None,
                 kill_grace_s: float = KILL_GRACE_S) -> None:  # fmt: skip
        self.cfg = cfg
        self.name = name
        self.timeout_s = parse_duration(cfg.timeout)
        self.kill_grace_s = kill_grace_s
        argv = list(cfg.command)
        # Relative paths resolve from the config file (SPEC 3); a bare name is looked up on PATH.
        if argv and base_dir is not None and "/" in argv[0] and not os.path.isabs(argv[0]):
            argv[0] = str(base_dir / argv[0])
        self.argv = argv

    def __repr__(self) -> str:
        return f"CommandRunner({self.name!r})"

    def _env(self, handoff: Handoff) -> dict[str, str]:
        return {
            **os.environ,
            "WATCHD_HANDOFF_ID": handoff.id,
            "WATCHD_WATCH": handoff.watch,
            "WATCHD_TARGET": handoff.target,
            "WATCHD_ATTEMPT": str(handoff.attempt),
        }

    async def deliver(self, handoff: Handoff) -> Outcome:
        if not self.argv:
            return Dead(f"{self.name}: `command` is empty")
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.PIPE, stdout=write_fd, stderr=write_fd,
                env=self._env(handoff), start_new_session=True,
            )  # fmt: skip
        except FileNotFoundError:
            os.close(read_fd)
            return Dead(
                f"{self.name}: command not found: {self.argv[0]} (check `command` in [{self.name}]: "
                "a program on watchd's PATH, or a path relative to the config file)"
            )
        except PermissionError:
            os.close(read_fd)
            return Dead(f"{self.name}: {self.argv[0]} is not executable (chmod +x it, or run it via its interpreter)")
        except OSError as exc:
            os.close(read_fd)
            return Retry(f"{self.name}: cannot start {self.argv[0]}: {exc.strerror}")
        finally:
            os.close(write_fd)  # the child has its copy; ours would keep the pipe open forever
        transport, tail = await loop.connect_read_pipe(_Tail, os.fdopen(read_fd, "rb", buffering=0))
        feeder = asyncio.create_task(self._feed(proc, msgspec.json.encode(handoff) + b"\n"))
        try:
            try:
                async with asyncio.timeout(self.timeout_s):
                    code = await proc.wait()
            except TimeoutError:
                await self._stop_group(proc)
                return Retry(_with_tail(f"timed out after {format_duration(self.timeout_s)}", tail.text()))
            # A child left running may hold the output open: read what is there, briefly.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(tail.eof), EOF_GRACE_S)
            return self._outcome(code, tail.text())
        except asyncio.CancelledError:  # watchd is stopping: the handoff is retried on start
            await self._stop_group(proc, grace_s=min(self.kill_grace_s, 1.0))
            raise
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await feeder
            transport.close()

    def _outcome(self, code: int, tail: str) -> Outcome:
        if code == 0:
            return Delivered(_with_tail("exit 0", tail), state="done")
        if code == self.cfg.reject_exit_code:
            return Dead(f"rejected by agent: {tail or f'exit {code}, no output'}")
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return Retry(_with_tail(f"killed by {name}", tail))
        return Retry(_with_tail(f"exit {code}", tail))

    @staticmethod
    async def _feed(proc: asyncio.subprocess.Process, payload: bytes) -> None:
        """The handoff on stdin, then EOF; a program that does not read it is not an error."""
        assert proc.stdin is not None
        try:
            proc.stdin.write(payload)
            await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            proc.stdin.close()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await proc.stdin.wait_closed()

    async def _stop_group(self, proc: asyncio.subprocess.Process, grace_s: float | None = None) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left after the grace period."""
        pgid = proc.pid  # start_new_session: the program leads its own group
        grace = self.kill_grace_s if grace_s is None else grace_s
        _signal_group(pgid, signal.SIGTERM)
        deadline = asyncio.get_running_loop().time() + grace
        while asyncio.get_running_loop().time() < deadline:
            if proc.returncode is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 0.05)  # reaps the leader as soon as it exits
            elif not _group_alive(pgid):
                return
            else:
                await asyncio.sleep(0.05)
        _signal_group(pgid, signal.SIGKILL)
        await proc.wait()

    async def probe(self) -> tuple[bool, str]:
        """Whether the program can be found, without running it (the canary may run `probe`)."""
        if not self.argv:
            return False, "`command` is empty"
        found = shutil.which(self.argv[0])
        return (True, f"{self.argv[0]} found") if found else (False, f"command not found: {self.argv[0]}")
