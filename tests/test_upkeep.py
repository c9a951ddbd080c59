"""The upkeep helper: loops that sleep, back off on failure and log at a rate limit; tasks that are
started again when they fail; the counters /metrics shows."""

from __future__ import annotations

import asyncio
import logging

import pytest
from support.waiting import until

from watchd.upkeep import Backoff, LogLimiter, Upkeep


class Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_up_to_the_cap_with_jitter_and_resets() -> None:
    b = Backoff(base_s=1.0, cap_s=8.0)
    delays = [b.next() for _ in range(6)]
    ceilings = [1, 2, 4, 8, 8, 8]
    for d, c in zip(delays, ceilings, strict=True):
        assert c / 2 <= d <= c
    b.reset()
    assert b.next() <= 1.0


def test_log_limiter_writes_once_per_window_and_counts_what_it_held(caplog: pytest.LogCaptureFixture) -> None:
    ticks = Ticks()
    limiter = LogLimiter(logging.getLogger("watchd.test"), every_s=60, monotonic=ticks)
    with caplog.at_level(logging.INFO, logger="watchd.test"):
        assert limiter.log(logging.ERROR, "k", "boom %d", 1)
        ticks.now = 10
        assert not limiter.log(logging.ERROR, "k", "boom %d", 2)
        assert not limiter.log(logging.ERROR, "k", "boom %d", 3)
        assert limiter.log(logging.ERROR, "other", "other key")  # keys are limited apart
        ticks.now = 61
        assert limiter.log(logging.ERROR, "k", "boom %d", 4)
        limiter.forget("k")
        ticks.now = 62
        assert limiter.log(logging.ERROR, "k", "boom %d", 5)  # a failure that ended is reported at once
    assert [r.getMessage() for r in caplog.records] == [
        "boom 1",
        "other key",
        "boom 4 (and 2 more times since the last report)",
        "boom 5",
    ]


async def test_every_sleeps_the_delay_the_step_returns_and_stops() -> None:
    stop = asyncio.Event()
    upkeep = Upkeep(stop)
    calls: list[float] = []
    loop = asyncio.get_running_loop()

    async def step() -> float | None:
        calls.append(loop.time())
        if len(calls) == 3:
            stop.set()
        return 0.05 if len(calls) == 1 else None  # then the interval

    await asyncio.wait_for(upkeep.every("tick", step, interval_s=0.1), 5)
    assert len(calls) == 3
    assert calls[1] - calls[0] >= 0.045
    assert calls[2] - calls[1] >= 0.095
    assert upkeep.stats["tick"].runs == 3


async def test_a_failing_step_is_retried_with_backoff_counted_and_logged_at_a_rate_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stop = asyncio.Event()
    upkeep = Upkeep(stop, backoff_cap_s=0.01, log_every_s=3600)
    n = 0

    async def step() -> float | None:
        nonlocal n
        n += 1
        if n <= 4:
            raise OSError(24, "Too many open files")
        if n == 6:
            stop.set()
        return 0.0

    with caplog.at_level(logging.INFO, logger="watchd.upkeep"):
        await asyncio.wait_for(upkeep.every("retention", step, interval_s=3600), 5)
    st = upkeep.stats["retention"]
    assert (st.failures, st.runs, st.failing) == (4, 2, False)
    assert st.last_error == "OSError: [Errno 24] Too many open files"
    lines = [r.getMessage() for r in caplog.records]
    # four failures, one line (with its traceback), then the recovery
    assert len([ln for ln in lines if "retention failed" in ln]) == 1
    assert caplog.records[0].exc_info is not None
    assert lines[-1] == "retention recovered"


async def test_wake_cuts_the_sleep_short_and_a_wake_during_the_step_is_not_lost() -> None:
    stop, wake = asyncio.Event(), asyncio.Event()
    upkeep = Upkeep(stop)
    runs = 0

    async def step() -> float | None:
        nonlocal runs
        runs += 1
        if runs == 1:
            wake.set()  # as a commit does while the dispatcher is busy
        return None

    task = asyncio.create_task(upkeep.every("dispatcher", step, interval_s=3600, wake=wake))
    await until(lambda: runs >= 2, timeout_s=5, what="the wake during the first step to cause a second")
    await asyncio.sleep(0.05)
    assert runs == 2  # then it sleeps its hour
    wake.set()
    await until(lambda: runs >= 3, timeout_s=5, what="a wake to cut the sleep short")
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_a_task_that_raises_is_restarted_and_counted() -> None:
    stop = asyncio.Event()
    upkeep = Upkeep(stop, backoff_cap_s=0.01)
    starts = 0

    async def flaky() -> None:
        nonlocal starts
        starts += 1
        if starts <= 3:
            raise RuntimeError("lost the connection")
        await stop.wait()

    async def fine() -> None:
        await stop.wait()

    upkeep.spawn("engine", flaky, core=True)
    upkeep.spawn("reload", fine)
    await until(lambda: starts == 4, timeout_s=5, what="three restarts")
    st = upkeep.stats["engine"]
    assert (st.failures, st.restarts, st.last_error) == (3, 3, "RuntimeError: lost the connection")
    assert upkeep.core_down() == []  # running again
    assert upkeep.stats["reload"].failures == 0
    stop.set()
    await asyncio.wait_for(upkeep.close(), 5)


async def test_a_failed_core_task_makes_the_daemon_unhealthy_until_it_runs_again() -> None:
    stop = asyncio.Event()
    upkeep = Upkeep(stop, backoff_cap_s=30)

    async def broken() -> None:
        raise RuntimeError("consumer deleted")

    async def side() -> None:
        raise RuntimeError("poll failed")

    upkeep.spawn("engine", broken, core=True)
    upkeep.spawn("agent-batches", side)
    await until(lambda: upkeep.stats["agent-batches"].failing, timeout_s=5, what="the side task to fail")
    await until(lambda: upkeep.core_down() == ["engine"], timeout_s=5, what="the core task to be down")
    assert upkeep.stats["engine"].failing and upkeep.stats["engine"].crashes == 1
    stop.set()
    await asyncio.wait_for(upkeep.close(), 5)


async def test_a_task_that_returns_while_watchd_runs_is_started_again() -> None:
    stop = asyncio.Event()
    upkeep = Upkeep(stop, backoff_cap_s=0.01)
    starts = 0

    async def returns() -> None:
        nonlocal starts
        starts += 1

    upkeep.spawn("follower", returns)
    await until(lambda: starts >= 2, timeout_s=5, what="the task to be started again")
    assert upkeep.stats["follower"].last_error == "RuntimeError: the task ended while watchd runs"
    stop.set()
    await asyncio.wait_for(upkeep.close(), 5)
