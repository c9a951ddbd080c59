"""Human output for `watchd explain`: rich tables that read well in 80 columns and in journalctl.

Event data is printed as plain `Text`, never as markup, so a subject or reason cannot style or
hide anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from zoneinfo import ZoneInfo

from rich.console import Console
from rich.table import Table
from rich.text import Text

from watchd.explain.watch import UTC_NAMES, EventReport, WatchReport, time_until, when
from watchd.model import instant
from watchd.store.outbox import HandoffRow


def _local_and_utc(ts: float, zone: str) -> tuple[str, str]:
    """Compact cells for a table: the local date and time, and the UTC time (its date only when
    it differs). Within 30 days of retention, the year adds nothing but width."""
    local = instant(ts, ZoneInfo(zone))
    utc = instant(ts)
    utc_text = f"{utc:%H:%M:%S}" if utc.date() == local.date() else f"{utc:%m-%d %H:%M:%S}"
    return f"{local:%m-%d %H:%M:%S}", utc_text


def _time_columns(table: Table, zone: str) -> bool:
    if zone in UTC_NAMES:
        table.add_column("UTC", no_wrap=True)
        return False
    table.add_column(zone, no_wrap=True)
    table.add_column("UTC", no_wrap=True)
    return True


def _time_cells(ts: float, zone: str, both: bool) -> list[Text]:
    local, utc = _local_and_utc(ts, zone)
    return [Text(local), Text(utc)] if both else [Text(local)]


def _handoff_table(console: Console, hs: Sequence[HandoffRow]) -> None:
    cluster = any(h.decided_by for h in hs)  # a cluster's instances: say which one decided each
    columns = ["handoff", "target", "state", "try", "last error"] + (["decided by"] if cluster else [])
    table = Table(*columns, box=None, pad_edge=False)
    for h in hs:
        cells = [h.id, h.target, h.state, str(h.attempt), h.last_error or ""]
        cells += [h.decided_by or ""] if cluster else []
        table.add_row(*(Text(c) for c in cells))
    console.print(table, soft_wrap=False)  # a table fits the terminal: its cells wrap, not its lines


def render_watch(report: WatchReport, console: Console) -> None:
    info = report.info
    head = Text(f"{info.id} ({info.kind}, {info.mode}{'' if info.enabled else ', disabled'}) — {info.file}")
    console.print(head, soft_wrap=False)
    console.print(Text("verdict: ", style="bold") + Text(report.verdict), soft_wrap=False)
    if report.versions:
        v = report.versions[-1]
        git = v.git_words()
        since = when(v.at, info.zone, report.now)
        console.print(Text(f"version {v.version} since {since} — {v.source}" + (f" — {git}" if git else "")))
    if report.note:
        console.print(Text(f"note: {report.note}"))
    for line in report.sources:
        console.print(Text(f"source: {line}"), soft_wrap=False)
    if report.next_due is not None:
        due = when(report.next_due, info.zone, report.now)
        console.print(Text(f"next due: {due}, {time_until(report.next_due, report.now)}"), soft_wrap=False)
    if report.timeline:
        shown = len(report.timeline)
        more = f" (last {shown} of {report.total})" if report.total > shown else ""
        console.print(Text(f"\ntimeline{more}:"))
        table = Table(box=None, pad_edge=False)
        both = _time_columns(table, info.zone)
        # The version behind each decision, when the timeline spans more than one.
        spans = len({report.version_of(d.at) for d in report.timeline}) > 1
        if spans:
            table.add_column("v", no_wrap=True)
        table.add_column("verdict", no_wrap=True)
        _name_column(table, "key", [d.key or "" for d in report.timeline])
        table.add_column("reason", overflow="fold")
        for d in report.timeline:
            version = [Text(str(report.version_of(d.at) or "?"))] if spans else []
            cells = (Text(d.verdict), Text(d.key or ""), Text(d.reason))
            table.add_row(*_time_cells(d.at, info.zone, both), *version, *cells)
        console.print(table, soft_wrap=False)  # a table fits the terminal: its cells wrap, not its lines
    else:
        console.print(Text("\nno decisions recorded" + (" in range" if report.total == 0 else "")))
    if report.handoffs:
        console.print(Text(f"\nhandoffs ({len(report.handoffs)}):"))
        _handoff_table(console, report.handoffs[-20:])
        for h in report.handoffs[-20:]:  # what an agent's run did beyond its outcome
            facts = report.runs.get(h.id)
            if facts is not None and facts.notable():
                console.print(Text(f"  {h.id}: {facts.words()}"), soft_wrap=False)


NAME_WIDTH = 36  # room for a long key or watch id, leaving the reason its share of 80 columns


def _name_column(table: Table, header: str, values: list[str]) -> None:
    """Keys and watch ids are shown whole: as wide as the longest (up to NAME_WIDTH), longer ones
    folded onto the next line rather than cut with an ellipsis."""
    widest = max((len(v) for v in values), default=0)
    table.add_column(header, min_width=min(max(widest, len(header)), NAME_WIDTH), overflow="fold")


def render_event(report: EventReport, console: Console) -> None:
    console.print(Text(f"event {report.event_id}"), soft_wrap=False)
    console.print(Text("verdict: ", style="bold") + Text(report.verdict), soft_wrap=False)
    if report.decisions:
        zones = {report.zone(d.watch) for d in report.decisions}
        zone = zones.pop() if len(zones) == 1 else "UTC"
        table = Table(box=None, pad_edge=False)
        both = _time_columns(table, zone)
        _name_column(table, "watch", [d.watch or "-" for d in report.decisions])
        table.add_column("verdict", no_wrap=True)
        _name_column(table, "key", [d.key or "" for d in report.decisions])
        table.add_column("reason", overflow="fold")
        for d in report.decisions:
            cells = [Text(c) for c in (d.watch or "-", d.verdict, d.key or "", d.reason)]
            table.add_row(*_time_cells(d.at, zone, both), *cells)
        console.print(table, soft_wrap=False)  # a table fits the terminal: its cells wrap, not its lines
    if report.handoffs:
        console.print(Text("\nhandoffs:"))
        _handoff_table(console, report.handoffs)
