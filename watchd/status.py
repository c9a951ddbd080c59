"""What `watchd status` and `watchd handoffs` report, read from the state files (read-only)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
from rich.console import Console
from rich.table import Table
from rich.text import Text

from watchd import shards
from watchd.agents.budget import budget_lines, budget_report
from watchd.agents.release import held_releases, release_lines
from watchd.config import Loaded, effective_schedules
from watchd.engine import Engine
from watchd.engine.base import Hold, hold_words, local_time
from watchd.explain.schedule import schedule_status
from watchd.jobs.backup import backup_line, last_backup
from watchd.jobs.builtin_watches import BUILTIN_FILE, all_watches
from watchd.jobs.canary import canary_line, last_canary
from watchd.model import iso, ts_from_iso
from watchd.sources.settings import type_name
from watchd.store import open_readonly, schedules
from watchd.store.agent_watches import active_watch_defs
from watchd.store.decisions import last_fired, would_fire_since
from watchd.store.engine_state import engine_view
from watchd.store.outbox import count_by_state, read_handoffs

HANDOFF_FIELDS = (
    "id",
    "watch",
    "watch_version",
    "kind",
    "key",
    "target",
    "trigger",
    "reason",
    "fired_at",
    "window",
    "evidence",
    "attempt",
    "state",
    "message",
    "last_error",
    "updated_at",
)


def list_handoffs(loaded: Loaded, state: str | None, limit: int) -> list[dict[str, Any]]:
    conn = open_readonly(loaded.state_dir)
    if conn is None:
        return []
    with conn:
        stored = read_handoffs(conn, state, limit)
    result = []
    for h in stored:
        item = {k: getattr(h, k) for k in HANDOFF_FIELDS}
        item["window"] = msgspec.to_builtins(h.window)
        item["updated_at"] = iso(h.updated_at)
        # When it is next tried (a retry's backoff, quiet hours); null once it no longer waits.
        item["next_attempt_at"] = iso(h.next_attempt_at) if h.state in ("pending", "retrying") else None
        result.append(item)
    return result


def collect(loaded: Loaded, daemon: dict[str, Any] | None, now: float) -> dict[str, Any]:
    report: dict[str, Any] = {
        "daemon": daemon or {"ok": False, "running": False},
        "watches": [],
        "handoffs": {},
        "dead_letters": 0,
        "state_dir": str(loaded.state_dir),
        "last_backup": last_backup(loaded),
        "last_canary": None,
        "tokens_today": budget_report(loaded.config, None, now),
        "held_releases": [],
        "schedules": schedule_status(loaded, None, now),
        "sources": source_status(loaded, daemon),
    }
    defs = all_watches(loaded)  # the built-in watches are shown like the files' ones
    conn = open_readonly(loaded.state_dir)
    fired: dict[str, float] = {}
    would_fire_today: dict[str, int] = {}
    engine = Engine(loaded.zone())
    if conn is not None:
        with conn:
            defs += active_watch_defs(conn, now)  # follow-up watches agents created, until they expire
            engine = engine_view(conn, defs, loaded.zone(), now)
            report["last_canary"] = last_canary(conn)
            report["schedules"] = schedule_status(loaded, conn, now)
            report["tokens_today"] = budget_report(loaded.config, conn, now)
            report["held_releases"] = held_releases(conn)
            fired = last_fired(conn)
            # Shadow mode's daily count: how often the watch would have handed off since local midnight.
            midnight = datetime.fromtimestamp(now, ZoneInfo(loaded.zone())).replace(
                hour=0, minute=0, second=0, microsecond=0
            )
            would_fire_today = would_fire_since(conn, midnight.timestamp())
            report["handoffs"] = count_by_state(conn)
            # Dead handoffs and scheduled runs that exhausted their retries: `watchd dlq` lists both.
            report["dead_letters"] = report["handoffs"].get("dead", 0) + schedules.count_dead_runs(conn)
    count = loaded.config.cluster.shards
    stepping = set(((daemon or {}).get("cluster") or {}).get("holding") or [])
    if count > 1:  # a schedule of a shard held elsewhere runs there: this store has its runs here only
        after = {name: s.after or () for name, s in effective_schedules(loaded.config).items()}
        placed = shards.schedule_shards(after, count)
        for sc in report["schedules"]:
            if sc["name"] in placed:
                sc.update(shard=placed[sc["name"]], run_here=placed[sc["name"]] in stepping)
    for d in defs:
        w = d.watch
        sharded: dict[str, Any] = {}
        if count > 1:  # [cluster] shards: a watch of a shard stepped elsewhere shows this store's last copy
            shard = shards.shard_of(w.id, count)
            sharded = {"shard": shard, "stepped_here": shard in stepping}
        report["watches"].append(
            {
                **sharded,
                "id": w.id,
                "kind": w.__struct_config__.tag,
                "mode": w.mode,
                "state": _watch_state(engine, w.id, w.enabled),
                "last_fired": iso(fired.get(w.id)),
                "next_due": iso(engine.watch_next_due(w.id)),
                "would_fire_today": would_fire_today.get(w.id, 0),
                "holds": holds_in_force(engine, w.id, now),
                "incidents": open_incidents(engine, w.id),
                "file": f"{d.file}:{d.line}" if d.line else d.file,  # built-in and agent-made watches have no line
            }
        )
    return report


def holds_in_force(engine: Engine, wid: str, now: float) -> list[dict[str, Any]]:
    """The snoozes and mutes in force (ack, snooze, mute: SPEC section 8), with who and until when."""
    meta, logic = engine.meta.get(wid), engine.watches.get(wid)
    if meta is None or logic is None:
        return []
    return [
        {
            "action": h.action,
            "key": h.key,
            "until": iso(h.until),
            "by": h.by,
            "text": hold_words(h, logic.zone),
        }
        for h in meta.holds
        if h.until > now
    ]


def open_incidents(engine: Engine, wid: str) -> list[dict[str, Any]]:
    """The incidents still open (a fire of a watch with `repeat`, or one whose incidents end by
    themselves, until it is acked or over: SPEC section 8), oldest first."""
    logic = engine.watches.get(wid)
    zone = logic.zone if logic is not None else engine.default_zone
    found = [
        {
            "key": key,
            "since": iso(st.incident_at),
            "since_local": local_time(st.incident_at, zone) if st.incident_at is not None else None,
            "reason": st.incident_reason,
            "repeats": st.repeats,
            "next_repeat": iso(st.next_repeat),
            "held": st.held,
        }
        for key, st in engine.keys.get(wid, {}).items()
        if st.incident is not None
    ]
    return sorted(found, key=lambda i: i["since"] or "")


def source_status(loaded: Loaded, daemon: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Each configured source's health as the running daemon reports it; without a daemon, only
    what the config says."""
    running = {s["name"]: s for s in (daemon or {}).get("sources") or []}
    out = []
    for name, settings in sorted(loaded.config.source.items()):
        found = running.get(name)
        out.append(found if found is not None else {"name": name, "type": type_name(settings), "running": False})
    return out


