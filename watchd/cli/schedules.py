"""`watchd schedules`: the upcoming ticks of every schedule, in local and UTC time, with DST notes.

`--json` is an array of ticks, soonest first (as the README documents it)::

    [{"schedule": str, "at_utc": "2026-03-29T01:00:00Z", "at_local": "2026-03-29T03:00:00+02:00",
      "note": str | null}]
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import click
from rich.table import Table
from rich.text import Text

from watchd.cli.common import CONFIG_OPTION, dump_json, load, out
from watchd.cron.schedule import first_instant_at
from watchd.errors import WatchdError
from watchd.explain.schedule import all_schedules, open_state, read_ticks, upcoming_ticks
from watchd.explain.watch import when


def parse_from(text: str, zone: str) -> float:
    """An instant: ISO 8601 with an offset or Z, or a local date-time read in `zone`."""
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise WatchdError(
            f"bad --from {text!r}",
            hint='use a date-time like "2026-03-29T00:00" (in the config\'s zone) or "2026-03-29T00:00Z"',
        ) from None
    if dt.tzinfo is None:
        return first_instant_at(dt, zone).timestamp()
    return dt.timestamp()


@click.command(name="schedules")
@CONFIG_OPTION
@click.option(
    "--next",
    "count",
    default=3,
    show_default=True,
    type=click.IntRange(1, 1000),
    metavar="N",
    help="ticks shown per schedule",
)
@click.option(
    "--from",
    "from_",
    metavar="TIME",
    help="as of this instant instead of now: a local date-time in the "
    "config's zone (2026-10-25T00:00) or one with an offset or Z",
)
@click.option("--json", "as_json", is_flag=True, help="an array of ticks: schedule, at_utc, at_local, note")
def schedules_cmd(config_path: str | None, count: int, from_: str | None, as_json: bool) -> None:
    """Upcoming ticks of every schedule in local and UTC time, with DST notes; and each one's last run.

    \b
    Examples:
      watchd schedules --next 5
      watchd schedules --from 2026-03-28T12:00 --next 2     # across the spring-forward night
      watchd schedules --json | jq '.[] | select(.note != null)'
    """
    loaded = load(config_path)
    now = time.time()
    start = parse_from(from_, loaded.zone()) if from_ else now
    ticks, disabled = upcoming_ticks(loaded, start, count)
    if as_json:
        dump_json([{k: v for k, v in t.items() if not k.startswith("_")} for t in ticks])
        return
    from watchd.status import whole_column

    # Names are never cut; the UTC time is the weekday and time (the date is the local one's, or
    # the day either side); DST notes go below the table, as sentences, not in a narrow column.
    table = Table(box=None, pad_edge=False)
    whole_column(table, "schedule", [t["schedule"] for t in ticks])
    table.add_column("local", no_wrap=True)
    table.add_column("UTC", no_wrap=True)
    notes: list[str] = []
    for t in ticks:
        local = datetime.fromtimestamp(t["_at"], ZoneInfo(t["_zone"]))
        utc = datetime.fromtimestamp(t["_at"], UTC)
        mark = ""
        if t["note"]:
            notes.append(f"{t['schedule']} at {local:%a %Y-%m-%d %H:%M %Z}: {t['note']}")
            mark = f" [{len(notes)}]"
        table.add_row(Text(t["schedule"]), Text(f"{local:%a %Y-%m-%d %H:%M %Z}{mark}"), Text(f"{utc:%a %H:%M}"))
    out.print(table if ticks else "no upcoming ticks", soft_wrap=False)
    for n, note in enumerate(notes, 1):
        out.print(Text(f"[{n}] {note}"))
    if disabled:
        out.print(Text(f"disabled: {', '.join(sorted(disabled))}"))
    conn = open_state(loaded.state_dir)
    if conn is None:
        return
    try:
        lines = []
        for name, (defn, _) in all_schedules(loaded).items():
            rows = read_ticks(conn, name, 1)
            if rows:
                r = rows[-1]
                what = "run now at" if r.trigger == "manual" else "the"
                tick = "" if r.trigger == "manual" else " tick"
                lines.append(
                    f"  {name}: {r.state} for {what} {when(r.tick_at, defn.zone, now)}{tick}"
                    + (f" — {r.summary}" if r.summary else "")
                )
    finally:
        conn.close()
    if lines:
        out.print("last runs:")
        for line in lines:
            out.print(Text(line))
