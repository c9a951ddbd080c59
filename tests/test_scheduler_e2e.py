"""The scheduler inside the real daemon: a run cut off by kill -9 is failed at the restart, its tick
never runs again, and the outcome reaches the event stream."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from support.processes import DaemonProc
from support.waiting import wait_until


def test_a_restart_in_the_middle_of_a_run(process_factory: Callable[..., DaemonProc], tmp_path: Path) -> None:
    pids = tmp_path / "run.pids"
    d = process_factory().start()
    # The schedule comes with a reload once the daemon is up, due shortly after however slow the start.
    at = datetime.fromtimestamp(time.time() + 1.5, UTC).isoformat(timespec="milliseconds")
    d.write_config(f'[schedule.once]\nat = "{at}"\nrun = ["sh", "-c", "echo $$ >> {pids}; exec sleep 60"]\n')
    d.signal(signal.SIGHUP)
    try:
        wait_until(lambda: pids.exists() and pids.read_text().strip(), 30, "the run to start")
        ((key, state, tick_at, started_at),) = d.query("SELECT key, state, tick_at, started_at FROM schedule_ticks")
        assert state == "started" and 0 <= started_at - tick_at < 1.0  # woke for the tick, on time
        # The started event is published as the run begins; the kill lands after it, mid-run.
        started = "SELECT 1 FROM subjects WHERE subject = 'watchd.schedule.once.started'"
        wait_until(lambda: d.query(started), 30, "watchd.schedule.once.started on the stream")
        d.kill9()
        d.start()
        sql = "SELECT key, state, reason, summary FROM schedule_ticks WHERE state != 'started'"
        rows = wait_until(lambda: d.query(sql), 30, "the interrupted run to be failed")
        assert rows == [(key, "failed", "interrupted", "interrupted by restart")]
        # The failure is an event like any other (the engine records every subject it consumes).
        wait_until(
            lambda: d.query("SELECT 1 FROM subjects WHERE subject = 'watchd.schedule.once.failed'"),
            10,
            "watchd.schedule.once.failed on the stream",
        )
        assert d.query(started)
        time.sleep(0.5)
        assert len(pids.read_text().split()) == 1  # the tick was not run again
        assert d.term() == 0
        assert "Traceback" not in d.stderr()
    finally:
        for pid in pids.read_text().split() if pids.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid), signal.SIGKILL)  # the run leads its own process group
