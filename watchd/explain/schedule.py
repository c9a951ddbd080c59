"""What the schedules did, read from the state db: `watchd explain --schedule NAME`, the schedules
section of `watchd status`, and the last runs under `watchd schedules`.

The verdict is about the *last due tick* (the latest tick at or before now): did it run, and how did
it end, or why was it skipped — or has watchd no record of it (it was not running). Rows come from
`schedule_ticks` (one per tick handled: started, done, failed, skipped with its reason), so this
module only reads; the planner in `ticks.py` says which tick was due and which is next.

`explain --schedule NAME --json` (stable)::

    {"schedule": str, "enabled": bool, "timing": str, "zone": str, "does": str, "version": int | null,
     "verdict": str, "fired": bool, "next_due": str | null, "after": [str] | null, "on": str | null,
     "followed_by": [str], "retries": int, "definition": {…history version…} | null,
     "timeline": [{"tick", "tick_local", "state", "reason", "summary", "started_at", "ended_at",
                   "duration_s", "lateness_s", "count", "key", "version", "trigger", "by",
                   "attempt", "next_attempt_at"}]}      # newest last, at most 50

A manual run (`trigger = "manual"`) is listed but is not a tick: the verdict is about the last due
tick, and says how a run now since then went.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import groupby
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table
from rich.text import Text

from watchd.config import DEFAULT_SCHEDULES, Loaded
from watchd.cron.schedule import format_duration, ticks_between
from watchd.cron.ticks import GRACE_S, Definition, State, define, next_tick_after, upcoming
from watchd.errors import WatchdError
from watchd.explain.watch import iso_local, span, time_until, when
from watchd.model import iso
from watchd.store import open_readonly
from watchd.store.db import check_readable
from watchd.store.history import Version, versions_of
from watchd.store.schedules import TickRow, dead_runs, stored_states, ticks_of

TIMELINE_LIMIT = 50
RAN = frozenset({"started", "done", "failed", "retrying", "dead"})


def all_schedules(loaded: Loaded) -> dict[str, tuple[Definition, bool]]:
    """Every schedule, disabled ones too (definition, enabled), built-in defaults first."""
    merged = {**DEFAULT_SCHEDULES, **loaded.config.schedule}
    out: dict[str, tuple[Definition, bool]] = {}
    for name, sched in merged.items():
        if sched.enabled or sched.cron or sched.every or sched.at:
            out[name] = (define(name, sched, loaded.zone()), sched.enabled)
        else:  # `enabled = false` alone: the default it turns off says what it would have done
            out[name] = (define(name, DEFAULT_SCHEDULES[name], loaded.zone()), False)
    return out


def open_state(state_dir: Path) -> sqlite3.Connection | None:
    """The state db read-only, or None when watchd has not run (or predates the cron layer)."""
    conn = open_readonly(state_dir)
    if conn is None:
        return None
    try:
        check_readable(conn, "schedule_ticks")
    except sqlite3.Error:
        conn.close()
        return None
    return conn


def read_states(conn: sqlite3.Connection | None) -> dict[str, tuple[int, State]]:
    return stored_states(conn) if conn is not None else {}


def read_ticks(conn: sqlite3.Connection | None, name: str, limit: int = TIMELINE_LIMIT) -> list[TickRow]:
    """The schedule's latest ticks, oldest first (none without a state db)."""
    return ticks_of(conn, name, limit) if conn is not None else []


def last_due_tick(defn: Definition, state: State, rows: list[TickRow], now: float) -> float | None:
    """The latest tick at or before `now` (jitter aside)."""
    if defn.kind == "at":
        return defn.at if defn.at is not None and defn.at <= now else None
    if defn.kind in ("every", "after"):  # its points move with each completion: the rows are the record
        return rows[-1].tick_at if rows else None
    assert defn.cron is not None
    end = datetime.fromtimestamp(now, UTC)
    for window_s in (3600.0, 86400.0, 32 * 86400.0, 400 * 86400.0):  # few ticks to walk, however frequent
        start = datetime.fromtimestamp(max(now - window_s, state.since - GRACE_S), UTC)
        if start >= end:
            return None
        ticks = list(ticks_between(defn.cron, start, end))
        if ticks:
            return ticks[-1].at.timestamp()
    return None


def next_due(defn: Definition, state: State) -> float | None:
    """The next tick after the last one handled (in the past when watchd is not running), jittered."""
    t = next_tick_after(defn, state, -math.inf)
    return None if t is None else t + defn.jitter_s


