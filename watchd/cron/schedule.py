"""Pure schedule maths: cron (with DST policy), `every`, `at`, missed-tick plans, durations.

No I/O and no clock: every function takes the instants it needs. Instants at the API boundary
are timezone-aware datetimes (any zone accepted, UTC returned).

DST policy, as Debian cron does (see cron(8), "Daylight Saving Time and other time changes"):
a job whose minute or hour field starts with `*` follows real time, so a wall-clock time that
does not exist is not reached and a repeated one runs again. Every other job is "fixed-time":
in a spring-forward gap it runs once at the transition (`dst_gap="shift"`) or not at all
(`"skip"`); in a fall-back fold it runs at the first occurrence (`dst_fold="once"`) or at each
(`"both"`). croniter only supplies the matching *wall-clock* times (iterated on naive local
datetimes, so it never sees a zone); mapping wall times to instants is done here.
"""

from __future__ import annotations

import contextlib
import copy
import heapq
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from watchd.errors import WatchdError

GapPolicy = Literal["shift", "skip"]
FoldPolicy = Literal["once", "both"]
MissedPolicy = Literal["skip", "coalesce", "replay"]

# How far next_tick looks before answering None: covers Feb 29 schedules.
HORIZON = timedelta(days=5 * 366)
# A tick handled within this long after it was due is on time, not "missed" (a busy loop or a
# slow wake-up must not turn a normal run into a missed one).
DEFAULT_GRACE_S = 60.0

# Debian cron's macros; @reboot is not a schedule, so it is rejected.
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_CRON_HINT = 'use 5 fields "minute hour day-of-month month day-of-week", e.g. "30 2 * * *" or "*/15 * * * *"'