def source_state(s: dict[str, Any]) -> tuple[str, str]:
    """A source's health in words, and whether that is "ok", "bad" or "idle" (not running): what
    `status` prints and the dashboard colours."""
    if s.get("running") is False:
        return "not running", "idle"
    if s.get("silent"):
        return f"silent since {_to_second(s.get('silent_since'))}", "bad"
    if s.get("last_error") and (s.get("last_event_at") or "") < (s.get("last_error_at") or ""):
        return f"error: {s['last_error']}", "bad"
    return "ok", "ok"


def source_events(s: dict[str, Any]) -> str:
    """ "120 (3 refused)": events published, and requests refused (by any reason)."""
    if s.get("running") is False:
        return "-"
    refused = sum((s.get("rejections") or {}).values())
    return f"{s.get('events', 0)}" + (f" ({refused} refused)" if refused else "")


def _to_second(at: str | None) -> str:
    return re.sub(r"\.\d+Z$", "Z", at) if at else "-"


def source_lines(sources: list[dict[str, Any]], when: Callable[[str | None], str] = _to_second) -> Table:
    table = Table(box=None, pad_edge=False)
    whole_column(table, "source", [s["name"] for s in sources])
    for header in ("type", "events", "last event", "state"):
        table.add_column(header, no_wrap=header in ("type", "last event"))
    for s in sources:
        last = "-" if s.get("running") is False else when(s.get("last_event_at"))
        table.add_row(Text(s["name"]), s["type"], source_events(s), last, Text(source_state(s)[0]))
    return table


