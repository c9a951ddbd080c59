"""The backup job: a consistent snapshot of the state, the watch files and the config, proven to restore.

One archive per run, `<backup dir>/watchd-<UTC stamp>.tar.gz` (mode 0600, directory 0700), holding
`manifest.json` (first, so it is cheap to read), `watchd.db`, `config.toml` with every literal secret
replaced by "<redacted>", and the watch files. The database is copied with SQLite's backup API from a
separate read connection, inside one read transaction that also counts the rows: in WAL mode the
daemon keeps writing meanwhile, and the copy and its counts describe the same instant.

A backup only counts once it is proven: the archive is read back from disk into a temporary
directory, every member's sha256 is checked, the database is opened, `PRAGMA integrity_check`ed, and
its row counts and newest records compared with the manifest. It is written as `….partial` and gets
its final name only then; one that fails is kept aside as `….failed` and never counts. Older
backups are pruned to `[backup] keep` only after a new one verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import sqlite3
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from watchd import __version__
from watchd.config import Loaded, resolve_path, secret_settings
from watchd.errors import WatchdError
from watchd.jobs import JobContext, JobResult
from watchd.jobs.meter import Meter, Progress
from watchd.model import iso
from watchd.redact import redact_config
from watchd.store import connect, db_path
from watchd.store.snapshot import TableStat, integrity_problems, snapshot, table_stats

FORMAT = 1
MANIFEST = "manifest.json"
DB_MEMBER = "watchd.db"
CONFIG_MEMBER = "config.toml"
FAILED = ".failed"
# gzip level 1: a state of 1M decisions shrinks 4.4x in 0.8 s; level 6 saves 8 % more in 3 s, 9 in 7 s.
COMPRESS_LEVEL = 1
_ARCHIVE_RE = re.compile(r"^watchd-(\d{8}T\d{6}Z)(?:-(\d+))?\.tar\.gz$")


class BackupInvalid(WatchdError):
    """A backup that cannot be made, read or proven; the message says what is wrong with it."""


class Member(msgspec.Struct, kw_only=True):
    name: str
    sha256: str
    size: int
    source: str | None = None  # where the file came from: `restore --watches` puts it back there


class Manifest(msgspec.Struct, kw_only=True):
    format: int
    watchd_version: str
    created_at: str
    state_dir: str
    stream_seq: int  # the last event the snapshot covers: a restored daemon resumes after it
    tables: dict[str, TableStat]
    members: list[Member]
    config_redacted: list[str] = msgspec.field(default_factory=list)  # key paths, never values
    notes: list[str] = msgspec.field(default_factory=list)


_manifest_decoder = msgspec.json.Decoder(Manifest)


def backup_dir(loaded: Loaded) -> Path:
    folder = loaded.config.backup.dir
    return (resolve_path(loaded.base_dir, folder) if folder else loaded.state_dir / "backups").absolute()


async def run(ctx: JobContext) -> JobResult:
    """The scheduled job (and `watchd backup`): the work runs in a thread, off the event loop and off
    the store's writer thread."""
    return await asyncio.to_thread(make_backup, ctx.loaded, ctx.clock())


