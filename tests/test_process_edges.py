"""What only the real `watchd run` process shows: its embedded nats-server dies with it even after
kill -9, and its log lines carry a timestamp on a terminal but not for journald."""

from __future__ import annotations

import contextlib
import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.processes import DaemonProc, pid_gone
from support.project import Project
from support.waiting import wait_until

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO watchd: watchd ready")


@pytest.mark.usefixtures("subreaper")  # so the test reaps the server at once, as systemd would
def test_the_embedded_nats_server_dies_with_the_daemon_after_kill9(process_factory: Callable[..., DaemonProc]) -> None:
    d = process_factory().start()
    nats_pid = d.nats_pid()
    assert nats_pid is not None and not pid_gone(nats_pid)
    d.kill9()
    wait_until(lambda: pid_gone(nats_pid), timeout_s=15, what="the nats-server to die with the daemon")
    # Under journald (stderr not a terminal) the lines carry no timestamp of their own.
    assert re.search(r"^INFO watchd: watchd ready", d.stderr(), re.M), d.stderr()


def _read_until(fd: int, pattern: str, timeout_s: float) -> str:
    text, deadline = "", time.monotonic() + timeout_s
    while pattern not in text and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                text += os.read(fd, 65536).decode(errors="replace")
            except OSError:  # the terminal closed: the process is gone
                break
    return text


def test_on_a_terminal_log_lines_carry_a_timestamp(tmp_path: Path) -> None:
    project = Project(tmp_path / "p")
    master, slave = os.openpty()
    env = {k: v for k, v in os.environ.items() if k != "WATCHD_CONFIG"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "watchd", "run", "--config", str(project.config_path)],
        cwd=project.root,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
    )
    os.close(slave)
    try:
        text = _read_until(master, "watchd ready", 60)
        lines = [ln for ln in text.splitlines() if "watchd ready" in ln]
        assert lines and STAMP.match(lines[0]), text
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(15)
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        os.close(master)