@dataclass
class ScheduleReport:
    defn: Definition
    enabled: bool
    version: int | None
    verdict: str
    fired: bool
    next_due: float | None
    rows: list[TickRow] = field(default_factory=list)
    followed_by: list[str] = field(default_factory=list)  # schedules that run after this one
    versions: list[Version] = field(default_factory=list)  # its definition history, oldest first

    def timeline(self) -> list[dict[str, Any]]:
        zone = self.defn.zone
        out = []
        for r in self.rows:
            data = msgspec.json.decode(r.data) if r.data else {}
            started, ended = r.started_at, r.ended_at
            ran = r.state in RAN
            out.append(
                {
                    "tick": iso(r.tick_at),
                    "tick_local": iso_local(r.tick_at, zone),
                    "state": r.state,
                    "reason": r.reason,
                    "summary": r.summary,
                    "started_at": iso(started) if ran else None,
                    "ended_at": iso(ended),
                    "duration_s": round(ended - started, 3) if ran and ended and started else None,
                    "lateness_s": round(started - r.tick_at - self.defn.jitter_s, 3) if ran and started else None,
                    "count": data.get("count", 1) if isinstance(data, dict) and r.state == "skipped" else None,
                    "key": r.key,
                    "version": r.version,
                    "trigger": r.trigger,
                    "by": _payload(r).get("by"),
                    "attempt": r.attempt if ran else None,
                    "next_attempt_at": iso(r.next_attempt_at),
                }
            )
        return out

    def to_json(self) -> dict[str, Any]:
        d = self.defn
        return {
            "schedule": d.name,
            "enabled": self.enabled,
            "timing": d.timing,
            "zone": d.zone,
            "does": d.what,
            "version": self.version,
            "verdict": self.verdict,
            "fired": self.fired,
            "next_due": iso(self.next_due) if self.enabled else None,
            "after": d.schedule.after,
            "on": d.schedule.on if d.schedule.after else None,
            "followed_by": self.followed_by,
            "retries": d.schedule.retries,
            "definition": self.versions[-1].to_json(content=False) if self.versions else None,
            "timeline": self.timeline(),
        }


def explain(
    defn: Definition, enabled: bool, version: int | None, state: State, rows: list[TickRow], now: float
) -> ScheduleReport:
    """The verdict on a schedule's last due tick, from its rows (oldest first)."""
    zone = defn.zone
    nxt = next_due(defn, state) if enabled else None
    report = ScheduleReport(defn, enabled, version, "", False, nxt, rows)
    if not enabled:
        report.verdict = "disabled (enabled = false)"
        return report
    own = [r for r in rows if r.trigger != "manual"]  # a manual run is not a tick
    due = last_due_tick(defn, state, own, now)
    recorded = [r.tick_at for r in own if r.tick_at <= now]
    if recorded and (due is None or max(recorded) > due + 1e-3):
        due = max(recorded)  # a tick the cron walk does not yield, e.g. one skipped in a DST gap
    row = next((r for r in reversed(own) if due is not None and abs(r.tick_at - due) < 1e-3), None)
    if due is None:
        report.verdict = "has not been due yet"
    elif row is None:
        report.verdict = f"no record of the {when(due, zone, now)} tick: watchd was not running then"
    else:
        tick = when(due, zone, now)
        report.fired = row.state in RAN
        report.verdict = _verdict_of(row, f"the {tick} tick", zone, now)
    manual = [r for r in rows if r.trigger == "manual" and (row is None or (r.started_at or 0) > (row.started_at or 0))]
    if manual:  # a run now since the last tick: how it went, after the tick's verdict
        m = manual[-1]
        by = _payload(m).get("by") or "someone"
        report.verdict += f"; {_verdict_of(m, f'the run now by {by} at {when(m.tick_at, zone, now)}', zone, now)}"
    if nxt is not None:
        report.verdict += f"; next due {when(nxt, zone, now)}, {time_until(nxt, now)}"
    return report


def _verdict_of(row: TickRow, what: str, zone: str, now: float) -> str:
    """How one run (or skip) went, e.g. "ran the 06:00 tick: done in 2s — exit 0"."""
    state, summary = row.state, row.summary or ""
    if state == "started":
        return f"running {what} since {when(row.started_at or row.tick_at, zone, now)}"
    if state == "done":
        return f"ran {what}: done in {span(_took(row))} — {summary}"
    if state == "failed":
        return f"ran {what}: FAILED — {summary}"
    if state == "retrying":
        again = when(row.next_attempt_at or now, zone, now)
        return f"ran {what}: attempt {row.attempt} FAILED — {summary}; next attempt {again}"
    if state in ("dead", "dropped"):
        tail = f"(`watchd dlq replay {row.key}` runs it again)" if state == "dead" else "(dropped)"
        return f"ran {what}: DEAD LETTER after {row.attempt} attempts — {summary} {tail}"
    if state == "waiting":
        return f"{what}: {summary}"
    return f"skipped {what} ({row.reason}): {summary}"


