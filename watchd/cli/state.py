"""`watchd state`: the JSON documents agents keep across runs — list them, show a version, diff two."""

from __future__ import annotations

import contextlib
import difflib
import json
import sqlite3
import time
from typing import TYPE_CHECKING

import click
from rich.text import Text

from watchd.cli.common import CONFIG_OPTION, dump_json, fail, load, out

if TYPE_CHECKING:
    from watchd.store.agent_state import Scope, StateVersion

SCOPE_OPTIONS = [
    click.option("--watch", "watch", default=None, help="the watch of a per-key document"),
    click.option("--key", "key", default=None, help="the key of a per-key document"),
]


def _scope_options(f: click.decorators.FC) -> click.decorators.FC:
    for option in reversed(SCOPE_OPTIONS):
        f = option(f)
    return f


def _agent(name: str) -> str:
    return name if name.startswith("agent.") else f"agent.{name}"


def _open(ctx: click.Context, config_path: str | None) -> sqlite3.Connection:
    from watchd.store import open_readonly

    loaded = load(config_path or (ctx.obj or {}).get("config_path"))
    conn = open_readonly(loaded.state_dir)
    if conn is None:
        fail("watchd has not recorded any agent state yet", "an agent with `state` set saves it as it runs")
    return conn


def _scope(conn: sqlite3.Connection, agent: str, watch: str | None, key: str | None) -> Scope:
    """The document the options name; with none, the agent's only one (or its agent-wide one)."""
    from watchd.store.agent_state import scopes

    try:
        found = [s for s, _, _ in scopes(conn, agent)]
    except sqlite3.OperationalError:  # a state file from before agent state existed
        found = []
    if not found:
        fail(f"{agent} has no saved state", "set `state` on the agent; `watchd state` lists every document")
    matches = [s for s in found if (watch is None or s.watch == watch) and (key is None or s.key == key)]
    if watch is None and key is None and len(matches) > 1:
        matches = [s for s in matches if not s.watch and not s.key] or matches
    if len(matches) == 1:
        return matches[0]
    names = ", ".join(f"--watch {s.watch!r} --key {s.key!r}" for s in (matches or found)[:5])
    if not matches:
        fail(f"{agent} has no state for that watch and key", f"it has: {names}")
    fail(f"{agent} keeps {len(matches)} state documents", f"name one: {names}")


def _version_json(v: StateVersion) -> dict[str, object]:
    from watchd.model import iso

    return {
        "agent": v.scope.agent,
        "watch": v.scope.watch or None,
        "key": v.scope.key or None,
        "version": v.version,
        "at": iso(v.at),
        "handoff_id": v.handoff_id,
        "note": v.note,
        "state": v.doc,
    }


@click.group(invoke_without_command=True)
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="an array of {agent, watch, key, version, at}")
@click.pass_context
def state(ctx: click.Context, config_path: str | None, as_json: bool) -> None:
    """Agents' saved state across runs: list the documents, show a version, or diff two versions.

    \b
    Examples:
      watchd state
      watchd state show data-quality
      watchd state show triage --watch urgent-mail --key ceo@example.com --version 2
      watchd state diff data-quality 3 4
    """
    ctx.obj = {"config_path": config_path}
    if ctx.invoked_subcommand is not None:
        return
    from watchd.model import iso
    from watchd.store.agent_state import scopes

    conn = _open(ctx, None)
    rows: list[tuple[Scope, int, float]] = []
    with contextlib.closing(conn), contextlib.suppress(sqlite3.OperationalError):
        rows = scopes(conn)
    docs = [
        {"agent": s.agent, "watch": s.watch or None, "key": s.key or None, "version": v, "at": iso(at)}
        for s, v, at in rows
    ]
    if as_json:
        dump_json(docs)
        return
    if not docs:
        out.print("no agent state saved")
        return
    for d in docs:
        where = f" watch {d['watch']} key {d['key']}" if d["watch"] or d["key"] else ""
        out.print(Text(f"{d['agent']}{where}: version {d['version']}, {d['at']}"))


@state.command(name="show")
@CONFIG_OPTION
@click.argument("agent")
@_scope_options
@click.option("--version", "number", type=click.IntRange(1), default=None, help="this version (default: the latest)")
@click.option("--history", is_flag=True, help="list every version instead")
@click.option("--json", "as_json", is_flag=True, help="{agent, watch, key, version, at, handoff_id, note, state}")
@click.pass_context
def show(
    ctx: click.Context,
    config_path: str | None,
    agent: str,
    watch: str | None,
    key: str | None,
    number: int | None,
    history: bool,
    as_json: bool,
) -> None:
    """The state document AGENT keeps: the latest version, one by number, or the list of versions.

    \b
    Examples:
      watchd state show data-quality
      watchd state show data-quality --version 3 --json | jq .state
      watchd state show triage --key ceo@example.com --history
    """
    from watchd.agents.transcript import inert
    from watchd.store.agent_state import current, version, versions

    conn = _open(ctx, config_path)
    with contextlib.closing(conn):
        scope = _scope(conn, _agent(agent), watch, key)
        if history:
            found = versions(conn, scope)
            if as_json:
                dump_json([_version_json(v) for v in found])
                return
            for v in found:
                at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(v.at))
                note = f"  {inert(v.note)}" if v.note else ""
                out.print(Text(f"version {v.version}  {at} UTC  handoff {v.handoff_id or '-'}{note}"))
            return
        chosen = version(conn, scope, number) if number is not None else current(conn, scope)
    if chosen is None:
        fail(f"{scope.describe()} has no version {number}", "`--history` lists the versions")
    v = chosen
    if as_json:
        dump_json(_version_json(v))
        return
    at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(v.at))
    out.print(Text(f"{scope.describe()} · version {v.version} · {at} UTC · handoff {v.handoff_id or '-'}"))
    if v.note:
        out.print(Text(f"note: {inert(v.note)}"))
    out.print(Text(inert(json.dumps(v.doc, indent=2, ensure_ascii=False, sort_keys=True))))


@state.command(name="diff")
@CONFIG_OPTION
@click.argument("agent")
@click.argument("old", type=click.IntRange(1))
@click.argument("new", type=click.IntRange(1), required=False)
@_scope_options
@click.pass_context
def diff(
    ctx: click.Context,
    config_path: str | None,
    agent: str,
    old: int,
    new: int | None,
    watch: str | None,
    key: str | None,
) -> None:
    """What changed in AGENT's state between version OLD and NEW (default: the latest), as a unified diff.

    \b
    Examples:
      watchd state diff data-quality 3
      watchd state diff triage 1 2 --key ceo@example.com
    """
    from watchd.agents.transcript import inert
    from watchd.store.agent_state import current, version

    conn = _open(ctx, config_path)
    with contextlib.closing(conn):
        scope = _scope(conn, _agent(agent), watch, key)
        a = version(conn, scope, old)
        b = version(conn, scope, new) if new is not None else current(conn, scope)
    if a is None or b is None:
        fail(f"{scope.describe()} has no version {old if a is None else new}", "`state show --history` lists them")

    def lines(v: StateVersion) -> list[str]:
        return json.dumps(v.doc, indent=2, ensure_ascii=False, sort_keys=True).splitlines()

    changed = list(
        difflib.unified_diff(lines(a), lines(b), f"version {a.version}", f"version {b.version}", lineterm="")
    )
    if not changed:
        out.print(Text(f"versions {a.version} and {b.version} are the same"))
    for line in changed:
        out.print(Text(inert(line)))
