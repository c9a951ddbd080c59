"""The runner reads the stored state of every due schedule at once (`schedules.refresh`): for each,
the last tick handled by its own ticks (not a manual run's) and the last completion, whichever is
later than what the runner holds; in chunks of names, in the order asked, a name asked twice too."""

from __future__ import annotations

from pathlib import Path

from watchd.cron.ticks import State
from watchd.store import Store, db_path, schedules
from watchd.store.schedules import TickClaim


def test_refresh_reads_each_schedules_last_tick_and_completion_across_chunks(tmp_path: Path) -> None:
    store = Store(db_path(tmp_path))
    conn = store.conn
    try:
        n = 1_200  # more than one statement's chunk of names
        names = [f"s{i}" for i in range(n)]
        schedules.sync_definitions(conn, {name: "d" for name in names}, 100.0)
        rows = [TickClaim(f"k{i}", f"s{i}", 1, 1000.0 + i, "started", None, 1000.0, None, None) for i in range(0, n, 3)]
        manual = ("started", None, 5000.0, None, None, "manual")
        rows += [TickClaim(f"m{i}", f"s{i}", 1, 5000.0, *manual) for i in range(n)]
        rows.append(TickClaim("k0b", "s0", 1, 1600.0, "skipped", "missed", 1600.0, None, None))
        schedules.claim(conn, rows)
        for i in range(0, n, 2):
            schedules.finish(conn, f"m{i}", f"s{i}", True, 2000.0 + i, None, "ok", b"{}")
        held = State(since=100.0, last_tick=1500.0, completed_at=2300.0)
        asked = [*names, "s3", "unknown"]
        got = schedules.refresh(conn, [(name, held) for name in asked])
    finally:
        store.close()

    def expected(name: str) -> State:
        i = int(name[1:]) if name != "unknown" else -1
        stored_tick = 1600.0 if i == 0 else 1000.0 + i if i >= 0 and i % 3 == 0 else None  # manual rows: not ticks
        stored_done = 2000.0 + i if i >= 0 and i % 2 == 0 else None
        return State(
            100.0,
            max(1500.0, stored_tick or 0.0),
            max(2300.0, stored_done or 0.0),
        )

    assert got == [expected(name) for name in asked]
    assert got[3] == State(100.0, 1500.0, 2300.0) and got[600] == State(100.0, 1600.0, 2600.0)
