"""systemd Type=notify: the real daemon says READY=1, pings the watchdog, and says STOPPING=1."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from pathlib import Path

from support.processes import DaemonProc


def test_ready_watchdog_and_stopping_reach_the_notify_socket(
    tmp_path: Path, process_factory: Callable[..., DaemonProc]
) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    # WatchdogSec=1s: watchd pings at half of it.
    d = process_factory(env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"})
    d.start()
    received: list[str] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and received.count("WATCHDOG=1") < 3:
        with contextlib.suppress(TimeoutError):
            received.append(sock.recv(4096).decode())
    d.term()
    try:
        while True:
            received.append(sock.recv(4096).decode())
    except TimeoutError:
        pass
    sock.close()
    assert received[0].startswith("READY=1")
    assert received.count("WATCHDOG=1") >= 3
    assert received[-1] == "STOPPING=1"
