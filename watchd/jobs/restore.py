"""`watchd restore`: put a backup's database (and, if asked, its watch files) back in place.

The archive is proven exactly as the backup job proves it (checksums, integrity_check, counts) before
anything changes; a running daemon holds the state directory's lock, and restore refuses then. The
database it replaces is kept beside the restored one, with its -wal, never deleted.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from watchd.config import Loaded
from watchd.errors import WatchdError
from watchd.jobs.backup import (
    CONFIG_MEMBER,
    DB_MEMBER,
    BackupInvalid,
    Manifest,
    backup_dir,
    fsync_dir,
    verify_archive,
)
from watchd.jobs.meter import Meter, Progress
from watchd.store import db_path


class DaemonRunning(WatchdError):
    """The daemon holds the state directory, so its database cannot be replaced."""


@dataclass
class Restored:
    manifest: Manifest
    db: Path
    previous: Path | None  # where the database that was replaced is kept
    watch_files: list[tuple[Path, Path | None]] = field(default_factory=list)  # (restored, previous kept)


def restore(loaded: Loaded, archive: Path, *, watches: bool, now: float, progress: Progress | None = None) -> Restored:
    """Prove `archive`, then put its database in place of the current one (kept aside, never
    deleted), and with `watches` its watch files where they came from. Refuses while a daemon runs.
    `progress(done, total)`: the bytes of the archive proved so far (a terminal's bar), if given."""
    from watchd.statelock import lock_state_dir

    state_dir = loaded.state_dir.absolute()
    if not archive.is_file():
        raise BackupInvalid(f"backup file {archive} not found", hint=f"backups are kept in {backup_dir(loaded)}")
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")
    with tempfile.TemporaryDirectory(prefix=".restore-", dir=state_dir) as tmp:
        try:
            manifest = verify_archive(archive, Path(tmp), Meter(progress))
        except BackupInvalid as exc:
            hint = f"nothing was changed; try an older backup from {backup_dir(loaded)}"
            raise BackupInvalid(f"{archive.name} did not verify: {exc.message}", hint=hint) from None
        pid_file = state_dir / "watchd.pid"
        try:
            lock_fd = lock_state_dir(state_dir, pid_file)
        except WatchdError:
            pid = pid_file.read_text().strip() if pid_file.exists() else "?"
            raise DaemonRunning(
                f"watchd (pid {pid}) is running on {state_dir}; the backup verified, but restore replaces its database",
                hint="stop it first: systemctl --user stop watchd (or stop `watchd run`), then restore again",
            ) from None
        try:
            db = db_path(state_dir)
            previous = None
            if db.exists():
                previous = state_dir / f"watchd-pre-restore-{stamp}.db"
                # With its -wal and -shm, under the names SQLite pairs with the new name.
                for suffix in ("", "-wal", "-shm"):
                    if Path(str(db) + suffix).exists():
                        os.replace(str(db) + suffix, str(previous) + suffix)
            os.chmod(Path(tmp) / DB_MEMBER, 0o600)
            os.replace(Path(tmp) / DB_MEMBER, db)
            fsync_dir(state_dir)
            result = Restored(manifest, db, previous)
            if watches:
                result.watch_files = _restore_watches(manifest, Path(tmp), stamp)
        finally:
            os.close(lock_fd)
    return result


def _restore_watches(manifest: Manifest, extracted: Path, stamp: str) -> list[tuple[Path, Path | None]]:
    done: list[tuple[Path, Path | None]] = []
    for member in manifest.members:
        if member.source is None or member.name in (DB_MEMBER, CONFIG_MEMBER):
            continue
        target, body = Path(member.source), (extracted / member.name).read_bytes()
        if target.exists() and target.read_bytes() == body:
            continue
        fresh = target.with_name(target.name + ".restoring")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(extracted / member.name, fresh)
        kept = None
        if target.exists():
            shutil.copymode(target, fresh)
            kept = target.with_name(f"{target.name}.pre-restore-{stamp}")
            os.replace(target, kept)
        os.replace(fresh, target)
        done.append((target, kept))
    return done
