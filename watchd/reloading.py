"""When the daemon reloads: the config and watch files changed (their path, mtime and size, looked
at every few seconds), or a reload was asked for (SIGHUP), whatever changed."""

from __future__ import annotations

import asyncio
from pathlib import Path

from watchd.config import Loaded, resolve_path

Fingerprint = tuple[tuple[str, int | None, int | None], ...]


def fingerprint(loaded: Loaded) -> Fingerprint:
    """Each file's (path, mtime, size); a missing one counts too, so its return is a change."""
    paths: list[Path] = [p for p in [loaded.config_path] if p]
    for entry in loaded.config.watches:
        p = resolve_path(loaded.base_dir, entry)
        paths.extend(sorted(p.glob("*.toml")) if p.is_dir() else [p])
    out: list[tuple[str, int | None, int | None]] = []
    for p in paths:
        try:
            st = p.stat()
            out.append((str(p), st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((str(p), None, None))
    return tuple(out)


class ReloadTrigger:
    """`due(loaded)` says whether to reload now; `request()` makes the next look say yes and wakes
    the loop that looks (`wake`)."""

    def __init__(self, loaded: Loaded) -> None:
        self.wake = asyncio.Event()
        self.requested = False
        self.last = fingerprint(loaded)

    def request(self) -> None:
        self.requested = True
        self.wake.set()

    def due(self, loaded: Loaded) -> bool:
        now = fingerprint(loaded)
        if not self.requested and now == self.last:
            return False
        self.requested = False
        self.last = now
        return True
