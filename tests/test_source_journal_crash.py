"""kill -9 of `watchd run` while its journal source publishes a fast journal (the recorded-output
stand-in producing entries at a fixed rate): after a restart every entry is in the stream, once."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

from support.journal import StandinJournal
from support.processes import DaemonProc
from support.sources import stored_ids
from support.waiting import wait_until

TOTAL = 10000  # 5 s of journal: the kill lands mid-stream even on a busy machine
RATE = 2000.0


def test_kill_9_loses_no_entry_and_stores_none_twice(
    process_factory: Callable[..., DaemonProc], tmp_path: Path, subreaper: None
) -> None:
    journal = StandinJournal(tmp_path / "journal-root")
    source = f'[source.units]\ntype = "journal"\ndirectory = "{journal.directory}"\n'
    d = process_factory(extra_config=source, env=journal.env)
    # Resume from before the first entry (a cursor the journal no longer has: it starts at its head).
    positions = d.state_dir / "sources"
    positions.mkdir(parents=True, exist_ok=True)
    (positions / "units.json").write_text(json.dumps({"cursor": "s=standin;i=0;b=gone"}))
    journal.generate(RATE, start=time.time(), total=TOTAL)
    d.start()

    def ids() -> list[str]:
        return asyncio.run(stored_ids(d.nats_url, "journal.>"))

    def saved() -> int:  # the entry the saved cursor names: read from the file, cheaper than the stream
        try:
            return int(json.loads((positions / "units.json").read_text())["cursor"].split(";")[1][2:], 16)
        except (ValueError, KeyError, IndexError):  # not written yet, or being replaced
            return 0

    wait_until(lambda: saved() > 1000, 60, "a thousand entries stored")
    d.kill9()
    assert saved() < TOTAL - 1, "the kill came after the last entry"
    d.start()
    found = wait_until(lambda: (x := ids()) and len(x) >= TOTAL and x, 90, "every entry stored")
    time.sleep(0.5)  # anything sent twice would land now
    found = ids()
    expected = [f"s=standin;i={i:x}" for i in range(TOTAL)]
    assert [i.split(";b=")[0] for i in found] == expected
