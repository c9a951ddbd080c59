"""The file source: `created`, `modified` and `deleted` files under paths and globs.

The folders are watched with watchfiles (inotify on Linux: nothing is polled). What a batch of
notifications means is decided by comparing each path's state now (mtime_ns, size) with the
snapshot the source keeps, so a file written in many small steps is one event once it settles
(watchfiles yields a batch after `debounce` without news), and a notification for a file that did
not change says nothing. The snapshot is the position: after a restart the folders are scanned and
compared with it, so a file that changed while watchd was down is announced and an unchanged one is
not. An event's id is hash(path, event, mtime_ns, size) (SPEC 8), so a batch re-sent after a crash
lands once.

Patterns: `~` is expanded, relative paths start at the config's folder, `*` and `?` stay inside one
folder, `**` spans folders, and a plain folder means every file in it and below.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from watchd.errors import WatchdError
from watchd.model import iso, stable_hash
from watchd.sources.base import Emit, Source, SourceContext
from watchd.sources.settings import FileSettings

Snapshot = dict[str, list[Any]]  # path -> [mtime_ns, size, sha256 or None]
_GLOB = re.compile(r"[*?\[]")
WATCHER_START_S = 0.2  # the watcher thread is up by then: a catch-up scan after it misses nothing
MAX_GROUP_MS = 2_000  # a file written without pause for longer is announced in steps of this


@dataclass(frozen=True)
class Pattern:
    text: str  # as resolved: absolute, ~ expanded
    root: Path  # the folder to watch: the part before the first wildcard
    regex: re.Pattern[str]
    recursive: bool


def _segment(seg: str) -> str:
    out, i = [], 0
    while i < len(seg):
        c = seg[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = seg.find("]", i + 2 if seg[i + 1 : i + 2] in ("!", "]") else i + 1)
            if end == -1:
                out.append(re.escape(c))
            else:
                inner = seg[i + 1 : end]
                inner = "^" + inner[1:] if inner.startswith("!") else inner
                out.append("[" + inner.replace("\\", "\\\\") + "]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def compile_pattern(text: str, base: Path) -> Pattern:
    path = Path(os.path.expanduser(text))
    if not path.is_absolute():
        path = base / path
    resolved = os.path.normpath(str(path))
    if not _GLOB.search(resolved) and Path(resolved).is_dir():
        resolved = resolved.rstrip("/") + "/**"
    parts = resolved.split("/")
    first_glob = next((i for i, p in enumerate(parts) if _GLOB.search(p) or p == "**"), None)
    if first_glob is None:  # one file: watch its folder
        root = Path(resolved).parent
        recursive = False
    else:
        root = Path("/".join(parts[:first_glob]) or "/")
        recursive = first_glob < len(parts) - 1 or "**" in parts
    pieces = []
    for i, seg in enumerate(parts):
        last = i == len(parts) - 1
        if seg == "**":
            pieces.append(".*" if last else "(?:[^/]+/)*")
        else:
            pieces.append(_segment(seg) + ("" if last else "/"))
    return Pattern(resolved, root, re.compile("".join(pieces)), recursive)


def _stat(path: str) -> list[Any] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not os.path.isfile(path):
        return None
    return [st.st_mtime_ns, st.st_size, None]


def sha256_of(path: str) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


class FileSource(Source):
    type_name: ClassVar[str] = "file"
    settings: FileSettings

    def __init__(self, name: str, settings: Any) -> None:
        assert isinstance(settings, FileSettings)
        super().__init__(name, settings)
        from watchd.cron.schedule import parse_duration

        self.debounce_ms = max(1, round(parse_duration(settings.debounce) * 1000))
        self.subject = settings.subject or f"{name}.file"
        self.wanted = set(settings.events)
        self.patterns: list[Pattern] = []

    # ---- what is watched ----

    def resolve(self, base: Path) -> None:
        self.patterns = [compile_pattern(p, base) for p in self.settings.paths]

    def matches(self, path: str) -> bool:
        return any(p.regex.fullmatch(path) for p in self.patterns)

    def roots(self) -> list[Path]:
        found = sorted({p.root for p in self.patterns if p.root.is_dir()})
        if not found:
            shown = ", ".join(str(p.root) for p in self.patterns)
            raise WatchdError(f"source {self.name}: no folder to watch exists ({shown})", hint="create it")
        # A root inside another recursive root is watched through it already.
        return [r for r in found if not any(o != r and o in r.parents for o in found)]

    def scan(self) -> Snapshot:
        snap: Snapshot = {}
        for pattern in self.patterns:
            if not pattern.root.is_dir():
                continue
            for folder, dirs, files in os.walk(pattern.root):
                if not pattern.recursive:
                    dirs.clear()
                for f in files:
                    path = os.path.join(folder, f)
                    if path not in snap and pattern.regex.fullmatch(path):
                        state = _stat(path)
                        if state is not None:
                            snap[path] = state
        return snap

    # ---- the loop ----

    async def run(self, ctx: SourceContext) -> None:
        from watchfiles import awatch

        self.resolve(ctx.base_dir)
        roots = self.roots()
        batches: asyncio.Queue[set[str]] = asyncio.Queue()

        async def watch() -> None:
            async for changes in awatch(
                *roots,
                watch_filter=lambda _change, path: self.matches(path) or os.path.isdir(path),
                step=self.debounce_ms,
                debounce=max(MAX_GROUP_MS, self.debounce_ms * 4),
                stop_event=ctx.stop,
                recursive=any(p.recursive for p in self.patterns),
                ignore_permission_denied=True,
            ):
                await batches.put({path for _, path in changes})

        watcher = asyncio.create_task(watch(), name=f"source-{self.name}-watch")
        try:
            await asyncio.sleep(WATCHER_START_S)
            if watcher.done():
                watcher.result()  # a watcher that could not start: say why
            await self.catch_up(ctx)
            while not ctx.stop.is_set():
                get = asyncio.ensure_future(batches.get())
                stopped = asyncio.ensure_future(ctx.stop.wait())
                await asyncio.wait({get, stopped, watcher}, return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
                if not get.done():
                    get.cancel()
                    if watcher.done() and not ctx.stop.is_set():
                        watcher.result()
                        raise WatchdError(f"source {self.name}: the watch on its folders ended")
                    continue
                paths = get.result()
                while not batches.empty():
                    paths |= batches.get_nowait()
                await self.apply(ctx, paths)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher

    async def once(self, ctx: SourceContext) -> None:
        """What changed since the snapshot (the daemon's, when `source test` reads it)."""
        self.resolve(ctx.base_dir)
        await self.catch_up(ctx)

    async def catch_up(self, ctx: SourceContext) -> None:
        """Announce what changed since the snapshot, then keep the new one. The first run only
        records what is there (a folder's files are not news)."""
        now_snap = await asyncio.to_thread(self.scan)
        old: Snapshot | None = ctx.position.get("files")
        if old is None:
            ctx.log.info("source %s: first scan, %d files recorded (changes are announced)", self.name, len(now_snap))
            if self.settings.hash:
                await asyncio.to_thread(self._hash_all, now_snap, now_snap.keys())
            await ctx.save({"files": now_snap})
            return
        await self._diff(ctx, old, now_snap, set(old) | set(now_snap))

    async def apply(self, ctx: SourceContext, paths: Iterable[str]) -> None:
        old: Snapshot = ctx.position.get("files") or {}
        if any(os.path.isdir(p) for p in paths):  # a folder appeared or moved in: what is inside it?
            await self._diff(ctx, old, await asyncio.to_thread(self.scan), None)
            return
        paths = [p for p in paths if self.matches(p)]
        states = await asyncio.to_thread(lambda: {p: _stat(p) for p in paths})
        new = dict(old)
        for path, state in states.items():
            if state is None:
                new.pop(path, None)
            else:
                new[path] = state
        await self._diff(ctx, old, new, set(paths))

    async def _diff(self, ctx: SourceContext, old: Snapshot, new: Snapshot, paths: set[str] | None) -> None:
        """Emit the differences between `old` and `new` over `paths` (None: all), then save `new`."""
        keys = sorted(set(old) | set(new) if paths is None else paths)
        changed: list[tuple[str, str]] = []
        for path in keys:
            before, after = old.get(path), new.get(path)
            if before is None and after is not None:
                changed.append((path, "created"))
            elif before is not None and after is None:
                changed.append((path, "deleted"))
            elif before is not None and after is not None and before[:2] != after[:2]:
                changed.append((path, "modified"))
            elif before is not None and after is not None:
                after[2] = before[2]  # unchanged: keep the hash it had
        if self.settings.hash:
            await asyncio.to_thread(self._hash_all, new, [p for p, e in changed if e != "deleted"])
        emits = []
        for path, event in changed:
            if event not in self.wanted:
                continue
            mtime_ns, size, digest = (old if event == "deleted" else new)[path]
            data: dict[str, Any] = {"path": path, "event": event, "size": size, "mtime": iso(mtime_ns / 1e9)}
            if self.settings.hash and event != "deleted":
                data["sha256"] = digest
            emits.append(Emit(self.subject, data, stable_hash("file", path, event, mtime_ns, size)))
        if changed or paths is None:
            await ctx.emit(emits, {"files": new})

    @staticmethod
    def _hash_all(snap: Snapshot, paths: Iterable[str]) -> None:
        for path in paths:
            if path in snap:
                snap[path][2] = sha256_of(path)
