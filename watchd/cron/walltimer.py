"""Sleeping until a wall-clock instant, which asyncio alone cannot do across a laptop's suspend.

asyncio's timers follow the monotonic clock, which stops while the machine is suspended, so a
sleep of 8 hours started before a suspend makes every tick as late as the suspend was long. On
Linux a `timerfd` on CLOCK_REALTIME with an absolute expiry fires at the wall-clock instant — on
resume if it passed during the suspend — and, with TFD_TIMER_CANCEL_ON_SET, when someone sets the
clock: no polling, no wake-ups while idle. Elsewhere (or if timerfd fails) the sleep is cut into
MAX_SLEEP_S chunks, so a jump of the wall clock is noticed within that.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("watchd.scheduler")

MAX_SLEEP_S = 60.0  # only without timerfd: how stale a wall-clock jump may go unnoticed


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_CLOCK_REALTIME, _TFD_CLOEXEC, _TFD_NONBLOCK = 0, 0o2000000, 0o4000
_TFD_TIMER_ABSTIME, _TFD_TIMER_CANCEL_ON_SET = 1, 2


class WallTimer:
    """Sleep until a wall-clock instant, an `asyncio.Event`, or stop — whichever comes first."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._fd: int | None = None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            self._settime = libc.timerfd_settime
            fd = libc.timerfd_create(_CLOCK_REALTIME, _TFD_CLOEXEC | _TFD_NONBLOCK)
            self._fd = fd if fd >= 0 else None
        except (OSError, AttributeError):  # not Linux: chunked sleeps
            self._fd = None

    @property
    def exact(self) -> bool:
        return self._fd is not None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    async def sleep_until(self, at: float | None, *events: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(e.wait()) for e in events]
        fired: asyncio.Future[None] = loop.create_future()

        def expired() -> None:
            if not fired.done():
                fired.set_result(None)

        timeout: float | None = None
        armed = at is not None and self._fd is not None and self._arm(at)
        if armed:
            assert self._fd is not None
            loop.add_reader(self._fd, expired)
        elif at is not None:
            timeout = min(MAX_SLEEP_S, max(0.0, at - self.clock()))
        try:
            await asyncio.wait([*waiters, fired], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
            if armed and self._fd is not None:
                loop.remove_reader(self._fd)
                with contextlib.suppress(OSError):  # ECANCELED: the clock was set; EAGAIN: not fired
                    os.read(self._fd, 8)

    def _arm(self, at: float) -> bool:
        assert self._fd is not None
        spec = _Itimerspec()
        at = max(at, 1e-3)  # an all-zero it_value would disarm the timer instead
        spec.it_value.tv_sec, spec.it_value.tv_nsec = int(at), int((at - int(at)) * 1e9)
        flags = _TFD_TIMER_ABSTIME | _TFD_TIMER_CANCEL_ON_SET
        if self._settime(self._fd, flags, ctypes.byref(spec), None) == 0:
            return True
        log.warning("timerfd_settime failed (%s): sleeping in chunks", errno.errorcode.get(ctypes.get_errno(), "?"))
        self.close()
        return False
