"""Progress bars for long commands: on a terminal (a real pseudo-terminal) `backup`, `restore` and
`dlq replay` of many show one, on stderr; on a pipe and with --json nothing but the result."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.handoffs import make_handoff
from support.project import free_port
from support.terminal import on_terminal
from test_backup import ENV_SECRET, fill, write_config

from watchd import config
from watchd.jobs.meter import Meter
from watchd.store import Store, db_path


def test_the_meter_never_jumps_back_between_phases() -> None:
    seen: list[tuple[int, int]] = []
    meter = Meter(lambda done, total: seen.append((done, total)), phases=2)
    meter.phase(1000)  # packing: the proving after it is taken to be as large
    for _ in range(10):
        meter.add(100)
    meter.phase(1100)  # proving: a little more than guessed
    for _ in range(11):
        meter.add(100)
    totals = [t for _, t in seen]
    assert seen[0] == (0, 2000) and seen[-1] == (2100, 2100)
    assert all(done <= total for done, total in seen)
    assert totals == sorted(totals)  # the bar's end only moves out, never back in


def piped(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "WATCHD_CONFIG"} | env
    return subprocess.run(
        [sys.executable, "-m", "watchd", *args], capture_output=True, text=True, timeout=60, env=environ
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    cfg = write_config(tmp_path)
    store = Store(db_path(config.load(cfg).state_dir))
    try:
        for start in range(1, 20_000, 2_000):  # some megabytes of state: a backup takes a moment
            fill(store, start, 2_000)
    finally:
        store.close()
    return cfg


def test_backup_and_restore_show_a_progress_bar_on_a_terminal_and_none_on_a_pipe(project: Path) -> None:
    env = {"WATCHD_TEST_SLACK_URL": ENV_SECRET}
    code, seen = on_terminal("backup", "--config", str(project), env=env)
    assert code == 0, seen[-2000:]
    assert b"backing up" in seen and re.search(rb"[\d.]+/[\d.]+ MB", seen), seen[-2000:]  # bytes done, of the total
    assert b"verified" in seen

    done = piped("backup", "--config", str(project), env=env)
    assert done.returncode == 0, done.stderr
    assert "backing up" not in done.stdout + done.stderr and done.stdout.startswith("backup watchd-")
    code, seen = on_terminal("backup", "--json", "--config", str(project), env=env)
    assert code == 0 and b"backing up" not in seen  # --json: the object alone, even on a terminal
    archive = json.loads(seen.decode()[seen.decode().index("{") :])["data"]["path"]

    code, seen = on_terminal("restore", archive, "--yes", "--config", str(project), env=env)
    assert code == 0, seen[-2000:]
    assert b"verifying the backup" in seen and b"restored the database" in seen, seen[-2000:]
    assert re.search(rb"[\d.]+/[\d.]+ MB", seen)
    done = piped("restore", archive, "--yes", "--config", str(project), env=env)
    assert done.returncode == 0 and "verifying the backup" not in done.stdout + done.stderr


DEAD = 300


@pytest.fixture
def dead_letters(tmp_path: Path) -> Path:
    cfg = write_config(tmp_path, f'[http]\nlisten = "127.0.0.1:{free_port()}"\n')  # no daemon answers there
    store = Store(db_path(config.load(cfg).state_dir))
    try:
        hs = [make_handoff(id=f"h_{n:04d}", key=f"k{n}", target="agent.x") for n in range(DEAD)]
        nothing: tuple[list[Any], list[Any], set[str]] = ([], [], set())
        store.commit_step(last_seq=1, clock=1.0, changes=nothing, decisions=[], handoffs=hs, subjects={}, now=1.0)
        while claimed := store.claim_due(100.0, limit=100):
            for h in claimed:
                store.finish(h.id, "dead", 2.0, "gave up")
    finally:
        store.close()
    return cfg


def states(cfg: Path) -> dict[str, int]:
    conn = sqlite3.connect(db_path(config.load(cfg).state_dir))
    try:
        return dict(conn.execute("SELECT state, COUNT(*) FROM handoffs GROUP BY state").fetchall())
    finally:
        conn.close()


def test_replaying_many_dead_letters_shows_a_progress_bar_and_a_count(dead_letters: Path) -> None:
    env = {"WATCHD_TEST_SLACK_URL": ENV_SECRET}
    code, seen = on_terminal("dlq", "replay", "--all", "--config", str(dead_letters), env=env)
    assert code == 0, seen[-2000:]
    assert b"replaying dead letters" in seen and f"/{DEAD}".encode() in seen, seen[-2000:]
    assert f"replaying {DEAD} dead letters".encode() in seen
    assert seen.count(b"h_0") == 0  # a count, not a line per dead letter
    assert states(dead_letters) == {"retrying": DEAD}

    # on a pipe: the count alone; one that cannot be replayed is named, the others go on, exit 1
    store = Store(db_path(config.load(dead_letters).state_dir))
    try:
        for n in range(3):
            store.finish(f"h_{n:04d}", "dead", 3.0, "gave up again")
    finally:
        store.close()
    done = piped("dlq", "replay", "h_0000", "h_nope", "h_0001", "h_0002", "--config", str(dead_letters), env=env)
    assert done.returncode == 1 and "replaying dead letters" not in done.stdout + done.stderr
    assert done.stdout == "replaying 3 dead letters; 1 not replayed\n"
    assert done.stderr.startswith("not replayed: h_nope: no handoff with id 'h_nope'"), done.stderr

    done = piped("dlq", "replay", "--config", str(dead_letters), env=env)
    assert done.returncode == 1 and done.stderr.startswith("error: name the dead letters to replay")
