"""How far a long job on files has got, in bytes, for a progress bar on a terminal: `watchd
backup` packs then proves its archive, `watchd restore` proves one. Reading a file through
`counted` moves the meter; nothing is reported when no one watches (the scheduled job)."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import IO, Any

Progress = Callable[[int, int], None]  # (done, total) of a long job, as cli.common.progress_bar's update takes it


class Meter:
    """Bytes done over `phases` passes of about the same size (packing, then proving): each phase
    says its size when it starts, and the phases still to come are taken to be as large, so the
    total is known from the first and does not jump back when the next begins."""

    def __init__(self, progress: Progress | None = None, phases: int = 1) -> None:
        self.progress = progress
        self.phases = phases
        self.started = 0
        self.done = 0
        self.total = 0

    def phase(self, size: int) -> None:
        left = max(self.phases - self.started, 1)
        self.started += 1
        self.total = self.done + size * left
        self.add(0)

    def add(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.done, max(self.total, self.done))

    def counted(self, f: IO[bytes]) -> IO[bytes]:
        """`f`, whose reads move the meter (tarfile reads the members it packs through it)."""
        return io.BufferedReader(_Counted(f, self))


class _Counted(io.RawIOBase):
    def __init__(self, f: IO[bytes], meter: Meter) -> None:
        self.f = f
        self.meter = meter

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self.f.read(len(buffer))
        buffer[: len(chunk)] = chunk
        self.meter.add(len(chunk))
        return len(chunk)
