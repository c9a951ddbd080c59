"""Quiet hours (SPEC 3.2): pure time maths, no clock. The instant is passed in.

A watch's `quiet = {from, to, timezone}` is a daily wall-clock window in a zone, over midnight
when `from` is later than `to` (22:00–07:00). Each day's window is the span of *instants* from
the first time the clock reads `from` to the first time it next reads `to`. So around DST, as the
fixed-time cron defaults in `cron/schedule.py` do: a wall time the clock skips (spring forward) counts
as the transition instant, and one it shows twice (fall back) counts at its first occurrence —
a window ending at 02:30 on a fall-back night ends at the first 02:30, and a window starting at
02:30 does not reopen-and-close as the clock repeats the hour.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from watchd.cron.schedule import first_instant_at

QUIET_PREFIX = "(held during quiet hours) "


def parse_hhmm(text: str) -> time:
    hours, _, minutes = text.partition(":")
    return time(int(hours), int(minutes))


def _instant(day: date, at: time, tz: str) -> float:
    return first_instant_at(datetime.combine(day, at), tz).timestamp()


def quiet_release(fired_at: float, from_: str, to: str, tz: str) -> float | None:
    """The instant the quiet window containing `fired_at` ends, or None when it is not quiet then.

    `from_` and `to` are "HH:MM" wall times in the IANA zone `tz`; equal times make no window.
    """
    start_t, end_t = parse_hhmm(from_), parse_hhmm(to)
    if start_t == end_t:
        return None
    overnight = start_t > end_t
    today = datetime.fromtimestamp(fired_at, UTC).astimezone(ZoneInfo(tz)).date()
    # The window that holds fired_at opened on its local date or, over midnight, the day before.
    for day in (today - timedelta(days=1), today):
        start = _instant(day, start_t, tz)
        end = _instant(day + timedelta(days=1) if overnight else day, end_t, tz)
        if start <= fired_at < end:
            return end
    return None


def quiet_hold(target: str, fired_at: float, from_: str, to: str, tz: str, *, urgent: bool = False) -> float | None:
    """When a handoff to `target` made at `fired_at` may first be delivered, if quiet hours hold it.

    Notifiers are always held inside the window; agents too, unless the watch is `urgent`.
    """
    if urgent and target.startswith("agent."):
        return None
    return quiet_release(fired_at, from_, to, tz)
