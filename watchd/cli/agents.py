"""`watchd runs`: what the anthropic agents did — each run's steps, tokens, cost, outcome and limit."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from typing import TYPE_CHECKING

import click
from rich.text import Text

from watchd.cli.common import CONFIG_OPTION, dump_json, fail, load, one_line, out
from watchd.model import iso
from watchd.store.runs import run_json

if TYPE_CHECKING:
    from watchd.store.runs import Run


@click.group(invoke_without_command=True)
@CONFIG_OPTION
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1), help="the latest N runs")
@click.option("--json", "as_json", is_flag=True, help="an array of run objects (documented in the README)")
@click.pass_context
def runs(ctx: click.Context, config_path: str | None, limit: int, as_json: bool) -> None:
    """Agent runs, newest first: steps, tokens (input/output/cache), estimated cost, outcome, limit hit.

    \b
    Examples:
      watchd runs --limit 5
      watchd runs --json | jq '[.[].cost_usd] | add'
      watchd runs show r_3f2a…       # one run's whole transcript
    """
    ctx.obj = {"config_path": config_path}
    if ctx.invoked_subcommand is None:
        list_runs_cmd(config_path, limit, as_json)


def list_runs_cmd(config_path: str | None, limit: int, as_json: bool) -> None:
    from watchd.store import open_readonly
    from watchd.store.runs import list_runs

    loaded = load(config_path)
    found: list[Run] = []
    conn = open_readonly(loaded.state_dir)
    if conn is not None:
        with contextlib.closing(conn), contextlib.suppress(sqlite3.OperationalError):  # no runs table yet
            found = list_runs(conn, limit)
    if as_json:
        dump_json([run_json(r) for r in found])
        return
    if not found:
        out.print("no agent runs recorded")
        return
    from watchd.status import table_time

    # Two lines each rather than a ten-column table, which an 80-column terminal would cut to
    # pieces: what ran and how it ended, then the handoff (what `runs show` takes), the cost and
    # the tokens (cache: read/written).
    zone, now = loaded.zone(), time.time()
    out.print(Text(f"times in {zone}"))
    for r in found:
        outcome = r.outcome or ("waiting" if r.limit_hit else "running")
        if r.limit_hit:
            outcome += f" ({r.limit_hit})"
        model = " → ".join([r.escalations[0]["from"], *(e["to"] for e in r.escalations)]) if r.escalations else r.model
        started = table_time(iso(r.started_at), zone, now)
        steps = f"{r.steps} step{'s' if r.steps != 1 else ''}"
        out.print(Text(f"{started}  {r.agent}  {model}  {outcome}  {steps}"))
        tokens = (
            f"{_count(r.input_tokens)} in {_count(r.output_tokens)} out "
            f"{_count(r.cache_read_tokens)}/{_count(r.cache_write_tokens)} cache"  # read/written
        )
        out.print(Text(f"    {r.handoff_id}  ${r.cost_usd:.4f}  {tokens}", style="dim"))
    for r in found:  # below the table, where a narrow terminal cuts nothing
        for e in r.escalations:
            out.print(
                Text(f"{r.id}: escalated at step {e['step']} from {e['from']} to {e['to']}: {one_line(e['reason'])}")
            )
    total = sum(r.cost_usd for r in found)
    out.print(Text(f"{len(found)} runs, {sum(r.tokens for r in found):,} tokens, ${total:.4f} estimated"))


def _count(n: int) -> str:
    """Tokens in a few characters: 980, 12.3k, 4.56M."""
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    if n >= 10_000:
        return f"{n / 1e3:.1f}k"
    return f"{n:,}"


@runs.command(name="show")
@CONFIG_OPTION
@click.argument("run")
@click.option("--json", "as_json", is_flag=True, help="the transcript as one object (documented in the README)")
@click.pass_context
def runs_show(ctx: click.Context, config_path: str | None, run: str, as_json: bool) -> None:
    """A run's whole transcript: each step's request, the model's output, tool calls and results, tokens, cost.

    RUN is a run id (a unique prefix is enough) or a handoff id (every run of that handoff). Event data
    and model output are printed as data, with control characters escaped; configured secrets are
    replaced by ***.

    \b
    Examples:
      watchd runs show r_3f2a
      watchd runs show h_0123456789abcdef --json | jq '.steps[].output.tool_calls'
    """
    from watchd.agents.transcript import transcript, transcript_lines
    from watchd.config import resolved_secrets
    from watchd.store import open_readonly
    from watchd.store.runs import find_runs, step_records

    loaded = load(config_path or (ctx.obj or {}).get("config_path"))
    conn = open_readonly(loaded.state_dir)
    if conn is None:
        fail("watchd has not recorded any agent run yet", "runs appear once an agent has handled a handoff")
    with contextlib.closing(conn):
        try:
            found = find_runs(conn, run)
            handoffs = sorted({r.handoff_id for r in found})
            if len(handoffs) > 1:
                fail(
                    f"{run!r} names runs of {len(handoffs)} handoffs",
                    "give more of the run id: " + ", ".join(r.id for r in found[:5]),
                )
            steps = step_records(conn, handoffs[0]) if found else []
        except sqlite3.OperationalError:
            found = []
    if not found:
        fail(f"no agent run {run!r}", "`watchd runs` lists the runs with their ids")
    t = transcript(found, steps, resolved_secrets(loaded.config))
    if as_json:
        dump_json(t)
        return
    for line in transcript_lines(t):
        out.print(Text(line))  # Text, never markup: the transcript quotes event data and model output
