"""`watchd release`: each agent's current, last-good and held release; `promote` and `rollback` by hand
(through the running daemon, which holds and releases the agent's handoffs)."""

from __future__ import annotations

import contextlib
from typing import Any

import click
from rich.text import Text

from watchd.cli.common import CONFIG_OPTION, dump_json, fail, load, out


def _agent(name: str) -> str:
    return name if name.startswith("agent.") else f"agent.{name}"


def release_rows(config_path: str | None) -> list[dict[str, Any]]:
    """One object per configured agent (and any recorded one no longer configured), sorted by name."""
    from watchd.agents.release import release_rows as rows_of
    from watchd.store import open_readonly

    loaded = load(config_path)
    conn = open_readonly(loaded.state_dir)
    configured = [f"agent.{n}" for n in loaded.config.agent]
    if conn is None:
        return rows_of(configured, None)
    with contextlib.closing(conn):
        return rows_of(configured, conn)


def _named(release: dict[str, Any] | None) -> str:
    if not release:
        return "(none)"
    channel = " (stable_command)" if release.get("channel") == "stable" else ""
    return f"{release['label']} [{release['digest']}]{channel}"


@click.group(invoke_without_command=True)
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="an array of {agent, current, last_good, held, held_handoffs}")
@click.pass_context
def release(ctx: click.Context, config_path: str | None, as_json: bool) -> None:
    """Each agent's current, last-good and held release; promote or roll back one by hand.

    watchd fingerprints each agent's release at start and after a reload and canaries a changed
    one before it gets a handoff. A release that fails is held: its handoffs wait (pending,
    `release_failed`) until it is promoted or rolled back.

    \b
    Examples:
      watchd release
      watchd release --json
      watchd release promote claw       # take the held release as good; its handoffs go out
      watchd release rollback claw      # run its rollback (or stable_command) and canary it
    """
    ctx.obj = {"config_path": config_path}
    if ctx.invoked_subcommand is not None:
        return
    rows = release_rows(config_path)
    if as_json:
        dump_json(rows)
        return
    if not rows:
        out.print(Text("no agents configured"))
        return
    for r in rows:
        state = "HELD" if r["held"] else ("ok" if r["current"] and r["last_good"] else "unchecked")
        if r["current"] and r["last_good"] and r["current"]["digest"] != r["last_good"]["digest"] and not r["held"]:
            state = "unchecked"
        gone = "" if r["configured"] else " (no longer configured)"
        out.print(Text(f"{r['agent']}: {state}{gone}"))
        out.print(Text(f"  current:   {_named(r['current'])}"))
        out.print(Text(f"  last good: {_named(r['last_good'])}"))
        if r["held"]:
            held = r["held"]
            out.print(Text(f"  held since {held['since']}: {held['reason']}"))
            if held.get("rollback"):
                out.print(Text(f"  rollback: {held['rollback']}"))
            out.print(Text(f"  {r['held_handoffs']} handoffs waiting (release_failed)"))


def _act(ctx: click.Context, agent: str, action: str, config_path: str | None, as_json: bool) -> None:
    from watchd.cli.answers import local_user
    from watchd.cli.daemon_http import post_json
    from watchd.errors import DaemonNotRunning

    loaded = load(config_path or (ctx.obj or {}).get("config_path"))
    body = {"agent": _agent(agent), "action": action, "by": local_user()}
    try:
        # a rollback runs the agent's rollback command and a canary: give it the agent's time
        status, answer = post_json(loaded, "/api/release", body, timeout_s=900)
    except DaemonNotRunning as exc:
        fail(exc.message, "releases are acted on by the daemon: start it with `watchd run`, or check [http] listen")
    if status != 200:
        fail(str(answer.get("error") or f"watchd answered HTTP {status}"), answer.get("hint"))
    if as_json:
        dump_json(answer)
        return
    out.print(Text(str(answer.get("message") or f"{action}: done")))
    record = answer.get("record") or {}
    if record.get("held"):
        raise SystemExit(1)  # a rollback that did not help: the agent is still held


@release.command("promote")
@click.argument("agent")
@click.option("--json", "as_json", is_flag=True, help="print the daemon's answer as JSON")
@CONFIG_OPTION
@click.pass_context
def promote(ctx: click.Context, agent: str, as_json: bool, config_path: str | None) -> None:
    """Take AGENT's current (or held) release as good, without a canary: its held handoffs go out.

    \b
    Example:
      watchd release promote claw
    """
    _act(ctx, agent, "promote", config_path, as_json)


@release.command("rollback")
@click.argument("agent")
@click.option("--json", "as_json", is_flag=True, help="print the daemon's answer as JSON")
@CONFIG_OPTION
@click.pass_context
def rollback(ctx: click.Context, agent: str, as_json: bool, config_path: str | None) -> None:
    """Roll AGENT back: run its `rollback` command (or switch to its `stable_command`) and canary it.

    Its handoffs wait meanwhile; when the canary passes they go out, else they stay held and the
    command exits 1.

    \b
    Example:
      watchd release rollback claw
    """
    _act(ctx, agent, "rollback", config_path, as_json)
