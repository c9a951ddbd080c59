"""`watchd runs`: what the anthropic agents did — each run's steps, tokens, cost, outcome and limit."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from typing import TYPE_CHECKING

import click
from rich.table import Table
from rich.text import Text

from watchd.cli.common import CONFIG_OPTION, dump_json, load, out
from watchd.store.runs import run_json

if TYPE_CHECKING:
    from watchd.store.runs import Run


@click.command()
@CONFIG_OPTION
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1), help="the latest N runs")
@click.option("--json", "as_json", is_flag=True, help="an array of run objects (documented in the README)")
def runs(config_path: str | None, limit: int, as_json: bool) -> None:
    """Agent runs, newest first: steps, tokens (input/output/cache), estimated cost, outcome, limit hit.

    \b
    Example:
      watchd runs --limit 5
      watchd runs --json | jq '[.[].cost_usd] | add'
    """
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
    table = Table(
        "started (UTC)",
        "agent",
        "handoff",
        "model",
        "outcome",
        "steps",
        "in",
        "out",
        "cache r/w",
        "cost",
        box=None,
        pad_edge=False,
    )
    for r in found:
        outcome = r.outcome or ("waiting" if r.limit_hit else "running")
        if r.limit_hit:
            outcome += f" ({r.limit_hit})"
        started = time.strftime("%m-%d %H:%M:%S", time.gmtime(r.started_at))
        cache = f"{r.cache_read_tokens:,}/{r.cache_write_tokens:,}"
        cells = (
            started,
            r.agent,
            r.handoff_id,
            r.model,
            outcome,
            str(r.steps),
            f"{r.input_tokens:,}",
            f"{r.output_tokens:,}",
            cache,
            f"${r.cost_usd:.4f}",
        )
        table.add_row(*(Text(c) for c in cells))
    out.print(table)
    total = sum(r.cost_usd for r in found)
    out.print(Text(f"{len(found)} runs, {sum(r.tokens for r in found):,} tokens, ${total:.4f} estimated"))