def make_backup(loaded: Loaded, now: float, progress: Progress | None = None) -> JobResult:
    """`progress(done, total)` in bytes, packed then proved (a terminal's bar), if given."""
    started = time.perf_counter()
    meter = Meter(progress, phases=2)
    db = db_path(loaded.state_dir)
    folder = backup_dir(loaded)
    partial: Path | None = None
    try:
        if not db.exists():
            raise BackupInvalid(f"no watchd state at {db} to back up")
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with _exclusive(folder):
            _clear_leftovers(folder)
            archive = _new_name(folder, now)
            partial = archive.with_name(archive.name + ".partial")
            manifest = _pack(loaded, db, partial, now, meter)
            try:
                with tempfile.TemporaryDirectory(prefix=".verify-", dir=folder) as tmp:
                    verify_archive(partial, Path(tmp), meter)
            except BackupInvalid as exc:
                bad = archive.with_name(archive.name + FAILED)
                os.replace(partial, bad)
                _prune(_listing(folder, FAILED), loaded.config.backup.keep)
                data = {"verified": False, "error": exc.message, "path": str(bad), "created_at": manifest.created_at}
                return JobResult(False, f"backup {bad.name} failed verification: {exc.message}", data)
            os.replace(partial, archive)
            fsync_dir(folder)
            pruned = _prune(_listing(folder, ""), loaded.config.backup.keep)
    except (BackupInvalid, OSError, sqlite3.Error) as exc:
        reason = exc.message if isinstance(exc, WatchdError) else f"{type(exc).__name__}: {exc}"
        return JobResult(False, f"backup failed: {reason}", {"verified": False, "error": reason})
    finally:
        if partial is not None:
            partial.unlink(missing_ok=True)
    size = archive.stat().st_size
    duration = round(time.perf_counter() - started, 3)
    rows = sum(t.rows for t in manifest.tables.values())
    data = {
        "verified": True,
        "path": str(archive),
        "size_bytes": size,
        "duration_s": duration,
        "created_at": manifest.created_at,
        "stream_seq": manifest.stream_seq,
        "tables": {name: t.rows for name, t in manifest.tables.items()},
        "config_redacted": manifest.config_redacted,
        "pruned": [p.name for p in pruned],
    }
    summary = f"backup {archive.name} verified: {human_size(size)}, {rows} rows in {len(manifest.tables)} tables"
    return JobResult(True, f"{summary}, {duration:.1f}s", data)


# ---- making one ------------------------------------------------------------------------------


def _pack(loaded: Loaded, db: Path, dest: Path, now: float, meter: Meter) -> Manifest:
    """Stage every member in a private directory, hash it there, then write the archive from it."""
    folder = dest.parent
    with tempfile.TemporaryDirectory(prefix=".work-", dir=folder) as tmp:
        work = Path(tmp)
        tables, stream_seq = snapshot(db, work / DB_MEMBER)
        staged: list[tuple[Member, Path]] = [(_member(DB_MEMBER, work / DB_MEMBER, None), work / DB_MEMBER)]
        notes: list[str] = []
        redacted: list[str] = []
        if loaded.config_path is not None:
            # Every secret setting by its path, so that a secret under any key name is found.
            settings = secret_settings(loaded.config)
            paths = {".".join(str(p) for p in path if isinstance(p, str)) for path, v in settings if v != "embedded"}
            text, redacted = redact_config(loaded.config_path.read_text(encoding="utf-8"), paths)
            if text is None:
                notes.append("config left out: its secrets could not be redacted with certainty")
            else:
                staged.append(_stage(work, CONFIG_MEMBER, text.encode(), loaded.config_path))
        for name, path in _watch_members(loaded):
            staged.append(_stage(work, name, path.read_bytes(), path))
        manifest = Manifest(
            format=FORMAT,
            watchd_version=__version__,
            created_at=iso(now) or "",
            state_dir=str(loaded.state_dir.absolute()),
            stream_seq=stream_seq,
            tables=tables,
            members=[m for m, _ in staged],
            config_redacted=redacted,
            notes=notes,
        )
        meter.phase(sum(m.size for m, _ in staged))
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=COMPRESS_LEVEL) as tar:
                body = msgspec.json.format(msgspec.json.encode(manifest), indent=2)
                (work / MANIFEST).write_bytes(body)
                tar.add(work / MANIFEST, MANIFEST, filter=_private)
                for member, path in staged:
                    info = _private(tar.gettarinfo(path, member.name))
                    with open(path, "rb") as f:
                        tar.addfile(info, meter.counted(f))  # compressing: the slow part, measured
            raw.flush()
            os.fsync(raw.fileno())
    return manifest


def _watch_members(loaded: Loaded) -> list[tuple[str, Path]]:
    """Archive names for the watch files: their path under the config's directory, else `external/`."""
    out: list[tuple[str, Path]] = []
    taken: set[str] = set()
    for path in loaded.watch_files:
        full = path.resolve()
        rel = os.path.relpath(full, loaded.base_dir.resolve())
        name = f"files/{rel}" if not rel.startswith("..") else f"external/{full.name}"
        stem, n = name, 1
        while name in taken:
            name, n = f"{stem}.{n}", n + 1
        taken.add(name)
        out.append((name, full))
    return out


