"""`watchd run-now SCHEDULE [--wait]`: run a schedule's job now, through the running daemon's
scheduler (POST /api/run-now on its listener), as a run of its own (`trigger = "manual"`, who
asked); with --wait, follow it to its outcome (retries included) and exit with it."""

from __future__ import annotations

import time
from typing import Any

import click
import msgspec
from rich.text import Text

from watchd.cli.answers import local_user
from watchd.cli.common import CONFIG_OPTION, dump_json, err, fail, http_get, load, one_line, out
from watchd.config import Loaded
from watchd.errors import DaemonNotRunning
from watchd.model import iso

POLL_S = 0.1  # how often --wait reads the run's row
ALIVE_EVERY_S = 2.0  # how often --wait makes sure the daemon still runs
FINAL = ("done", "failed", "dead")


@click.command("run-now")
@click.argument("schedule")
@click.option("--wait", is_flag=True, help="wait for the outcome (retries included) and exit with it")
@click.option("--json", "as_json", is_flag=True, help="print the run as JSON (with --wait: its outcome too)")
@CONFIG_OPTION
def run_now(schedule: str, wait: bool, as_json: bool, config_path: str | None) -> None:
    """Run SCHEDULE's job now, through the same path as a tick, as a run of its own.

    The run is recorded with `trigger = "manual"` and who asked (`explain --schedule` shows it); it
    has a key of its own, so the schedule's ticks go on as planned. Schedules that run after it
    (`after = [...]`) follow it. With --wait the command follows the run to its outcome, retries
    included, and exits 0 when it succeeds, else with the command's exit code (or 1).

    \b
    Examples:
      watchd run-now backup
      watchd run-now report --wait && echo "the report went out"
    """
    from watchd.cli.daemon_http import post_json

    loaded = load(config_path)
    try:
        status, answer = post_json(loaded, "/api/run-now", {"schedule": schedule, "by": local_user()})
    except DaemonNotRunning as exc:
        fail(exc.message, "schedules run in the daemon: start it with `watchd run`, or check [http] listen")
    if status != 202:
        fail(str(answer.get("error") or f"watchd answered HTTP {status}"), answer.get("hint"))
    key = str(answer["key"])
    if not wait:
        if as_json:
            dump_json(answer)
        else:
            out.print(Text(f"{schedule}: started {key} (watchd explain --schedule {schedule} shows it)"))
        return
    if not as_json:
        err.print(Text(f"{schedule}: started {key}; waiting for the outcome"))
    row = _follow(loaded, key, quiet=as_json)
    data = msgspec.json.decode(row["data"]) if row.get("data") else {}
    code = 0 if row["state"] == "done" else _exit_code(data)
    if as_json:
        dump_json({**answer, "state": row["state"], "attempt": row["attempt"], "summary": row["summary"], **data})
    else:
        out.print(Text(f"{schedule}: {row['state']} — {row['summary']}"))
        tail = data.get("output_tail") if isinstance(data, dict) else None
        if tail and row["state"] != "done":
            out.print(Text(tail), style="dim")
    raise SystemExit(code)


def _exit_code(data: Any) -> int:
    code = data.get("exit_code") if isinstance(data, dict) else None
    return code if isinstance(code, int) and 0 < code < 256 else 1


def _follow(loaded: Loaded, key: str, *, quiet: bool) -> dict[str, Any]:
    """Read the run's row until it ends for good; each failed attempt is said as it happens."""
    from watchd.explain.schedule import open_state
    from watchd.store.schedules import tick_row

    said, checked = 0, time.monotonic()
    while True:
        conn = open_state(loaded.state_dir)
        row = tick_row(conn, key) if conn is not None else None
        if conn is not None:
            conn.close()
        if row is not None:
            if row.state in FINAL:
                return {"state": row.state, "attempt": row.attempt, "summary": row.summary, "data": row.data}
            if row.state == "retrying" and row.attempt > said:
                said = row.attempt
                if not quiet:
                    line = f"attempt {row.attempt} failed: {one_line(row.summary or '', 200)}"
                    err.print(Text(f"{line}; next attempt at {iso(row.next_attempt_at)}"))
        if time.monotonic() - checked > ALIVE_EVERY_S:
            checked = time.monotonic()
            try:
                http_get(loaded, "/healthz", timeout_s=2)
            except DaemonNotRunning:
                fail(f"watchd stopped while run {key} was under way", "it is retried or failed when watchd starts")
        time.sleep(POLL_S)