def _watch_state(engine: Engine, wid: str, enabled: bool) -> str:
    """The word for its state now: "disabled", or its kind's ("silent", "window_open", "ok")."""
    if not enabled:
        return "disabled"
    logic = engine.watches.get(wid)
    return logic.status(engine.keys.get(wid, {})) if logic is not None else "ok"


def cluster_lines(cluster: dict[str, Any]) -> list[str]:
    """Who decides in this deployment, since when, and its members (SPEC section 9)."""
    lease, name = cluster.get("lease"), cluster["name"]
    since = _to_second(lease["since"]) if lease else "-"
    if cluster["role"] == "holder":
        head = f"cluster {name}: this instance holds the lease (since {since})"
    elif lease:
        head = f"cluster {name}: standing by; {_member(lease)} holds the lease (since {since})"
    else:
        head = f"cluster {name}: standing by; no instance holds the lease (a standby takes it shortly)"
    holder = lease["instance"] if lease else None
    steps: dict[str, list[int]] = {}  # [cluster] shards: which each member steps
    shard_rows = cluster.get("shards") or []
    for row in shard_rows:
        steps.setdefault(row["holder"] or "", []).append(row["shard"])
    members = [
        f"  member {_member(m)}{' (holds the lease)' if m['instance'] == holder else ''}"
        + (f", shards {', '.join(map(str, steps.get(m['instance'], []))) or 'none'}" if len(shard_rows) > 1 else "")
        for m in cluster["members"]
    ]
    if len(shard_rows) > 1 and steps.get(""):
        members.append(f"  shards {', '.join(map(str, steps['']))}: held by no instance (taken shortly)")
    lag = cluster.get("lag") or {}
    backlog = (
        [f"  lag: {lag.get('events', 0)} events not yet decided, {lag.get('handoffs', 0)} handoffs not yet delivered"]
        if lag
        else []
    )
    return [head, *members, *backlog]


def _member(m: dict[str, Any]) -> str:
    return f"{m['host']} pid {m['pid']} state_dir {m['state_dir']}"


_INSTANT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z")


def in_zone(value: Any, zone: str) -> Any:
    """A copy of a report with every RFC 3339 UTC instant in it told as a wall time in `zone`
    ("2026-11-22 15:00:05 CET"): what `status` prints. `--json` keeps UTC."""
    tz = ZoneInfo(zone)

    def told(m: re.Match[str]) -> str:
        at = datetime.fromisoformat(m.group(0).replace("Z", "+00:00")).astimezone(tz)
        return at.strftime("%Y-%m-%d %H:%M:%S %Z")

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            return _INSTANT.sub(told, v)
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    return walk(value)


def table_time(at: str | None, zone: str, now: float) -> str:
    """An RFC 3339 UTC instant, short enough for an 80-column table, in `zone`: "14:05:09" today,
    "Dec 03 07:30" another day. The command says which zone once, above its tables."""
    if not at:
        return "-"
    tz = ZoneInfo(zone)
    try:
        local = datetime.fromisoformat(at.replace("Z", "+00:00")).astimezone(tz)
    except ValueError:  # not an instant after all: shown as it is rather than failing the command
        return at
    today = datetime.fromtimestamp(now, tz).date()
    return f"{local:%H:%M:%S}" if local.date() == today else f"{local:%b %d %H:%M}"


def whole_column(table: Table, header: str, values: list[str]) -> None:
    """A column of names a person types (watch ids, schedules): never cut or wrapped to fit."""
    table.add_column(header, no_wrap=True, min_width=max((len(v) for v in values), default=len(header)))


