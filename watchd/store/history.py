"""Definition history (`definition_versions`): every version of every watch and schedule, with
its content, where it was defined, when watchd first ran it, and the git commit and author of its
file when the definitions live in a git repository. A row is written once per version (the
version counters are `watch_versions` and `schedules`); nothing here changes one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from watchd.model import iso
from watchd.store.db import Transaction

Kind = Literal["watch", "schedule"]
_COLUMNS = "kind, name, version, digest, content, file, line, at, git_commit, git_author, git_time, git_dirty"


@dataclass(frozen=True)
class Version:
    kind: str
    name: str
    version: int
    digest: str
    content: str  # the definition's text as written (its table in the file), or as watchd renders it
    file: str | None
    line: int | None
    at: float  # when watchd first ran this version
    git_commit: str | None = None  # the last commit of the file, when it is in a git repository
    git_author: str | None = None  # "Name <email>"
    git_time: str | None = None  # the commit's author date, ISO 8601
    git_dirty: bool | None = None  # the file had changes not committed: this content is not the commit's

    @property
    def source(self) -> str:
        if not self.file:
            return "built in"
        return f"{self.file}:{self.line}" if self.line else self.file

    def git_words(self) -> str:
        """ "commit 3f2a9c1 by Alice <a@example.org> (2026-11-20T10:00:00+01:00)", with uncommitted
        changes said; "" outside a repository."""
        if self.git_commit is None:
            return "not committed to git" if self.git_dirty else ""
        said = f"commit {self.git_commit[:7]} by {self.git_author} ({self.git_time})"
        return said + ("; the file had uncommitted changes" if self.git_dirty else "")

    def to_json(self, *, content: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "name": self.name,
            "version": self.version,
            "digest": self.digest,
            "file": self.file,
            "line": self.line,
            "at": iso(self.at),
            "git_commit": self.git_commit,
            "git_author": self.git_author,
            "git_time": self.git_time,
            "git_dirty": self.git_dirty,
        }
        if content:
            out["content"] = self.content
        return out


def _version(row: Sequence[Any]) -> Version:
    kind, name, version, digest, content, file, line, at, commit, author, when, dirty = row
    return Version(
        kind,
        name,
        version,
        digest,
        content,
        file,
        line,
        at,
        commit,
        author,
        when,
        None if dirty is None else bool(dirty),
    )


def latest(conn: sqlite3.Connection, kind: Kind) -> dict[str, int]:
    """The newest recorded version of each watch (or schedule)."""
    sql = "SELECT name, MAX(version) FROM definition_versions WHERE kind = ? GROUP BY name"
    return dict(conn.execute(sql, (kind,)).fetchall())


def record(conn: sqlite3.Connection, versions: Iterable[Version]) -> int:
    """Keep each version not kept yet; how many were new."""
    n = 0
    with Transaction(conn):
        for v in versions:
            dirty = None if v.git_dirty is None else int(v.git_dirty)
            row = (v.kind, v.name, v.version, v.digest, v.content, v.file, v.line, v.at)
            cur = conn.execute(
                f"INSERT OR IGNORE INTO definition_versions ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (*row, v.git_commit, v.git_author, v.git_time, dirty),
            )
            n += cur.rowcount
    return n


def versions_of(conn: sqlite3.Connection, name: str, kind: Kind) -> list[Version]:
    """Every recorded version of one watch or schedule, oldest first; none from a state file that
    predates the history."""
    try:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM definition_versions WHERE kind = ? AND name = ? ORDER BY version", (kind, name)
        ).fetchall()
    except sqlite3.OperationalError:  # no such table: read-only on a state file from before it
        return []
    return [_version(r) for r in rows]


def version_at(versions: Sequence[Version], at: float) -> Version | None:
    """The version that was running at instant `at`: the newest one recorded at or before it."""
    found = None
    for v in versions:
        if v.at <= at + 1e-6:
            found = v
    return found