class ScheduleError(WatchdError):
    """An invalid cron expression, time zone, duration or `at` time; the message says how to fix it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(f"{message}; {hint}" if hint else message, hint)


@dataclass(frozen=True)
class _Compiled:
    expr: str  # 5-field expression with macros expanded
    zone: ZoneInfo
    wildcard: bool  # minute or hour field starts with "*": follows real time
    day_or: bool  # Vixie/Debian: day-of-month OR day-of-week unless either starts with "*"


@lru_cache(maxsize=1024)
def _croniter() -> Any:  # croniter has no type hints
    """croniter, loaded on first use: a daemon without a cron expression never pays for it."""
    import croniter

    return croniter


# "M H * * *": every day at one time, as the built-in schedules run. Its walls are one a day, found
# without croniter (1.7 MB), so a daemon whose only schedules are such never loads it.
_DAILY = re.compile(r"([0-9]{1,2}) ([0-9]{1,2}) \* \* \*")


def _daily(text: str) -> tuple[int, int] | None:
    """(hour, minute) of an every-day-at-one-time expression; None for any other."""
    m = _DAILY.fullmatch(text)
    if m is None or int(m[1]) > 59 or int(m[2]) > 23:
        return None
    return int(m[2]), int(m[1])


NextWall = Callable[[], datetime | None]


def _walls(c: _Compiled, after: datetime) -> NextWall:
    """The matching wall times (naive, local) strictly after `after`, one per call; None after the
    last (an expression that stops matching)."""
    daily = _daily(c.expr)
    if daily is not None:
        hour, minute = daily
        day = after.replace(hour=hour, minute=minute, second=0, microsecond=0)
        if day <= after:
            day += timedelta(days=1)
        state = [day - timedelta(days=1)]

        def next_daily() -> datetime:
            state[0] += timedelta(days=1)
            return state[0]

        return next_daily
    cron = _cron(c.expr, c.day_or)
    at: list[datetime | None] = [after]

    def next_cron() -> datetime | None:
        last = at[0]
        at[0] = None if last is None else cron.next_wall(last)
        return at[0]

    return next_cron


class _Cron:
    """croniter's parse of one valid expression, and the walls it has found already.

    Each wall costs croniter ~20 µs, and the runner asks for the same few again and again: the next
    tick after each run and each wake-up, the tick before for each run's period, for every schedule
    (1,000 due together ask ~10 each). A wall depends only on the minute it follows (the expression
    has no seconds field: croniter looks from the next whole minute), so the answer for a minute is
    kept. The parse itself is never walked: a croniter holds its position, so each walk copies it.
    """

    KEEP = 64  # walls kept per expression: the last hour of an every-minute one, then start again

    def __init__(self, expr: str, day_or: bool) -> None:
        self.parsed = _croniter().croniter(expr, datetime(2000, 1, 1), day_or=day_or)
        self.after: dict[datetime, datetime | None] = {}  # a whole minute -> the first wall after it

    def next_wall(self, after: datetime) -> datetime | None:
        """The first matching wall time (naive) strictly after `after` (naive); None if none."""
        # croniter reads `after` as a float, exact to the microsecond before 2106 (2**32 s), and
        # looks from the next whole minute: all instants of one minute have the same next wall.
        key = after.replace(second=0, microsecond=0)
        with contextlib.suppress(KeyError):
            return self.after[key]
        wall = self._walk(after)
        if len(self.after) >= self.KEEP:
            self.after.clear()  # (not an LRU: clear() is one step, safe while another thread reads)
        self.after[key] = wall
        return wall

    def _walk(self, after: datetime) -> datetime | None:
        cr = _croniter()
        it = copy.copy(self.parsed)
        # The only state a walk changes besides its position: `#` day-of-week sets (updated in place).
        it.nth_weekday_of_month = {k: set(v) for k, v in it.nth_weekday_of_month.items()}
        it.set_current(after, force=True)
        try:
            wall: datetime = it.get_next(datetime)
        except cr.CroniterBadDateError:
            return None
        return wall


@lru_cache(maxsize=4096)
def _cron(expr: str, day_or: bool) -> _Cron:
    return _Cron(expr, day_or)


@lru_cache(maxsize=4096)
def _compile(expr: str, tz: str) -> _Compiled:
    """Validated once per (expression, zone): every walk starts here, and validating costs ~150 µs
    (a parse and a trial walk). An invalid one raises each time (exceptions are not cached)."""
    text = expr.strip()
    if text.startswith("@"):
        if text.lower() not in _MACROS:
            raise ScheduleError(f"unknown cron macro {text!r}", f"use one of {', '.join(_MACROS)} or {_CRON_HINT}")
        text = _MACROS[text.lower()]
    fields = text.split()
    if len(fields) != 5:
        raise ScheduleError(f"cron expression {expr!r} has {len(fields)} field(s), not 5", _CRON_HINT)
    if _daily(" ".join(fields)) is not None:  # valid, and it fires every day
        return _Compiled(expr=" ".join(fields), zone=_zone(tz), wildcard=False, day_or=False)
    cr = _croniter()
    if not cr.croniter.is_valid(text):
        problem = _field_problem(fields)
        if problem:
            raise ScheduleError(f"cron {expr!r}: {problem}")
        raise ScheduleError(f"invalid cron expression {expr!r}", _CRON_HINT)
    zone = _zone(tz)
    compiled = _Compiled(
        expr=text,
        zone=zone,
        wildcard=fields[0].startswith("*") or fields[1].startswith("*"),
        day_or=not (fields[2].startswith("*") or fields[4].startswith("*")),
    )
    try:  # e.g. "0 0 31 2 *" is valid syntax but never fires: almost surely a mistake
        cr.croniter(text, datetime(2000, 1, 1), day_or=compiled.day_or).get_next(datetime)
    except cr.CroniterBadDateError:
        raise ScheduleError(f"cron expression {expr!r} never fires", "check the day-of-month and month") from None
    return compiled


# The five fields as Debian cron reads them: name, range, and the names it accepts for numbers.
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_FIELDS: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day-of-month", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 7, _DAYS),  # 0 and 7 are both Sunday
)


def _field_problem(fields: list[str]) -> str | None:
    """Which field of an invalid expression is wrong, e.g. "hour 25 is out of range 0-23"."""
    for text, (name, low, high, names) in zip(fields, _FIELDS, strict=True):
        for part in text.split(","):
            span, slash, step = part.partition("/")
            if slash and not (step.isdigit() and int(step) > 0):
                return f"{name} step {step!r} must be a whole number above 0"
            if span in ("*", "?"):
                continue
            for bound in span.split("-", 1):
                value = bound.lower()
                if value in names or value == "l" or "#" in value:  # names; croniter's L and 5#3
                    continue
                if not value.isdigit():
                    if names:
                        return f"{name} {bound!r} is not a number or name ({low}-{high} or {names[0]}-{names[-1]})"
                    return f"{name} {bound!r} is not a number ({low}-{high})"
                if not low <= int(value) <= high:
                    return f"{name} {int(value)} is out of range {low}-{high}"
    return None


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            f"unknown time zone {tz!r}", 'use an IANA zone name such as "Europe/Berlin" or "UTC"'
        ) from None


@dataclass(frozen=True)
class CronSpec:
    """A validated cron schedule. Constructing one validates it (raises ScheduleError)."""

    expr: str
    tz: str
    dst_gap: GapPolicy = "shift"
    dst_fold: FoldPolicy = "once"

    def __post_init__(self) -> None:
        _compile(self.expr, self.tz)
        if self.dst_gap not in ("shift", "skip"):
            raise ScheduleError(f"invalid dst_gap {self.dst_gap!r}", 'use "shift" or "skip"')
        if self.dst_fold not in ("once", "both"):
            raise ScheduleError(f"invalid dst_fold {self.dst_fold!r}", 'use "once" or "both"')

    @property
    def follows_real_time(self) -> bool:
        """True for wildcard jobs (minute or hour field starts with `*`), which ignore dst_gap/dst_fold."""
        return _compile(self.expr, self.tz).wildcard


def parse_cron(expr: str, tz: str, dst_gap: GapPolicy = "shift", dst_fold: FoldPolicy = "once") -> CronSpec:
    return CronSpec(expr, tz, dst_gap, dst_fold)


@dataclass(frozen=True)
class Tick:
    at: datetime  # aware, UTC
    note: str | None = None  # a DST note for `watchd schedules` and `explain`


# ---------------------------------------------------------------------------------------------
# wall time -> instants. Internally instants are naive UTC datetimes (cheaper, no tz juggling).


def _naive_utc(dt: datetime) -> datetime:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"{dt!r} must be timezone-aware")
    return dt.astimezone(UTC).replace(tzinfo=None)


def _aware(u: datetime) -> datetime:
    return u.replace(tzinfo=UTC)


def _offset_at(zone: ZoneInfo, u: datetime) -> timedelta:
    off = u.replace(tzinfo=UTC).astimezone(zone).utcoffset()
    assert off is not None  # a ZoneInfo always has an offset
    return off


def _wall_offsets(zone: ZoneInfo, w: datetime) -> tuple[timedelta, timedelta]:
    # PEP 495: fold=0 uses the offset before a transition, fold=1 the one after. Equal: the wall
    # time is unambiguous; off0 > off1: it occurs twice (fold); off0 < off1: it does not exist (gap).
    off0 = w.replace(tzinfo=zone, fold=0).utcoffset()
    off1 = w.replace(tzinfo=zone, fold=1).utcoffset()
    assert off0 is not None and off1 is not None
    return off0, off1


def _gap_transition(zone: ZoneInfo, w: datetime, off0: timedelta, off1: timedelta) -> datetime:
    """The instant the clock jumped over wall time `w`: bisect between the two candidate instants."""
    lo, hi = w - off1, w - off0  # lo still has the old offset, hi already the new one
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        mid = mid.replace(microsecond=0)
        if _offset_at(zone, mid) == off0:
            lo = mid
        else:
            hi = mid
    return hi


def _first_instant(zone: ZoneInfo, w: datetime) -> datetime:
    """The first instant whose local time is >= w; monotonic in w, which makes ordering safe."""
    off0, off1 = _wall_offsets(zone, w)
    return _gap_transition(zone, w, off0, off1) if off0 < off1 else w - off0


def first_instant_at(wall: datetime, tz: str) -> datetime:
    """The first instant (aware, UTC) at which the clock in `tz` reads the naive `wall` or later:
    a repeated wall time (fall-back fold) maps to its first occurrence, a skipped one (spring-forward
    gap) to the transition — the same choice as the fixed-time cron defaults above."""
    return _aware(_first_instant(_zone(tz), wall.replace(tzinfo=None)))


def _hm(w: datetime) -> str:
    return w.strftime("%H:%M:%S" if w.second else "%H:%M")


@dataclass(frozen=True, order=True)
class _Entry:
    at: datetime  # naive UTC
    seq: int  # keeps wall order among equal instants
    wall: datetime = field(compare=False)
    kind: Literal["run", "shift", "skip"] = field(compare=False)  # shift/skip: a wall time in a gap
    note: str | None = field(compare=False)  # run: the DST note; shift/skip: "on <date> in <zone>"


def _map_wall(c: _Compiled, spec: CronSpec, w: datetime, seq: int) -> tuple[list[_Entry], datetime]:
    """Instants (with notes) at which the job runs for wall time `w`, and _first_instant(w)."""
    zone = c.zone
    off0, off1 = _wall_offsets(zone, w)
    if off0 == off1:
        return [_Entry(w - off0, seq, w, "run", None)], w - off0
    where = f"on {w.date().isoformat()} in {spec.tz}"
    if off0 > off1:  # fold: fold=0 is the first occurrence
        first, second = w - off0, w - off1
        said = f"dst_fold: {_hm(w)} occurs twice {where}; "
        if not c.wildcard and spec.dst_fold == "once":
            return [_Entry(first, seq, w, "run", said + "runs at the first occurrence")], first
        why = "real time" if c.wildcard else "dst_fold=both"
        return [
            _Entry(first, seq, w, "run", said + f"runs at both ({why}): first occurrence"),
            _Entry(second, seq, w, "run", said + f"runs at both ({why}): second occurrence"),
        ], first
    at = _gap_transition(zone, w, off0, off1)
    if c.wildcard:  # real time never reaches this wall time, as in Debian cron
        return [], at
    return [_Entry(at, seq, w, "shift" if spec.dst_gap == "shift" else "skip", where)], at


def _stream(spec: CronSpec, after: datetime, wall_limit: datetime) -> Iterator[tuple[datetime, list[_Entry]]]:
    """Groups of entries sharing one instant, in instant order, for instants > `after` (naive UTC).

    Walls come from croniter (or `_walls`) in wall order. Their instants are not in order across a fold (second
    occurrences come later), so they wait in a heap until the next wall's first instant proves
    nothing earlier can still come; entries with the same instant (a shifted gap tick landing on a
    real one) are released together so the caller emits them once.
    """
    c = _compile(spec.expr, spec.tz)
    zone = c.zone
    # Start early enough that walls repeated by a fold just after `after` are seen too.
    start = after + min(_offset_at(zone, after), _offset_at(zone, after + timedelta(hours=27)))
    next_wall = _walls(c, start)
    heap: list[_Entry] = []
    seq = 0
    while True:
        w = next_wall()
        done = w is None or w > wall_limit
        entries: list[_Entry] = []
        if w is None or done:
            bound = _first_instant(zone, wall_limit)
        else:
            entries, bound = _map_wall(c, spec, w, seq)
            seq += 1
        while heap and heap[0].at < bound:
            group = [heapq.heappop(heap)]
            while heap and heap[0].at == group[0].at:
                group.append(heapq.heappop(heap))
            if group[0].at > after:
                yield group[0].at, group
        if done:
            return
        for e in entries:
            heapq.heappush(heap, e)


def _run_note(group: list[_Entry], zone: ZoneInfo) -> str | None:
    shifted = [e for e in group if e.kind == "shift"]
    notes = [e.note for e in group if e.kind == "run" and e.note]
    if shifted:
        local = _aware(group[0].at).astimezone(zone)
        walls = ", ".join(_hm(e.wall) for e in shifted)
        verb = "does" if len(shifted) == 1 else "do"
        notes.insert(0, f"dst_gap: {walls} {verb} not exist {shifted[0].note}; runs at {_hm(local)} (shifted)")
    return "; ".join(notes) if notes else None


def next_tick(spec: CronSpec, after: datetime) -> datetime | None:
    """The first tick strictly after `after`, in UTC; None if there is none within HORIZON."""
    a = _naive_utc(after)
    for u, group in _stream(spec, a, a + HORIZON):
        if any(e.kind != "skip" for e in group):
            return _aware(u)
    return None


def ticks_between(spec: CronSpec, start: datetime, end: datetime) -> Iterator[Tick]:
    """Ticks with start < t <= end, in order, each instant once, with DST notes."""
    s, e = _naive_utc(start), _naive_utc(end)
    if e <= s:
        return
    zone = _compile(spec.expr, spec.tz).zone
    # Any wall past end + 2 days lies after `end` in every zone (offsets are within +-15h).
    for u, group in _stream(spec, s, e + timedelta(days=2)):
        if u > e:
            return
        if any(x.kind != "skip" for x in group):
            yield Tick(_aware(u), _run_note(group, zone))


def skipped_in_gap(spec: CronSpec, start: datetime, end: datetime) -> list[tuple[str, str]]:
    """(local wall time, reason) for each fixed-time tick dropped by dst_gap="skip" in (start, end].

    A skipped wall time counts as being at the transition instant. Wildcard jobs never appear:
    a wall time real time does not reach is not a skip (as in Debian cron, nothing is logged).
    """
    if spec.dst_gap != "skip" or spec.follows_real_time:
        return []
    s, e = _naive_utc(start), _naive_utc(end)
    out: list[tuple[str, str]] = []
    for u, group in _stream(spec, s, e + timedelta(days=2)):
        if u > e:
            break
        out.extend(
            (
                x.wall.isoformat(timespec="minutes"),
                f"dst_gap: {_hm(x.wall)} does not exist {x.note}; skipped (dst_gap=skip)",
            )
            for x in group
            if x.kind == "skip"
        )
    return out


def _transitions(zone: ZoneInfo, start: datetime, end: datetime) -> list[tuple[datetime, timedelta, timedelta]]:
    """(instant, offset before, offset after) for offset changes in [start, end) (naive UTC).

    Sampled daily then bisected: two changes within one day would be missed; tzdata has none.
    """
    out: list[tuple[datetime, timedelta, timedelta]] = []
    day = timedelta(days=1)
    u, before = start, _offset_at(zone, start)
    while u < end:
        nxt = u + day
        after = _offset_at(zone, nxt)
        if after != before:
            lo, hi = u, nxt
            while hi - lo > timedelta(seconds=1):
                mid = (lo + (hi - lo) / 2).replace(microsecond=0)
                lo, hi = (mid, hi) if _offset_at(zone, mid) == before else (lo, mid)
            out.append((hi, before, after))
        u, before = nxt, after
    return out


def dst_gap_warning(spec: CronSpec, year_from: int, years: int = 5) -> str | None:
    """A warning if a fixed-time job's wall time falls in a DST gap of its zone in those years.

    None for wildcard jobs: not reaching a nonexistent hour is their normal, documented behaviour.
    """
    c = _compile(spec.expr, spec.tz)
    if c.wildcard:
        return None
    hits: dict[str, list[str]] = {}  # wall time -> dates
    span_start, span_end = datetime(year_from, 1, 1), datetime(year_from + years, 1, 1)
    for at, before, after in _transitions(c.zone, span_start - timedelta(days=1), span_end + timedelta(days=1)):
        if after <= before:
            continue
        gap_start, gap_end = at + before, at + after  # wall times skipped: [gap_start, gap_end)
        if not span_start <= gap_start < span_end:
            continue
        next_wall = _walls(c, gap_start - timedelta(seconds=1))
        while (w := next_wall()) is not None and w < gap_end:
            hits.setdefault(_hm(w), []).append(w.date().isoformat())
    if not hits:
        return None
    what = "runs once at the end of the gap instead" if spec.dst_gap == "shift" else "is skipped those days"
    parts = [f"{t} does not exist on {', '.join(sorted(set(d)))}" for t, d in sorted(hits.items())]
    return f'cron {spec.expr!r} in {spec.tz}: {"; ".join(parts)} (DST gap); it {what} (dst_gap="{spec.dst_gap}")'


# ---------------------------------------------------------------------------------------------
# every / at


def every_next(interval_s: float, last_completion: datetime | None, now: datetime) -> datetime:
    """When an `every` schedule runs next: one interval after the last completion; `now` if never run.

    The result may be <= now (overdue: run now). A last completion in the future (the clock was
    set back) counts as `now`, so a clock change never delays the next run by more than one interval.
    """
    if not (math.isfinite(interval_s) and interval_s > 0):
        raise ScheduleError(f"invalid interval {interval_s!r}", "use a positive duration such as 5m")
    n = _aware(_naive_utc(now))
    if last_completion is None:
        return n
    return min(_aware(_naive_utc(last_completion)), n) + timedelta(seconds=interval_s)


def at_instant(at_local: str, tz: str) -> datetime:
    """The UTC instant of a one-shot `at` time, read as wall time in `tz` unless it has an offset.

    A wall time in a DST gap runs at the transition and one in a fold at its first occurrence,
    like fixed-time cron jobs.
    """
    zone = _zone(tz)
    try:
        dt = datetime.fromisoformat(at_local.strip())
    except ValueError:
        raise ScheduleError(f"invalid at time {at_local!r}", 'use a local date-time like "2026-12-01T09:00"') from None
    if dt.tzinfo is not None:
        return _aware(_naive_utc(dt))
    return _aware(_first_instant(zone, dt))


def at_next(at_local: str, tz: str, after: datetime) -> datetime | None:
    """The `at` instant if it is strictly after `after`, else None (a one-shot runs once)."""
    at = at_instant(at_local, tz)
    return at if at > after else None


# ---------------------------------------------------------------------------------------------
# missed ticks


@dataclass
class MissedPlan:
    run: list[Tick] = field(default_factory=list)  # in order
    skipped: list[tuple[Tick, str]] = field(default_factory=list)  # (tick, reason), in order
    backfill_from: datetime | None = None  # coalesce: the first tick the single run stands for


def plan_missed(
    spec: CronSpec,
    last_tick: datetime | None,
    now: datetime,
    missed: MissedPolicy,
    max_lateness_s: float | None,
    *,
    grace_s: float = DEFAULT_GRACE_S,
) -> MissedPlan:
    """What to do with the ticks in (last_tick, now]: run which, skip which and why.

    A tick at most `grace_s` late is on time and runs under every policy. Later ticks are missed:
    `skip` drops them, `replay` runs each, `coalesce` runs only the last one with backfill_from =
    the first one merged into it. Any tick later than `max_lateness_s` is dropped as too late.
    `last_tick` None (no history) means nothing can have been missed: only on-time ticks count.
    """
    if missed not in ("skip", "coalesce", "replay"):
        raise ScheduleError(f"invalid missed policy {missed!r}", 'use "skip", "coalesce" or "replay"')
    n = _aware(_naive_utc(now))
    since = n - timedelta(seconds=grace_s) if last_tick is None else last_tick
    plan = MissedPlan()
    eligible: list[Tick] = []
    for tick in ticks_between(spec, since, n):
        late_s = (n - tick.at).total_seconds()
        if max_lateness_s is not None and late_s > max_lateness_s:
            reason = f"too late: {format_duration(late_s)} late, max_lateness is {format_duration(max_lateness_s)}"
            plan.skipped.append((tick, reason))
        elif late_s <= grace_s or missed != "skip":
            eligible.append(tick)
        else:
            reason = f"missed: {format_duration(late_s)} late (daemon down or asleep); missed=skip"
            plan.skipped.append((tick, reason))
    if missed == "coalesce" and len(eligible) > 1:
        last = eligible[-1]
        when = last.at.strftime("%Y-%m-%dT%H:%M:%SZ")
        plan.skipped.extend((t, f"coalesced into the run for {when}") for t in eligible[:-1])
        plan.skipped.sort(key=lambda pair: pair[0].at)
        plan.backfill_from = eligible[0].at
        eligible = [last]
    plan.run = eligible
    return plan


# ---------------------------------------------------------------------------------------------
# durations

_UNITS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|w|d|h|m|s)")
_DURATION_HINT = "use a number and a unit (w, d, h, m, s, ms), largest first: 90s, 15m, 2h, 1d, 1h30m, 500ms, 1w"
# The longest duration anything takes: ten years. Instants are added to durations everywhere
# (deadlines, silences, cooldowns), and beyond year 9999 a datetime cannot hold them, so an
# unbounded duration that validates would fail only when an event arrives.
MAX_DURATION_S = 3660 * 86400.0
MAX_DURATION = "3660d"


def parse_duration(text: str) -> float:
    """Seconds in a duration like "90s", "1h30m" or "500ms". Raises ScheduleError otherwise."""
    s = text.strip() if isinstance(text, str) else ""
    if not s:
        raise ScheduleError(f"empty duration {text!r}", _DURATION_HINT)
    if s.startswith("-"):
        raise ScheduleError(f"negative duration {text!r}", _DURATION_HINT)
    pos, total, last_rank = 0, 0.0, -1
    order = list(_UNITS)
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            raise ScheduleError(f"invalid duration {text!r}", _DURATION_HINT)
        rank = order.index(m.group(2))
        if rank <= last_rank:  # "30m1h" or "1h1h" is almost surely a typo
            raise ScheduleError(f"invalid duration {text!r}: units out of order or repeated", _DURATION_HINT)
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos, last_rank = m.end(), rank
    if not total <= MAX_DURATION_S:  # also an overflow to inf
        raise ScheduleError(
            f"duration {text!r} is longer than 10 years", f"use at most {MAX_DURATION} (or disable what it times)"
        )
    return total


def format_duration(seconds: float) -> str:
    """The inverse of parse_duration, compactly: 5400 -> "1h30m", 0.5 -> "500ms", 0 -> "0s"."""
    ms = round(abs(seconds) * 1000)
    sign = "-" if seconds < 0 and ms else ""
    parts: list[str] = []
    for unit in ("d", "h", "m", "s", "ms"):
        size = round(_UNITS[unit] * 1000)
        q, ms = divmod(ms, size)
        if q:
            parts.append(f"{q}{unit}")
    return sign + ("".join(parts) or "0s")