def _stage(work: Path, name: str, body: bytes, source: Path) -> tuple[Member, Path]:
    path = work / "staged" / name
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_bytes(body)
    return _member(name, path, source), path


def _member(name: str, path: Path, source: Path | None) -> Member:
    where = str(source.absolute()) if source else None
    return Member(name=name, sha256=_sha256(path), size=path.stat().st_size, source=where)


def _private(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mode, info.uid, info.gid, info.uname, info.gname = 0o600, 0, 0, "", ""
    return info


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# ---- proving one -----------------------------------------------------------------------------


def verify_archive(archive: Path, into: Path, meter: Meter | None = None) -> Manifest:
    """Extract `archive` into `into` and prove it: checksums, integrity, counts. BackupInvalid says why.
    The bytes extracted move `meter`."""
    try:
        manifest = _extract(archive, into, meter or Meter())
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise BackupInvalid(f"the archive cannot be read: it is truncated or damaged ({exc})") from None
    db = into / DB_MEMBER
    try:
        conn = connect(db, readonly=True)
    except sqlite3.Error as exc:
        raise BackupInvalid(f"the database does not open: {exc}") from None
    try:
        problems = integrity_problems(conn)
        if problems:
            raise BackupInvalid(f"the database fails integrity_check: {'; '.join(problems[:3])}")
        restored = table_stats(conn)
    except sqlite3.Error as exc:
        raise BackupInvalid(f"the database cannot be read: {exc}") from None
    finally:
        conn.close()
    for name, want in manifest.tables.items():
        got = restored.get(name)
        if got is None:
            raise BackupInvalid(f"table {name} is missing from the database")
        if got.rows != want.rows:
            raise BackupInvalid(f"table {name} has {got.rows} rows, the snapshot had {want.rows}")
        if got.newest != want.newest:
            raise BackupInvalid(f"table {name}'s newest record is {got.newest!r}, the snapshot's was {want.newest!r}")
    return manifest


def _extract(archive: Path, into: Path, meter: Meter) -> Manifest:
    with tarfile.open(archive, mode="r:gz") as tar:
        first = tar.next()
        if first is None or first.name != MANIFEST:
            raise BackupInvalid(f"not a watchd backup: it does not start with {MANIFEST}")
        try:
            manifest = _manifest_decoder.decode(_read(tar, first))
        except msgspec.DecodeError as exc:
            raise BackupInvalid(f"the manifest is unreadable: {exc}") from None
        if manifest.format > FORMAT:
            newer = manifest.watchd_version
            raise BackupInvalid(f"made by watchd {newer}, which is newer than this one ({__version__})")
        expected = {m.name: m for m in manifest.members}
        meter.phase(sum(m.size for m in manifest.members))
        seen: set[str] = set()
        for info in tar:
            if info is first:
                continue
            member = expected.get(info.name)
            if member is None or not info.isfile() or info.name in seen:
                raise BackupInvalid(f"the archive holds {info.name!r}, which its manifest does not list")
            # Only names the manifest lists are written, under `into`, after checking they stay there.
            dest = (into / member.name).resolve()
            if not dest.is_relative_to(into.resolve()):
                raise BackupInvalid(f"the manifest lists an unsafe member name {member.name!r}")
            dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            digest = _copy_hashed(tar, info, dest, meter)
            if digest != member.sha256:
                raise BackupInvalid(
                    f"{member.name} does not match its checksum "
                    f"(sha256 {digest[:12]}…, manifest {member.sha256[:12]}…): the file is damaged"
                )
            seen.add(info.name)
    missing = sorted(set(expected) - seen)
    if missing or DB_MEMBER not in expected:
        raise BackupInvalid(f"the archive is incomplete: {', '.join(missing) or DB_MEMBER} missing")
    return manifest


def _read(tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(info)
    if f is None:
        raise BackupInvalid(f"{info.name} is not a file")
    return f.read()


def _copy_hashed(tar: tarfile.TarFile, info: tarfile.TarInfo, dest: Path, meter: Meter) -> str:
    src = tar.extractfile(info)
    assert src is not None  # isfile() checked
    h = hashlib.sha256()
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        while chunk := src.read(1 << 20):
            h.update(chunk)
            out.write(chunk)
            meter.add(len(chunk))
    return h.hexdigest()


def read_manifest(archive: Path) -> Manifest:
    """The manifest alone (the first member): cheap, and no proof of anything."""
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST:
                raise BackupInvalid(f"{archive.name} is not a watchd backup")
            return _manifest_decoder.decode(_read(tar, first))
    except (tarfile.TarError, EOFError, zlib.error, OSError, msgspec.DecodeError) as exc:
        raise BackupInvalid(f"{archive.name} cannot be read ({exc})") from None


# ---- keeping N, and what `status` shows ------------------------------------------------------


def _listing(folder: Path, suffix: str) -> list[Path]:
    """Backups in `folder` (verified ones with suffix "", set-aside ones with FAILED), oldest first."""
    found: list[tuple[tuple[str, int], Path]] = []
    with contextlib.suppress(FileNotFoundError):
        for path in folder.iterdir():
            if suffix and not path.name.endswith(suffix):
                continue
            m = _ARCHIVE_RE.match(path.name.removesuffix(suffix) if suffix else path.name)
            if m:
                found.append(((m[1], int(m[2] or 0)), path))
    return [p for _, p in sorted(found)]


def _prune(paths: list[Path], keep: int) -> list[Path]:
    doomed = paths[: max(0, len(paths) - keep)]
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


def _new_name(folder: Path, now: float) -> Path:
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")
    name, n = f"watchd-{stamp}.tar.gz", 1
    while any((folder / (name + s)).exists() for s in ("", FAILED)):
        name, n = f"watchd-{stamp}-{n}.tar.gz", n + 1
    return folder / name


def _stamp_iso(path: Path) -> str | None:
    m = _ARCHIVE_RE.match(path.name.removesuffix(FAILED))
    return iso(datetime.strptime(m[1], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()) if m else None


def last_backup(loaded: Loaded) -> dict[str, Any] | None:
    """The newest backup attempt for `status`: when, verified, path, size; a failed one also names
    the newest verified backup before it."""
    folder = backup_dir(loaded)
    good, bad = _listing(folder, ""), _listing(folder, FAILED)

    def describe(path: Path, verified: bool) -> dict[str, Any]:
        return {"at": _stamp_iso(path), "verified": verified, "path": str(path), "size_bytes": path.stat().st_size}

    last_good = describe(good[-1], True) if good else None
    if bad and (last_good is None or (_stamp_iso(bad[-1]) or "") >= last_good["at"]):
        return {**describe(bad[-1], False), "last_verified": last_good}
    return last_good


def human_size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def backup_line(last: dict[str, Any] | None) -> str:
    """`last_backup` as one line of `watchd status`."""
    if last is None:
        return "last backup: none"
    if last["verified"]:
        return f"last backup: {last['at']}, verified, {human_size(last['size_bytes'])}, {last['path']}"
    good = last["last_verified"]
    before = f"{good['at']} ({good['path']})" if good else "none"
    return f"last backup: {last['at']} FAILED verification, kept aside as {last['path']}; last verified: {before}"


# ---- files -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    """One backup at a time per directory (a scheduled one and `watchd backup` may meet)."""
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise BackupInvalid(f"another backup is running in {folder}") from None
        yield
    finally:
        os.close(fd)


def _clear_leftovers(folder: Path) -> None:
    """What a backup killed halfway left behind (held under the lock, so none is in use)."""
    for path in folder.iterdir():
        if path.name.endswith(".partial"):
            path.unlink(missing_ok=True)
        elif path.is_dir() and path.name.startswith((".work-", ".verify-")):
            shutil.rmtree(path, ignore_errors=True)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
