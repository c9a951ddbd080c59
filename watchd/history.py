"""Recording definition history: what each new version of a watch or schedule says (its table as
written in its file, or watchd's rendering of a built-in one) and, when its file lives in a git
repository, the file's last commit and author (`git log -1 -- FILE`, run as a subprocess: no
library needed). Run when the daemon (re)loads definitions, for new versions only; a failure here
is logged and never stops a reload.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from watchd.redact import redact_config, redact_url, redact_url_parts
from watchd.store import history
from watchd.store.history import Kind, Version

if TYPE_CHECKING:
    from watchd.config import Loaded, WatchDef
    from watchd.cron.ticks import Definition
    from watchd.store import Store

log = logging.getLogger("watchd.history")
GIT_TIMEOUT_S = 5.0
_HEADER = re.compile(r"^\s*\[")


@dataclass(frozen=True)
class New:
    """A version to record: where its text is (a file and line, or None for a built-in one)."""

    kind: Kind
    name: str
    version: int
    digest: str
    file: str | None  # as shown (the path the config names)
    path: Path | None  # to read
    line: int | None
    definition: msgspec.Struct  # rendered when the file's text cannot be found


def watch_block(text: str | list[str], line: int) -> str | None:
    """The [[watch]] table that starts at `line` (1-based), up to the next table that is not one
    of its own sub-tables ([watch.opens] and the like). `text` may come split into lines."""
    lines = text.splitlines() if isinstance(text, str) else text
    if not 0 < line <= len(lines):
        return None
    end = line
    while end < len(lines):
        here = lines[end].strip()
        if _HEADER.match(here) and not here.startswith("[watch."):
            break
        end += 1
    return _trim(lines[line - 1 : end])


def schedule_block(text: str, name: str) -> tuple[str, int] | None:
    """The [schedule.NAME] table of a config file and its line."""
    lines = text.splitlines()
    head = re.compile(rf"^\s*\[\s*schedule\s*\.\s*(?:{re.escape(name)}|\"{re.escape(name)}\")\s*\]\s*(#.*)?$")
    for i, line in enumerate(lines):
        if head.match(line):
            end = i + 1
            while end < len(lines) and not _HEADER.match(lines[end]):
                end += 1
            return _trim(lines[i:end]), i + 1
    return None


def _trim(lines: list[str]) -> str:
    while lines and (not lines[-1].strip() or lines[-1].lstrip().startswith("#")):
        lines = lines[:-1]  # blank lines and the next table's comments belong to what follows
    return "\n".join(lines) + "\n"


def render(header: str, definition: msgspec.Struct) -> str:
    """A definition that has no text of its own (a built-in one) as TOML-like lines."""
    body = msgspec.to_builtins(definition)
    return header + "\n" + "".join(f"{k} = {_value(v)}\n" for k, v in body.items() if v is not None)


def _without_secrets(definition: msgspec.Struct) -> msgspec.Struct:
    ping = getattr(definition, "ping_url", None)
    if isinstance(ping, str) and not ping.startswith(("env:", "file:", "cred:")):
        return msgspec.structs.replace(definition, ping_url=redact_url_parts(ping))
    return definition


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return msgspec.json.encode(v).decode()
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_value(x)}" for k, x in v.items() if x is not None) + " }"
    return str(v)


def git_info(path: Path) -> tuple[str | None, str | None, str | None, bool | None]:
    """(commit, author, author date, uncommitted changes) of the file's last commit; all None when
    it is not in a git repository (or git is not installed)."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}  # never take the user's index lock
    cwd, name = str(path.parent), path.name

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", cwd, *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S, env=env, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    logged = git("log", "-1", "--format=%H%x1f%an <%ae>%x1f%aI", "--", name)
    if logged is None:
        return None, None, None, None  # not a repository
    status = git("status", "--porcelain", "--", name)
    dirty = bool(status.strip()) if status is not None else None
    if not logged.strip():
        return None, None, None, dirty  # in a repository, never committed
    commit, author, when = logged.strip().split("\x1f")
    return commit, author, when, dirty


def collect(new: Iterable[New], now: float) -> list[Version]:
    """Each new version's content and git information (files read and asked about once each)."""
    texts: dict[Path, str | None] = {}
    split: dict[Path, list[str]] = {}
    gits: dict[Path, tuple[str | None, str | None, str | None, bool | None]] = {}
    out = []
    for n in new:
        content, line = None, n.line
        if n.path is not None:
            if n.path not in texts:
                try:
                    texts[n.path] = n.path.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    texts[n.path] = None
            text = texts[n.path]
            if text is not None and n.kind == "watch" and line:
                lines = split.get(n.path) or split.setdefault(n.path, text.splitlines())
                content = watch_block(lines, line)
            elif text is not None and n.kind == "schedule":
                found = schedule_block(text, n.name)
                content, line = found if found else (None, None)
        git: tuple[str | None, str | None, str | None, bool | None] = (None, None, None, None)
        if n.path is not None and content is not None:
            if n.path not in gits:
                gits[n.path] = git_info(n.path.resolve())
            git = gits[n.path]
        if content is not None and n.kind == "schedule":
            # A literal ping_url is a credential: kept redacted, as a backup keeps the config.
            content = redact_config(content, {f"schedule.{n.name}.ping_url"})[0]
        if content is None:
            header = "[[watch]]" if n.kind == "watch" else f"[schedule.{n.name}]"
            content, line = render(header, _without_secrets(n.definition)), None
        content = redact_url(content)  # user:password@ in any URL
        file = n.file if line is not None else None
        out.append(Version(n.kind, n.name, n.version, n.digest, content, file, line, now, *git))
    return out


async def record(store: Store, kind: Kind, new: list[New], now: float) -> None:
    """Keep the versions the history does not have yet."""
    try:
        known = await store.call(history.latest, kind)
        fresh = [n for n in new if known.get(n.name, 0) < n.version]
        if fresh:
            versions = await asyncio.to_thread(collect, fresh, now)
            await store.call(history.record, versions)
    except Exception:  # the history must never stop a reload
        log.exception("could not record the %s history", kind)


def watches(defs: Iterable[WatchDef], versions: dict[str, int]) -> list[New]:
    out = []
    files: dict[str, Path | None] = {}  # a file is looked at once, however many watches it holds
    for d in defs:
        if d.file not in files:
            files[d.file] = Path(d.file) if Path(d.file).is_file() else None
        on_disk = files[d.file] if d.line else None
        out.append(New("watch", d.watch.id, versions[d.watch.id], d.digest, d.file, on_disk, d.line, d.watch))
    return out


def schedules(loaded: Loaded, defs: dict[str, Definition], versions: dict[str, int]) -> list[New]:
    path = loaded.config_path
    shown = str(path) if path else None
    return [New("schedule", name, versions[name], d.digest, shown, path, None, d.schedule) for name, d in defs.items()]
