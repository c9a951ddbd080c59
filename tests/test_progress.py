"""Progress bars for long commands: on a terminal (a real pseudo-terminal) `backup`, `restore` and
`dlq replay` of many show one, on stderr; on a pipe and with --json nothing but the result."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
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
