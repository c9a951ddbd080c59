"""What each page shows, gathered by the functions `status`, `explain`, `schedules`, `handoffs`
and `runs` use, from the state database opened read-only (WAL readers never block the daemon).
Synchronous: the pages call these on a worker thread."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from watchd import status
from watchd.agents.release import release_rows
from watchd.agents.transcript import transcript
from watchd.config import Loaded, resolved_secrets
from watchd.errors import WatchdError
from watchd.explain import schedule as explain_schedule
from watchd.explain import watch as explain_watch
from watchd.jobs.backup import last_backup
from watchd.jobs.builtin_watches import all_watches
from watchd.jobs.canary import last_canary
from watchd.store import open_readonly
from watchd.store.agent_watches import active_watch_defs
from watchd.store.engine_state import engine_view
from watchd.store.runs import find_runs, list_runs, run_json, step_records
from watchd.web import timeline


def overview(loaded: Loaded, health: dict[str, Any], now: float) -> dict[str, Any]:
    return status.collect(loaded, health, now)


@dataclass
class WatchPage:
    report: dict[str, Any]  # explain --json
    svg: str
    waiting: str
    holds: list[dict[str, Any]]  # the snoozes and mutes in force, with who and until when
    incidents: list[dict[str, Any]]  # the incidents still open, per key


def watch_page(loaded: Loaded, watch_id: str, now: float, key: str | None = None) -> WatchPage:
    """Raises WatchdError (with a did-you-mean) for a watch that does not exist."""
    defs = all_watches(loaded)
    conn = open_readonly(loaded.state_dir)
    if conn is None:
        if not any(d.watch.id == watch_id for d in defs):
            raise explain_watch.suggest(watch_id, (d.watch.id for d in defs))
        raise WatchdError("watchd has not recorded anything yet", hint="wait for the first event or tick")
    with conn:
        defs += active_watch_defs(conn, now)
        report = explain_watch.explain_from_db(conn, defs, loaded.zone(), watch_id, now=now, key=key)
        engine = engine_view(conn, [d for d in defs if d.watch.id == watch_id], loaded.zone(), now)
    holds = [h for h in status.holds_in_force(engine, watch_id, now) if key is None or h["key"] in (None, key)]
    incidents = [i for i in status.open_incidents(engine, watch_id) if key is None or i["key"] == key]
    marks = [timeline.Mark(d.at, str(d.verdict), d.key, d.reason) for d in report.timeline]
    svg = timeline.render(marks, now, report.next_due, report.info.zone, report.verdict)
    return WatchPage(report.to_json(), svg, report.verdict, holds, incidents)


def schedules_page(loaded: Loaded, now: float, count: int = 3) -> dict[str, Any]:
    conn = open_readonly(loaded.state_dir)
    try:
        rows = explain_schedule.schedule_status(loaded, conn, now)
    finally:
        if conn is not None:
            conn.close()
    ticks, disabled = explain_schedule.upcoming_ticks(loaded, now, count)
    for t in ticks:  # the private sort keys are not for display
        t.pop("_at", None)
        t.pop("_zone", None)
    return {"schedules": rows, "upcoming": ticks, "disabled": disabled}


def schedule_detail(loaded: Loaded, name: str, now: float) -> dict[str, Any]:
    return explain_schedule.explain_from_db(loaded, name, now).to_json()


def handoffs_page(loaded: Loaded, state: str | None, limit: int = 100) -> list[dict[str, Any]]:
    return status.list_handoffs(loaded, state, limit)


def runs_page(loaded: Loaded, limit: int = 50) -> list[dict[str, Any]]:
    conn = open_readonly(loaded.state_dir)
    if conn is None:
        return []
    with conn:
        return [run_json(r) for r in list_runs(conn, limit)]


def run_detail(loaded: Loaded, run_id: str) -> dict[str, Any] | None:
    """The run's transcript as `watchd runs show RUN --json` prints it (secrets the config names
    replaced), and that JSON as text for the page to show whole."""
    conn = open_readonly(loaded.state_dir)
    if conn is None:
        return None
    with conn:
        try:
            runs = [r for r in find_runs(conn, run_id) if r.id == run_id]
            steps = step_records(conn, runs[0].handoff_id) if runs else []
        except sqlite3.OperationalError:  # a state file from before agent runs
            return None
    if not runs:
        return None
    t = transcript(runs, steps, resolved_secrets(loaded.config))
    return {"transcript": t, "json": json.dumps(t, indent=2, ensure_ascii=False)}


def maintenance(loaded: Loaded) -> dict[str, Any]:
    conn = open_readonly(loaded.state_dir)
    canary = None
    agents = [f"agent.{n}" for n in loaded.config.agent]
    releases = release_rows(agents, None)
    if conn is not None:
        with conn:
            canary = last_canary(conn)
            releases = release_rows(agents, conn)
    return {"backup": last_backup(loaded), "canary": canary, "releases": releases}