def render(report: dict[str, Any], console: Console, zone: str = "UTC", now: float | None = None) -> None:
    """The report for a person, its times in `zone` (the configured one; UTC with --utc)."""
    now = time.time() if now is None else now

    def t(at: str | None) -> str:
        return table_time(at, zone, now)

    utc = report
    report = in_zone(report, zone)  # the sentences' times; the tables' are shorter (t)
    console.print(f"times in {zone}" + ("" if zone == "UTC" else " (--utc for UTC)"), markup=False)
    d = report["daemon"]
    if d.get("ok"):
        console.print(f"daemon: running (pid {d.get('pid')}, up {d.get('uptime_s')}s), NATS connected")
    elif d.get("running") is False:
        console.print("daemon: not running (showing the state files)")
    else:
        console.print(
            f"daemon: UNHEALTHY (engine {'ok' if d.get('engine') else 'stalled'}, "
            f"NATS {'ok' if d.get('nats') else 'down'})"
        )
    cluster = d.get("cluster")
    if cluster and not cluster.get("embedded"):  # the embedded single-node default has no one else
        for line in cluster_lines(cluster):
            console.print(line, markup=False)
    builtin = [w for w in utc["watches"] if w["file"].startswith(BUILTIN_FILE)]
    mine = [w for w in utc["watches"] if w not in builtin]
    table = Table(box=None, pad_edge=False)
    whole_column(table, "watch", [w["id"] for w in mine])
    for header in ("kind", "state", "last fired", "next due"):
        table.add_column(header, no_wrap=header != "state")
    for w in mine:
        # The mode only when it is not live: "absent, shadow (3 today)".
        kind = w["kind"] + (f", shadow ({w['would_fire_today']} today)" if w["mode"] == "shadow" else "")
        kind += f", {w['mode']}" if w["mode"] not in ("live", "shadow") else ""
        state = w["state"] + (f", {len(w['incidents'])} open" if w.get("incidents") else "")  # open incidents
        if w.get("stepped_here") is False:
            state += f" (shard {w['shard']} elsewhere)"  # its state as this store last had it
        table.add_row(Text(w["id"]), kind, state, t(w["last_fired"]), t(w["next_due"]))
    console.print(table, soft_wrap=False)  # a table fits the terminal: its cells wrap, not its lines
    for w in utc["watches"]:
        for h in w.get("holds", []):
            # Told again in the zone of the rest (the JSON's text is in the watch's own zone).
            until = ts_from_iso(h["until"])
            hold = Hold(action=h["action"], until=until, by=h["by"], at=until, key=h["key"])
            console.print(f"{w['id']}: {hold_words(hold, zone)}", markup=False)
    if builtin:  # their own narrower table, so they never crowd the user's watches off an 80-column screen
        table = Table(box=None, pad_edge=False)
        whole_column(table, "built-in watch", [w["id"] for w in builtin])
        for header in ("state", "last fired", "next due"):
            table.add_column(header, no_wrap=True)
        for w in builtin:
            table.add_row(w["id"], w["state"], t(w["last_fired"]), t(w["next_due"]))
        console.print(table, soft_wrap=False)  # a table fits the terminal: its cells wrap, not its lines
    counts = ", ".join(f"{n} {s}" for s, n in sorted(report["handoffs"].items())) or "none"
    console.print(f"handoffs: {counts}; dead letters: {report['dead_letters']}")
    schedules = Table(box=None, pad_edge=False)
    whole_column(schedules, "schedule", [sc["name"] for sc in utc["schedules"]])
    schedules.add_column("does")
    schedules.add_column("next due", no_wrap=True)
    schedules.add_column("last outcome")
    for sc in utc["schedules"]:
        last = f"{sc['last_outcome']} ({t(sc['last_tick'])})" if sc["last_outcome"] else "-"
        if sc.get("run_here") is False:
            last += f" (shard {sc['shard']} elsewhere)"  # its runs here only
        due = t(sc["next_due"]) if sc["next_due"] else ("disabled" if not sc["enabled"] else "-")
        schedules.add_row(Text(sc["name"]), Text(sc["does"]), due, Text(last))
    console.print(schedules, soft_wrap=False)
    if utc.get("sources"):
        console.print(source_lines(utc["sources"], t), soft_wrap=False)
    console.print(backup_line(report["last_backup"]), markup=False)
    console.print(canary_line(report["last_canary"]), markup=False)
    for line in budget_lines(report["tokens_today"]):
        console.print(line, markup=False)
    for line in release_lines(report.get("held_releases") or []):
        console.print(line, markup=False)
