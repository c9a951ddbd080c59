"""`watchd history NAME [--diff A B] [--show N] [--json]`: the versions of a watch or schedule
that watchd ran (content, file, when, git commit and author), and a diff between any two."""

from __future__ import annotations

import difflib

import click
from rich.text import Text

from watchd.cli.common import CONFIG_OPTION, dump_json, fail, load, out
from watchd.store.history import Kind, Version


def _versions(config_path: str | None, name: str, kind: Kind | None) -> tuple[Kind, list[Version]]:
    from watchd.store import open_readonly
    from watchd.store.history import versions_of

    loaded = load(config_path)
    conn = open_readonly(loaded.state_dir)
    if conn is None:
        fail("watchd has not run with this config yet", "history is recorded when the daemon loads definitions")
    try:
        for k in (kind,) if kind else ("watch", "schedule"):
            found = versions_of(conn, name, k)
            if found:
                return k, found
    finally:
        conn.close()
    what = kind or "watch or schedule"
    fail(
        f"no history of a {what} named {name!r}", "`watchd status` lists the watches, `watchd schedules` the schedules"
    )


@click.command("history")
@click.argument("name")
@click.option("--diff", "diff", nargs=2, type=int, metavar="A B", help="what changed from version A to version B")
@click.option("--show", "show", type=int, metavar="N", help="print version N as it was written")
@click.option("--schedule", "is_schedule", is_flag=True, help="NAME is a schedule (when a watch has the same name)")
@click.option("--json", "as_json", is_flag=True, help="an array of versions with their content")
@CONFIG_OPTION
def history_cmd(
    name: str, diff: tuple[int, int] | None, show: int | None, is_schedule: bool, as_json: bool, config_path: str | None
) -> None:
    """Versions of a watch or schedule: content, file, time, git commit and author.

    Every version watchd ran is kept, with the file and line it came from and, when that file is
    in a git repository, its last commit and author (and whether it had uncommitted changes).

    \b
    Examples:
      watchd history nightly-backup
      watchd history nightly-backup --diff 2 3
      watchd history backup --schedule --show 1
    """
    kind, versions = _versions(config_path, name, "schedule" if is_schedule else None)
    by_number = {v.version: v for v in versions}

    def pick(n: int) -> Version:
        if n not in by_number:
            fail(f"{kind} {name} has no version {n}", f"versions kept: {', '.join(str(v) for v in by_number)}")
        return by_number[n]

    if diff:
        a, b = pick(diff[0]), pick(diff[1])
        lines = difflib.unified_diff(
            a.content.splitlines(keepends=True),
            b.content.splitlines(keepends=True),
            fromfile=f"{name} v{a.version} ({a.source})",
            tofile=f"{name} v{b.version} ({b.source})",
        )
        text = "".join(lines)
        out.print(Text(text) if text else Text(f"versions {a.version} and {b.version} have the same text"))
        return
    if show is not None:
        v = pick(show)
        if as_json:
            dump_json(v.to_json())
            return
        out.print(Text(f"# {kind} {name} version {v.version} — {v.source}" + _git(v)))
        out.print(Text(v.content), end="")
        return
    if as_json:
        dump_json([v.to_json() for v in versions])
        return
    from watchd.explain.watch import iso_local

    loaded = load(config_path)
    out.print(Text(f"{kind} {name}: {len(versions)} version{'s' if len(versions) != 1 else ''}"))
    # Two lines each rather than a table: paths, authors and commits are never cut to fit.
    for v in versions:
        current = " (current)" if v is versions[-1] else ""
        out.print(Text(f"{v.version}{current}  since {iso_local(v.at, loaded.zone())}  {v.source}"))
        if git := v.git_words():
            out.print(Text(f"    {git}", style="dim"))
    if len(versions) > 1:
        last = versions[-1].version
        out.print(Text(f"`watchd history {name} --diff {versions[-2].version} {last}` shows the last change"))


def _git(v: Version) -> str:
    words = v.git_words()
    return f" — {words}" if words else ""
