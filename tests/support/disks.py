"""A small, real filesystem for disk-full tests: a tmpfs of a given size, mounted at a folder.

Mounting needs root (or CAP_SYS_ADMIN); where the machine does not allow it, the test is skipped
with the reason, and the injected-failure tests (tests/test_storage_health.py) still run.
`fill` takes every free byte with one file, as a runaway log would; `free` gives it back.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_disk(path: Path, size_mib: int) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield path
    finally:
        # Lazy: a server still closing its files must not leave the mount behind.
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(disk: Path) -> Path:
    """Write one file until the disk is full; returns it."""
    filler = disk / "filler"
    chunk = b"\0" * (1 << 16)
    with contextlib.suppress(OSError), open(filler, "wb") as f:  # ENOSPC ends it, wherever it comes
        while True:
            f.write(chunk)
            f.flush()
    return filler


def free(disk: Path) -> int:
    """Remove the filler; the free bytes after."""
    (disk / "filler").unlink(missing_ok=True)
    return shutil.disk_usage(disk).free
