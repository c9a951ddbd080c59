"""Running a program the way watchd runs every program: without a shell, in its own process group,
with a timeout that takes the whole group down, keeping only the tail of its output.

Used by `command` agents and by schedules with `run = [...]`. The program runs in its own session
(so its own process group): on a timeout, or when watchd stops mid-run, the whole group is stopped —
SIGTERM, then SIGKILL — so a grandchild cannot outlive it. Only the last few KB of its combined
stdout and stderr are kept, whatever it prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

TAIL_BYTES = 4096
KILL_GRACE_S = 5.0  # SIGTERM, then this long for the group to go, then SIGKILL
EOF_GRACE_S = 0.5  # after the program exits, how long a leftover child may keep its output open


@dataclass(frozen=True)
class Finished:
    code: int | None  # the exit code (negative: killed by that signal); None when it timed out
    tail: str  # the last TAIL_BYTES of its output, "…" in front when cut

    @property
    def timed_out(self) -> bool:
        return self.code is None


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


def signal_name(code: int) -> str:
    """ "SIGKILL" for an exit code of -9."""
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


async def run_in_group(
    argv: Sequence[str],
    *,
    stdin: bytes | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float,
    kill_grace_s: float = KILL_GRACE_S,
) -> Finished:
    """Run argv to its end or its timeout. Starting it may raise OSError (FileNotFoundError,
    PermissionError…) for the caller to explain; a cancelled run stops the group first."""
    loop = asyncio.get_running_loop()
    read_fd, write_fd = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)  # the child has its copy; ours would keep the pipe open forever
    transport, tail = await loop.connect_read_pipe(_Tail, os.fdopen(read_fd, "rb", buffering=0))
    feeder = asyncio.create_task(_feed(proc, stdin)) if stdin is not None else None
    try:
        try:
            async with asyncio.timeout(timeout_s):
                code = await proc.wait()
        except TimeoutError:
            await stop_group(proc, kill_grace_s)
            return Finished(None, tail.text())
        # A child left running may hold the output open: read what is there, briefly.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(tail.eof), EOF_GRACE_S)
        return Finished(code, tail.text())
    except asyncio.CancelledError:  # watchd is stopping (or the run was replaced)
        await stop_group(proc, min(kill_grace_s, 1.0))
        raise
    finally:
        if feeder is not None:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await feeder
        transport.close()


async def _feed(proc: asyncio.subprocess.Process, payload: bytes) -> None:
    """The payload on stdin, then EOF; a program that does not read it is not an error."""
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


async def stop_group(proc: asyncio.subprocess.Process, grace_s: float) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after the grace period."""
    pgid = proc.pid  # start_new_session: the program leads its own group
    _signal_group(pgid, signal.SIGTERM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    while loop.time() < deadline:
        if proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 0.05)  # reaps the leader as soon as it exits
        elif not _group_alive(pgid):
            return
        else:
            await asyncio.sleep(0.05)
    _signal_group(pgid, signal.SIGKILL)
    await proc.wait()


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
