"""The schedule runner on a real state file with a virtual clock, its events recorded (`Harness`), and
schedule config pieces the scheduler tests share."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path
from typing import Any

from support.clocks import ManualClock, utc
from watchd import config
from watchd.cron.runner import Scheduler
from watchd.store import Store, db_path

ts = utc  # naive ISO date-times in these tests are UTC

OFF = "[schedule.heartbeat]\nenabled = false\n[schedule.backup]\nenabled = false\n[schedule.canary]\nenabled = false\n"


class Harness:
    """A Scheduler on a real state file, with a virtual clock and recorded events."""

    def __init__(self, root: Path, schedules: str, clock: ManualClock, *, extra: str = "") -> None:
        root.mkdir(parents=True, exist_ok=True)
        path = root / "config.toml"
        path.write_text(
            f'state_dir = "state"\ntimezone = "UTC"\n{extra}\n[notify.console]\ntype = "console"\n{OFF}{schedules}'
        )
        self.loaded = config.load(path)
        self.clock = clock
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.store = Store(db_path(self.loaded.state_dir))
        self.sched = Scheduler(self.store, self.loaded, emit=self.emit, clock=clock)

    async def emit(self, subject: str, data: dict[str, Any]) -> None:
        self.events.append((subject, data))

    def subjects(self) -> list[str]:
        return [s for s, _ in self.events]

    def of(self, suffix: str) -> list[dict[str, Any]]:
        return [d for s, d in self.events if s.endswith(suffix)]

    def rows(self, name: str) -> list[dict[str, Any]]:
        conn = sqlite3.connect(db_path(self.loaded.state_dir))
        conn.row_factory = sqlite3.Row
        try:
            sql = "SELECT * FROM schedule_ticks WHERE schedule = ? ORDER BY tick_at"
            return [dict(r) for r in conn.execute(sql, (name,))]
        finally:
            conn.close()

    async def step(self, at: str | None = None) -> None:
        if at:
            self.clock.set(at)
        await self.sched.step()
        await self.sched.idle()

    def restart(self) -> Harness:
        """A new scheduler on the same state file (the old one's store is closed): a daemon restart."""
        self.store.close()
        self.store = Store(db_path(self.loaded.state_dir))
        self.sched = Scheduler(self.store, self.loaded, emit=self.emit, clock=self.clock)
        return self

    def twin(self) -> Harness:
        """A second process on the same config and state file, sharing the clock."""
        other = Harness.__new__(Harness)
        other.loaded, other.clock, other.events = self.loaded, self.clock, []
        other.store = Store(db_path(self.loaded.state_dir))
        other.sched = Scheduler(other.store, self.loaded, emit=other.emit, clock=self.clock)
        return other

    def close(self) -> None:
        self.store.close()


ECHO = f'run = ["{sys.executable}", "-c", "print(\'ran\')"]'