def explain_from_db(loaded: Loaded, name: str, now: float) -> ScheduleReport:
    known = all_schedules(loaded)
    if name not in known:
        hint = f"known schedules: {', '.join(sorted(known))}" if known else "add a [schedule.<name>] to the config"
        raise WatchdError(f"no schedule named {name!r}", hint=hint + " (`watchd schedules` lists them)")
    defn, enabled = known[name]
    conn = open_state(loaded.state_dir)
    try:
        version, state = read_states(conn).get(name, (None, State(since=now)))
        rows = read_ticks(conn, name)
        versions = versions_of(conn, name, "schedule") if conn is not None else []
    finally:
        if conn is not None:
            conn.close()
    report = explain(defn, enabled, version, state, rows, now)
    report.followed_by = followers(known, name)
    report.versions = versions
    return report


def followers(known: dict[str, tuple[Definition, bool]], name: str) -> list[str]:
    """The schedules that run after `name`: `email (on success)`."""
    return [f"{n} (on {d.schedule.on})" for n, (d, on) in known.items() if on and name in (d.schedule.after or ())]


def _payload(r: TickRow) -> dict[str, Any]:
    data = msgspec.json.decode(r.payload) if r.payload else {}
    return data if isinstance(data, dict) else {}


def schedule_status(loaded: Loaded, conn: sqlite3.Connection | None, now: float) -> list[dict[str, Any]]:
    """`status`: each schedule's next due tick and how its last run ended."""
    try:
        states = read_states(conn)
    except sqlite3.Error:  # a state db no daemon with the cron layer has opened yet
        conn, states = None, {}
    out = []
    for name, (defn, enabled) in all_schedules(loaded).items():
        state = states.get(name, (None, State(since=now)))[1]
        rows = read_ticks(conn, name, 1)
        last = rows[-1] if rows else None
        out.append(
            {
                "name": name,
                "timing": defn.timing,
                "does": defn.what,
                "enabled": enabled,
                "next_due": iso(next_due(defn, state)) if enabled else None,
                "last_tick": iso(last.tick_at) if last else None,
                "last_outcome": last.state if last else None,
                "last_summary": last.summary if last else None,
            }
        )
    return out


def render(report: ScheduleReport, console: Console, now: float) -> None:
    d = report.defn
    version = f", version {report.version}" if report.version else ""
    console.print(Text(f"schedule {d.name}: {d.timing} in {d.zone} — {d.what}{version}"))
    if report.versions:
        v = report.versions[-1]
        git = v.git_words()
        since = when(v.at, d.zone, now)
        console.print(Text(f"version {v.version} since {since} — {v.source}" + (f" — {git}" if git else "")))
    if d.schedule.retries:
        console.print(
            Text(f"retries: {d.schedule.retries}, backoff {d.schedule.retry_backoff} (doubling, with jitter)")
        )
    if report.followed_by:
        console.print(Text(f"followed by: {', '.join(report.followed_by)}"))
    console.print(Text(f"verdict: {report.verdict}", style="bold"))
    if not report.rows:
        console.print("no ticks recorded")
        return
    table = Table("tick", "outcome", "detail", box=None)
    # Runs of skips with one reason are one line: a 3-day outage is not 864 lines.
    for (state, reason), group in groupby(report.rows, key=lambda r: (r.state, r.reason)):
        items = list(group)
        if state != "skipped":
            for r in items:
                table.add_row(Text(when(r.tick_at, d.zone, now)), Text(_outcome(r)), Text(r.summary or ""))
            continue
        count = sum(_count(r) for r in items)
        first, last = items[0].tick_at, items[-1].tick_at
        tick = when(last, d.zone, now) if count == 1 else f"{when(first, d.zone, now)} … {when(last, d.zone, now)}"
        label = f"skipped ({reason})" + (f" ×{count}" if count > 1 else "")
        table.add_row(Text(tick), Text(label), Text(items[-1].summary or ""))
    console.print(table, soft_wrap=False)  # a table fits the terminal: its cells wrap, not its lines


