"""Positions on disk: one small JSON file per source, `<state_dir>/sources/<name>.json`.

Written atomically (a temporary file, fsync, rename, fsync of the folder), mode 0600, so a crash
leaves the old position or the new one, never half of one. A file that cannot be read is reported
and treated as absent: the source starts over, and the deterministic ids make what it re-sends
land once in the stream.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path
from typing import Any

import msgspec

from watchd.errors import WatchdError

log = logging.getLogger("watchd.sources")


class PositionStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def lock(self, name: str) -> int:
        """Hold `<name>.lock` while the source runs (the fd; closing it releases the lock): two
        runners of one source on one state would each persist a position over the other's."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise WatchdError(
                f"source {name} is already running on this state ({self.folder})",
                hint="the daemon runs every configured source itself; run it standalone only on "
                "another machine, or with --state DIR of its own",
            ) from None
        return fd

    def load(self, name: str) -> dict[str, Any]:
        path = self.path(name)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            log.warning("source %s: cannot read its position %s (%s); starting over", name, path, exc.strerror)
            return {}
        try:
            data = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            log.warning("source %s: its position %s is not valid JSON; starting over", name, path)
            return {}
        return data if isinstance(data, dict) else {}

    def save(self, name: str, position: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.path(name)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, msgspec.json.encode(position))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(self.folder, os.O_RDONLY)
        try:
            with contextlib.suppress(OSError):  # some filesystems refuse fsync on a folder
                os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
