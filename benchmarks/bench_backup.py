"""Backup + verification time and archive size for a state with 1M decision rows.

Usage: python benchmarks/bench_backup.py [--rows N] [--dir PATH]

Builds a state through `watchd.store.Store` (decisions inserted with executemany in one
transaction, plus 1,000 handoffs with their transitions), then runs the backup job as the schedule
does, and times its parts again on their own: the SQLite snapshot, and the proof (read back,
sha256, integrity_check, counts).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from watchd import config
from watchd.engine import Decision
from watchd.jobs.backup import make_backup, verify_archive
from watchd.model import Handoff
from watchd.store import Store, db_path
from watchd.store.snapshot import snapshot

VERDICTS = ["matched", "where_false", "fired", "suppressed", "counted"]


def build_state(root: Path, rows: int) -> config.Loaded:
    (root / "watches").mkdir(parents=True)
    (root / "watches" / "w.toml").write_text(
        '[[watch]]\nid = "w0"\nkind = "match"\non = { subject = "svc.event" }\nthen = ["notify.console"]\n'
    )
    (root / "config.toml").write_text('watches = ["watches/"]\nstate_dir = "state"\ntimezone = "UTC"\n')
    loaded = config.load(root / "config.toml")
    store = Store(db_path(loaded.state_dir))
    rnd = random.Random(1)
    t0 = time.time() - 30 * 86400
    store.conn.execute("BEGIN")
    store.conn.executemany(
        "INSERT INTO decisions (at, watch, key, verdict, reason, event_id, seq) VALUES (?,?,?,?,?,?,?)",
        (
            (
                t0 + i * 2.5,
                f"w{i % 100}",
                f"host{i % 37}",
                VERDICTS[i % 5],
                f"data.level > 3 was false (level {rnd.randint(0, 9)})",
                f"01JD{i:022d}",
                i,
            )
            for i in range(rows)
        ),
    )
    store.conn.execute("COMMIT")
    handoffs = [
        Handoff(
            id=f"h_{i:08x}",
            watch=f"w{i % 100}",
            watch_version=1,
            kind="match",
            key=None,
            target="notify.console",
            trigger="watch",
            reason="matched",
            fired_at="2026-11-01T00:00:00Z",
        )
        for i in range(1000)
    ]
    decisions: list[Decision] = []
    store.commit_step(
        last_seq=rows, clock=t0, changes=([], [], set()), decisions=decisions, handoffs=handoffs, subjects={}, now=t0
    )
    store.close()
    return loaded


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dir", help="where to build the state (default: a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        loaded = build_state(root, args.rows)
        db = db_path(loaded.state_dir)
        print(
            f"state: {args.rows:,} decisions, db {db.stat().st_size / 1e6:.1f} MB "
            f"(built in {time.perf_counter() - started:.1f}s)"
        )

        result = make_backup(loaded, time.time())
        assert result.ok, result.summary
        archive = Path(result.data["path"])
        print(
            f"backup + verification (the job): {result.data['duration_s']:.2f} s, "
            f"archive {archive.stat().st_size / 1e6:.1f} MB"
        )

        started = time.perf_counter()
        snapshot(db, root / "copy.db")
        print(f"  of which the SQLite snapshot alone (backup API + counts): {time.perf_counter() - started:.2f} s")
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=root) as out:
            verify_archive(archive, Path(out))
        print(
            f"  of which the proof alone (extract + sha256 + integrity_check + counts): "
            f"{time.perf_counter() - started:.2f} s"
        )


if __name__ == "__main__":
    main()
