"""The lock that keeps one daemon (or a restore) per state dir."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from watchd.errors import WatchdError


def lock_state_dir(state_dir: Path, pid_file: Path) -> int:
    """One daemon per state_dir. A second one would take the first's nats-server for a leftover
    (and stop it), then run a second engine on the same SQLite and stream."""
    fd = os.open(state_dir / "watchd.lock", os.O_RDWR | os.O_CREAT, 0o600)  # not inherited by children
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        try:
            other = f" (pid {int(pid_file.read_text().strip())})"
        except (OSError, ValueError):
            other = ""
        raise WatchdError(
            f"another watchd{other} is already running with state_dir {state_dir}",
            hint="stop it first (or check it with `watchd status`), or give this one its own state_dir",
        ) from None
    return fd
