"""The file source on real files in a temporary folder, in the real daemon: what is announced while
it runs and after a restart, and how paths and globs match."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.inprocess import InProcessDaemon
from support.project import stream_events
from support.waiting import until

from watchd.sources.files import compile_pattern


def file_source(paths: str, **extra: str) -> str:
    lines = [f'[source.inbox]\ntype = "file"\npaths = {paths}\nsubject = "files.scans"\ndebounce = "100ms"']
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


async def announced(d: InProcessDaemon) -> list[tuple[str, str]]:
    return [
        (Path(e["data"]["path"]).name, e["data"]["event"])
        for e in await stream_events(d.nats_url)
        if e["source"] == "inbox"
    ]


async def count_at_least(d: InProcessDaemon, n: int) -> list[tuple[str, str]] | None:
    found = await announced(d)
    return found if len(found) >= n else None


def test_patterns_match_like_a_shell_glob(tmp_path: Path) -> None:
    (tmp_path / "scans").mkdir()
    p = compile_pattern("scans/*.pdf", tmp_path)
    assert p.root == tmp_path / "scans" and not p.recursive
    assert p.regex.fullmatch(f"{tmp_path}/scans/a b.pdf")
    assert not p.regex.fullmatch(f"{tmp_path}/scans/sub/a.pdf")  # * stays in its folder
    deep = compile_pattern("scans/**/*.pdf", tmp_path)
    assert deep.recursive and deep.regex.fullmatch(f"{tmp_path}/scans/a.pdf")
    assert deep.regex.fullmatch(f"{tmp_path}/scans/x/y/a.pdf")
    folder = compile_pattern(str(tmp_path / "scans"), tmp_path)  # a folder: everything in it and below
    assert folder.recursive and folder.regex.fullmatch(f"{tmp_path}/scans/x/a.txt")
    one = compile_pattern("notes.txt", tmp_path)
    assert one.root == tmp_path and one.regex.fullmatch(f"{tmp_path}/notes.txt")
    assert compile_pattern("~/x/[!a]?.txt", tmp_path).regex.fullmatch(os.path.expanduser("~/x/b1.txt"))


async def test_created_modified_deleted_are_announced_and_others_are_not(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = daemon_factory(extra_config=file_source('["inbox/*.pdf"]', hash="true"))
    inbox = d.root / "inbox"
    inbox.mkdir()
    (inbox / "old.pdf").write_bytes(b"already here")
    await d.start()
    await until(lambda: (d.state_dir / "sources" / "inbox.json").exists(), what="the first scan")
    (inbox / "scan1.pdf").write_bytes(b"%PDF-1 one")
    (inbox / "notes.txt").write_text("not a pdf")
    events = await until(lambda: count_at_least(d, 1), what="the new file")
    assert events == [("scan1.pdf", "created")]  # old.pdf was there before: not news
    stored = next(e for e in await stream_events(d.nats_url) if e["source"] == "inbox")
    data: dict[str, Any] = stored["data"]
    assert data["size"] == 10 and data["sha256"] == hashlib.sha256(b"%PDF-1 one").hexdigest()
    assert data["path"] == str(inbox / "scan1.pdf") and data["mtime"].endswith("Z")
    assert stored["subject"] == "files.scans"

    with (inbox / "scan1.pdf").open("ab") as f:  # written in steps: one event once it settles
        for _ in range(5):
            f.write(b" more")
            f.flush()
    await until(lambda: count_at_least(d, 2), what="the modification")
    (inbox / "old.pdf").unlink()
    events = await until(lambda: count_at_least(d, 3), what="the deletion")
    assert events == [("scan1.pdf", "created"), ("scan1.pdf", "modified"), ("old.pdf", "deleted")]
    status = next(s for s in d.health()["sources"] if s["name"] == "inbox")
    assert status["events"] == 3 and status["type"] == "file"


async def test_a_restart_announces_what_changed_while_down_and_nothing_else(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = daemon_factory(extra_config=file_source('["inbox"]', events='["created", "modified"]'))
    inbox = d.root / "inbox"
    (inbox / "sub").mkdir(parents=True)
    for name in ("same.txt", "edited.txt", "gone.txt"):
        (inbox / name).write_text(name)
    await d.start()
    await until(lambda: (d.state_dir / "sources" / "inbox.json").exists(), what="the first scan")
    await d.stop()
    (inbox / "edited.txt").write_text("edited while watchd was down")
    (inbox / "sub" / "new.txt").write_text("new")
    (inbox / "gone.txt").unlink()  # deleted is not among `events`: not announced, but forgotten
    await d.start()
    events = await until(lambda: count_at_least(d, 2), what="the catch-up")
    assert sorted(events) == [("edited.txt", "modified"), ("new.txt", "created")]
    await d.stop()
    await d.start()  # nothing changed this time
    (inbox / "after.txt").write_text("x")
    events = await until(lambda: count_at_least(d, 3), what="a change after the second restart")
    assert sorted(events) == [("after.txt", "created"), ("edited.txt", "modified"), ("new.txt", "created")]
