"""A command as a person runs it on a terminal: `python -m watchd ARGS…` with a pseudo-terminal on
stdin, stdout and stderr, everything it wrote (progress bars included) as bytes."""

from __future__ import annotations

import os
import pty
import select
import sys
import time
from collections.abc import Mapping


def on_terminal(*args: str, env: Mapping[str, str] | None = None, timeout_s: float = 60.0) -> tuple[int, bytes]:
    environ = {k: v for k, v in os.environ.items() if k != "WATCHD_CONFIG"} | {"COLUMNS": "100"} | dict(env or {})
    argv = [sys.executable, "-m", "watchd", *args]
    pid, fd = pty.fork()
    if pid == 0:  # the child
        os.execve(sys.executable, argv, environ)
    seen = b""
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if not select.select([fd], [], [], 1)[0]:
                continue
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), seen