def _count(row: TickRow) -> int:
    data = msgspec.json.decode(row.data) if row.data else {}
    return int(data.get("count", 1)) if isinstance(data, dict) else 1


def _outcome(r: TickRow) -> str:
    how = ""
    if r.trigger == "manual":
        how = f" (run now by {_payload(r).get('by') or 'someone'})"
    elif r.trigger == "after":
        ups = ", ".join(f"{u['schedule']} {u['outcome']}" for u in _payload(r).get("upstream") or [])
        how = f" (after {ups})" if ups else " (after)"
    if r.attempt > 1 or r.state in ("retrying", "dead"):
        how += f" attempt {r.attempt}"
    return _state_text(r) + how


def _state_text(r: TickRow) -> str:
    if r.state == "started":
        return "running"
    if r.state in ("waiting", "skipped"):
        return r.state
    late = r.started_at - r.tick_at if r.started_at else 0.0
    took = f" in {span(_took(r))}" if r.ended_at and r.started_at else ""
    return f"{r.state}{took}" + (f" ({span(late)} late)" if late >= 60 else "")


def _took(r: TickRow) -> float:
    """How long a run that ended took."""
    return (r.ended_at or 0.0) - (r.started_at or 0.0)


def _root_of(known: dict[str, tuple[Definition, bool]], name: str) -> tuple[str, str]:
    """The schedule with timing of its own that `name` runs after (itself when it has timing), and
    the chain as words: "after report (on success)", "after report (on success) after extract …"."""
    words: list[str] = []
    seen = {name}
    while (after := known[name][0].schedule.after) and after[0] in known and after[0] not in seen:
        on = known[name][0].schedule.on
        words.append(f"after {', '.join(after)} (on {on})")
        name = after[0]
        seen.add(name)
    return name, " ".join(words)


def upcoming_ticks(loaded: Loaded, start: float, count: int) -> tuple[list[dict[str, Any]], list[str]]:
    """The next `count` ticks of each enabled schedule after `start`, soonest first; and the disabled."""
    conn = open_state(loaded.state_dir)
    try:
        states = read_states(conn)
    finally:
        if conn is not None:
            conn.close()
    ticks: list[dict[str, Any]] = []
    disabled: list[str] = []
    known = all_schedules(loaded)
    for name, (defn, enabled) in known.items():
        if not enabled:
            disabled.append(name)
            continue
        root, chain = _root_of(known, name)
        rdefn = known[root][0]
        state = states.get(root, (None, None))[1]
        for at, note in upcoming(rdefn, state, start, count):
            if chain:  # runs after its upstream's run for this tick
                note = f"{chain}; {note}" if note else chain
            if rdefn.jitter_s:
                later = f"runs {format_duration(round(rdefn.jitter_s))} later (jitter)"
                note = f"{note}; {later}" if note else later
            ticks.append(
                {
                    "schedule": name,
                    "at_utc": iso(at),
                    "at_local": iso_local(at, defn.zone),
                    "note": note,
                    "_at": at,
                    "_zone": defn.zone,
                }
            )
    ticks.sort(key=lambda t: (t["_at"], t["schedule"]))
    return ticks, disabled


def dead_runs_json(loaded: Loaded, limit: int) -> list[dict[str, Any]]:
    """Scheduled runs that exhausted their retries, newest first, for `watchd dlq` beside the dead
    handoffs: `id` (what replay and drop take), `watch` = "schedule:NAME", `kind` = "schedule",
    `target` = "run", `state`, `attempt`, `last_error`, `updated_at`, and `schedule`, `tick`,
    `trigger`, `output_tail`."""
    conn = open_state(loaded.state_dir)
    if conn is None:
        return []
    try:
        try:
            rows = dead_runs(conn, limit)
        except sqlite3.Error:  # a state file from before dead letters of runs
            return []
    finally:
        conn.close()
    out = []
    for r in rows:
        data = msgspec.json.decode(r.data) if r.data else {}
        out.append(
            {
                "id": r.key,
                "watch": f"schedule:{r.schedule}",
                "kind": "schedule",
                "target": "run",
                "state": r.state,
                "attempt": r.attempt,
                "last_error": r.summary,
                "updated_at": iso(r.ended_at),
                "schedule": r.schedule,
                "tick": iso(r.tick_at),
                "trigger": r.trigger,
                "output_tail": data.get("output_tail") if isinstance(data, dict) else None,
            }
        )
    return out
