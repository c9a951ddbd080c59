"""Deliveries: handoffs and the dead-letter queue."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, get_args

import click
from rich.text import Text

from watchd.cli.common import CONFIG_OPTION, dump_json, err, fail, http_get, load, one_line, out, progress_bar
from watchd.errors import DaemonNotRunning, WatchdError
from watchd.model import HandoffState

if TYPE_CHECKING:
    from watchd.model import Handoff


@click.command()
@CONFIG_OPTION
@click.option("--state", "state", type=click.Choice(get_args(HandoffState)), help="only handoffs in this state")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True, help="an array of handoff objects (fields in the README)")
def handoffs(config_path: str | None, state: str | None, limit: int, as_json: bool) -> None:
    """List handoffs, newest first: which watch fired, for which key, to which target, and how far
    delivery got.

    \b
    Examples:
      watchd handoffs --state dead
      watchd handoffs --json --limit 10 | jq -r '.[] | "\\(.watch) \\(.state)"'
    """
    from watchd.status import list_handoffs

    loaded = load(config_path)
    rows = list_handoffs(loaded, state, limit)
    if as_json:
        dump_json(rows)
        return
    if not rows:
        out.print("no handoffs" + (f" in state {state}" if state else ""))
        return
    from watchd.status import table_time

    # Two lines each rather than a table: watch ids and keys are never cut to fit a narrow terminal,
    # and the reason has a line of its own. Text, not markup: keys and reasons come from event data.
    zone, now = loaded.zone(), time.time()
    out.print(Text(f"times in {zone}"))
    for h in rows:
        key = f" [{h['key']}]" if h["key"] else ""
        tries = f" (attempt {h['attempt']})" if h["attempt"] > 1 else ""
        fired = table_time(h["fired_at"], zone, now)
        out.print(Text(f"{fired}  {h['watch']}{key} → {h['target']}  {h['state']}{tries}"))
        out.print(Text("    " + one_line(h["reason"], 200), style="dim"))


@click.group(invoke_without_command=True)
@CONFIG_OPTION
@click.pass_context
def dlq(ctx: click.Context, config_path: str | None) -> None:
    """Dead letters: list them, send one again (same id), or drop one for good.

    \b
    Examples:
      watchd dlq list
      watchd dlq replay h_3f2a…      # a unique prefix of the id is enough
      watchd dlq drop h_3f2a…
    """
    ctx.obj = {"config_path": config_path}
    if ctx.invoked_subcommand is None:
        ctx.invoke(dlq_list, config_path=config_path)


def _dlq_config(ctx: click.Context, config_path: str | None) -> str | None:
    """`--config` after the subcommand wins; before it (`watchd dlq --config P list`) works too."""
    return config_path or (ctx.obj or {}).get("config_path")


@dlq.command(name="list")
@CONFIG_OPTION
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True, help="an array of handoff objects, as `watchd handoffs --json`")
@click.pass_context
def dlq_list(ctx: click.Context, config_path: str | None, limit: int = 100, as_json: bool = False) -> None:
    """List dead handoffs and scheduled runs that exhausted their retries, newest first, with why
    they died (a run's output tail too).

    \b
    Example:
      watchd dlq list --json | jq -r '.[].id'
    """
    from watchd.explain.schedule import dead_runs_json
    from watchd.status import list_handoffs

    loaded = load(_dlq_config(ctx, config_path))
    rows = list_handoffs(loaded, "dead", limit)
    runs = dead_runs_json(loaded, limit)
    if as_json:
        dump_json(rows + runs)
        return
    for r in runs:
        n, tick = r["attempt"], r["tick"]
        attempts = f"{n} attempt{'s' if n != 1 else ''}"
        head = f"{r['id']}  schedule {r['schedule']} tick {tick}  {attempts}  died {r['updated_at']}"
        out.print(Text(head))
        out.print(Text("    " + one_line(r["last_error"] or "", 200), style="dim"))
        for line in (r["output_tail"] or "").splitlines()[-5:]:
            out.print(Text("    | " + one_line(line, 200), style="dim"))
    if runs and not rows:
        return
    if not rows:
        out.print("no dead letters")
        return
    # Two lines each rather than a table: the id (what `replay` and `drop` take) and the error are
    # never cut to fit a narrow terminal. Text, not markup: errors quote agents' output.
    for h in rows:
        n = h["attempt"]
        head = f"{h['id']}  {h['watch']} → {h['target']}  {n} attempt{'s' if n != 1 else ''}  died {h['updated_at']}"
        out.print(Text(head))
        out.print(Text("    " + one_line(h["last_error"], 200), style="dim"))


def _run_write(ctx: click.Context, config_path: str | None, action: str, ref: str) -> str:
    """Replay (through the running daemon, which runs it at once) or drop a dead scheduled run."""
    from watchd.cli.daemon_http import post_json
    from watchd.store import connect_existing, db_path
    from watchd.store.schedules import drop_dead_run, replay_dead_run

    loaded = load(_dlq_config(ctx, config_path))
    if action == "replay":
        try:
            status, answer = post_json(loaded, "/api/replay", {"id": ref})
        except DaemonNotRunning:
            pass  # written below: the daemon runs it when it starts
        else:
            if status != 202:
                raise WatchdError(str(answer.get("error") or f"watchd answered HTTP {status}"), answer.get("hint"))
            return f"replaying {answer['key']} (schedule {answer['schedule']}): it runs now with the same key"
    conn = connect_existing(db_path(loaded.state_dir))
    try:
        row = (replay_dead_run if action == "replay" else drop_dead_run)(conn, ref, time.time())
    finally:
        conn.close()
    if action == "replay":
        return f"replaying {row.key} (schedule {row.schedule}): it runs when watchd starts"
    return f"dropped {row.key} (schedule {row.schedule})"


def _dlq_write(ctx: click.Context, config_path: str | None, action: str, ref: str) -> tuple[Handoff, bool]:
    from watchd.store import connect_existing, db_path
    from watchd.store.outbox import drop_dead, replay_dead

    loaded = load(_dlq_config(ctx, config_path))
    conn = connect_existing(db_path(loaded.state_dir))
    try:
        h = (replay_dead if action == "replay" else drop_dead)(conn, ref, time.time())
    finally:
        conn.close()
    try:
        running = bool(http_get(loaded, "/healthz", timeout_s=1).get("pid"))
    except DaemonNotRunning:
        running = False
    return h, running


@dlq.command(name="replay")
@CONFIG_OPTION
@click.argument("refs", metavar="ID...", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="every dead letter `watchd dlq list` shows")
@click.pass_context
def dlq_replay(ctx: click.Context, config_path: str | None, refs: tuple[str, ...], replay_all: bool) -> None:
    """Deliver dead handoffs again, each with the same id, from attempt 1; or run dead scheduled runs
    (ids starting t_) again, with the same tick key, from attempt 1. Many at once show a progress
    bar on a terminal and end with a count; one that cannot be replayed is named, and the rest go on.

    \b
    Examples:
      watchd dlq replay h_3f2a9c
      watchd dlq replay t_81c0d4 h_77b1e0
      watchd dlq replay --all
    """
    if replay_all:
        from watchd.explain.schedule import dead_runs_json
        from watchd.status import list_handoffs

        loaded = load(_dlq_config(ctx, config_path))
        dead = list_handoffs(loaded, "dead", 1_000_000) + dead_runs_json(loaded, 1_000_000)
        refs = tuple(str(h["id"]) for h in dead) + refs
    if not refs:
        fail("name the dead letters to replay", hint="`watchd dlq list` shows them; --all replays every one")
    if len(refs) == 1:
        out.print(Text(_replay_one(ctx, config_path, refs[0])))
        return
    replayed, failed = 0, []
    with progress_bar("replaying dead letters") as progress:
        for n, ref in enumerate(dict.fromkeys(refs), 1):  # each once, in the order given
            try:
                _replay_one(ctx, config_path, ref)
                replayed += 1
            except WatchdError as exc:
                failed.append(f"{ref}: {exc.message}")
            if progress is not None:
                progress(n, len(refs))
    for line in failed:
        err.print(Text(f"not replayed: {line}"))
    some = f"replaying {replayed} dead letter{'s' if replayed != 1 else ''}"
    out.print(Text(some + (f"; {len(failed)} not replayed" if failed else "")))
    if failed:
        sys.exit(1)


def _replay_one(ctx: click.Context, config_path: str | None, ref: str) -> str:
    if ref.startswith("t_"):  # a scheduled run's dead letter
        return _run_write(ctx, config_path, "replay", ref)
    h, running = _dlq_write(ctx, config_path, "replay", ref)
    when = "the running daemon sends it within a few seconds" if running else "it is sent when watchd starts"
    return f"replaying {h.id} ({h.watch} → {h.target}): {when}"


@dlq.command(name="drop")
@CONFIG_OPTION
@click.argument("handoff_id", metavar="ID")
@click.pass_context
def dlq_drop(ctx: click.Context, config_path: str | None, handoff_id: str) -> None:
    """Give up on a dead handoff for good (state `dropped`; `replay` can still revive it).

    \b
    Example:
      watchd dlq drop h_3f2a9c
    """
    if handoff_id.startswith("t_"):
        out.print(Text(_run_write(ctx, config_path, "drop", handoff_id)))
        return
    h, _ = _dlq_write(ctx, config_path, "drop", handoff_id)
    out.print(Text(f"dropped {h.id} ({h.watch} → {h.target})"))
