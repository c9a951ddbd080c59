"""Every zone with DST (or any offset change) in 2026–2030, against a brute-force oracle.

The oracle is written independently of watchd.schedule: it walks real time minute by minute in
zoneinfo and applies the policy as stated in the spec (Debian cron):
- a job whose minute or hour field starts with "*" fires whenever the wall clock shows a
  matching minute (so a skipped minute never fires and a repeated one fires again);
- any other job fires when the wall clock first reaches a matching minute; matching minutes the
  clock jumps over fire once at the jump (dst_gap=shift) or are skipped (skip); matching minutes
  shown again after the clock goes back fire only with dst_fold=both.

A full minute walk over 5 years × 200 zones is far too slow, so the walk covers a window around
every transition of every zone (where all the DST behaviour is), and ordinary days are checked
cheaply by counting. Zones sharing a transition (same instant and offsets) share one oracle walk,
which is sound because the walk only sees those two offsets inside its window.
"""

from __future__ import annotations

import itertools
import time
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache

import pytest
from cronsim import CronSim
from hypothesis import given, settings
from hypothesis import strategies as st

from watchd.cron.schedule import CronSpec, parse_cron, skipped_in_gap, ticks_between

YEARS = range(2026, 2031)
PATTERNS = ["30 2 * * *", "0 1 * * *", "15 3 * * *", "0 * * * *", "*/15 * * * *", "0 0 1 * *"]
FIXED = [p for p in PATTERNS if not p.split()[0].startswith("*") and not p.split()[1].startswith("*")]
MIN = 60


# ---- the oracle's own tiny cron matcher (enough for PATTERNS) --------------------------------


def _field(text: str, lo: int, hi: int) -> frozenset[int]:
    out: set[int] = set()
    for term in text.split(","):
        rng, _, step = term.partition("/")
        a, b = (lo, hi) if rng == "*" else (int(rng.split("-")[0]), int(rng.split("-")[-1]))
        out.update(range(a, b + 1, int(step or 1)))
    return frozenset(out)


@dataclass(frozen=True)
class Pattern:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    day_and: bool  # as Vixie/Debian cron: day-of-month AND day-of-week if either starts with "*"
    wildcard: bool

    @staticmethod
    def of(expr: str) -> Pattern:
        f = expr.split()
        return Pattern(
            _field(f[0], 0, 59),
            _field(f[1], 0, 23),
            _field(f[2], 1, 31),
            _field(f[3], 1, 12),
            frozenset(d % 7 for d in _field(f[4], 0, 7)),
            day_and=f[2].startswith("*") or f[4].startswith("*"),
            wildcard=f[0].startswith("*") or f[1].startswith("*"),
        )

    def match(self, w: datetime) -> bool:
        if w.minute not in self.minutes or w.hour not in self.hours or w.month not in self.months:
            return False
        dom, dow = w.day in self.days, w.isoweekday() % 7 in self.weekdays
        return (dom and dow) if self.day_and else (dom or dow)


def _wall(zone: zoneinfo.ZoneInfo, ts: int) -> datetime:
    return datetime.fromtimestamp(ts, zone).replace(tzinfo=None)


def oracle(
    zone: zoneinfo.ZoneInfo, p: Pattern, lo: int, hi: int, gap: str = "shift", fold: str = "once"
) -> tuple[list[int], list[str]]:
    """(fire instants in (lo, hi], skipped wall minutes) by walking every minute of real time."""
    fires: list[int] = []
    skipped: list[str] = []
    prev = high = _wall(zone, lo)
    for ts in range(lo + MIN, hi + 1, MIN):
        w = _wall(zone, ts)
        if p.wildcard:
            if p.match(w):
                fires.append(ts)
        else:
            fire = p.match(w) and (w > high or fold == "both")
            m = prev + timedelta(minutes=1)
            while m < w:  # minutes the clock jumped over
                if m > high and p.match(m):
                    if gap == "shift":
                        fire = True
                    else:
                        skipped.append(m.isoformat(timespec="minutes"))
                m += timedelta(minutes=1)
            if fire:
                fires.append(ts)
            high = max(high, w)
        prev = w
    return fires, skipped


# ---- transitions, found independently by sampling and bisecting utcoffset --------------------


@dataclass(frozen=True)
class Transition:
    ts: int
    before: int  # offset seconds
    after: int


def _offset(zone: zoneinfo.ZoneInfo, ts: int) -> int:
    off = datetime.fromtimestamp(ts, zone).utcoffset()
    assert off is not None
    return int(off.total_seconds())


@cache
def transitions() -> dict[str, list[Transition]]:
    start = int(datetime(YEARS[0], 1, 1, tzinfo=UTC).timestamp())
    end = int(datetime(YEARS[-1] + 1, 1, 1, tzinfo=UTC).timestamp())
    step = 2 * 86400  # tzdata has no two changes within two days in these years
    out: dict[str, list[Transition]] = {}
    for name in sorted(zoneinfo.available_timezones()):
        zone = zoneinfo.ZoneInfo(name)
        found: list[Transition] = []
        ts, before = start, _offset(zone, start)
        while ts < end:
            nxt = ts + step
            after = _offset(zone, nxt)
            if after != before:
                lo, hi = ts, nxt
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    lo, hi = (mid, hi) if _offset(zone, mid) == before else (lo, mid)
                found.append(Transition(hi, before, after))
            ts, before = nxt, after
        if found:
            out[name] = found
    return out


def _windows() -> Iterator[tuple[str, Transition, int, int]]:
    for name, trs in transitions().items():
        for tr in trs:
            d = abs(tr.after - tr.before)
            lo = (tr.ts - d - 2 * 3600) // MIN * MIN
            yield name, tr, lo, lo + 2 * d + 4 * 3600 + MIN


@cache
def _oracle_cached(
    key: tuple[int, int, int], name: str, expr: str, lo: int, hi: int, gap: str, fold: str
) -> tuple[list[int], list[str]]:
    # key (transition instant, offsets) decides the result; `name` is just the zone walked for it
    return oracle(zoneinfo.ZoneInfo(name), Pattern.of(expr), lo, hi, gap, fold)


def _dt(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _fmt(ts: list[int]) -> list[str]:
    return [_dt(t).strftime("%m-%d %H:%M") for t in ts]


def test_zone_discovery_finds_the_known_cases() -> None:
    trs = transitions()
    assert len(trs) > 150
    assert {"Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Antarctica/Troll"} <= set(trs)
    assert "Asia/Tokyo" not in trs and "UTC" not in trs
    assert {abs(t.after - t.before) for t in trs["Australia/Lord_Howe"]} == {1800}
    assert {abs(t.after - t.before) for t in trs["Antarctica/Troll"]} == {7200}


def _check(expr: str, gap: str, fold: str) -> None:
    t0 = time.perf_counter()
    failures: list[str] = []
    n = 0
    specs: dict[str, CronSpec] = {}
    for name, tr, lo, hi in _windows():
        if name not in specs:
            specs[name] = parse_cron(expr, name, dst_gap=gap, dst_fold=fold)  # type: ignore[arg-type]
        spec = specs[name]
        want, want_skipped = _oracle_cached((tr.ts, tr.before, tr.after), _first_zone(tr), expr, lo, hi, gap, fold)
        got = [int(t.at.timestamp()) for t in ticks_between(spec, _dt(lo), _dt(hi))]
        n += 1
        if got != want:
            failures.append(f"{name} @ {_dt(tr.ts)}: got {_fmt(got)} want {_fmt(want)}")
        if gap == "skip":
            got_skipped = [w for w, _ in skipped_in_gap(spec, _dt(lo), _dt(hi))]
            if got_skipped != want_skipped:
                failures.append(f"{name} @ {_dt(tr.ts)}: skipped {got_skipped} want {want_skipped}")
    assert not failures, f"{len(failures)} of {n} windows differ:\n" + "\n".join(failures[:20])
    print(f"{expr!r} {gap}/{fold}: {n} transition windows in {time.perf_counter() - t0:.2f}s")


@cache
def _zones_by_transition() -> dict[Transition, str]:
    first: dict[Transition, str] = {}
    for name, trs in transitions().items():
        for tr in trs:
            first.setdefault(tr, name)
    return first


def _first_zone(tr: Transition) -> str:
    return _zones_by_transition()[tr]


@pytest.mark.parametrize("expr", PATTERNS)
def test_every_transition_default_policy(expr: str) -> None:
    _check(expr, "shift", "once")


@pytest.mark.parametrize("expr", FIXED)
def test_every_transition_skip_and_both(expr: str) -> None:
    _check(expr, "skip", "both")


@pytest.mark.parametrize("expr", PATTERNS)
def test_cronsim_agrees_around_transitions(expr: str) -> None:
    """cronsim implements Debian's rule too; once per distinct transition, duplicates removed.

    cronsim can yield the transition instant twice when two gap minutes both shift to it; we
    emit it once by design, so its output is de-duplicated before comparing.
    """
    failures: list[str] = []
    for tr, name in _zones_by_transition().items():
        zone = zoneinfo.ZoneInfo(name)
        d = abs(tr.after - tr.before)
        lo = (tr.ts - d - 2 * 3600) // MIN * MIN
        hi = lo + 2 * d + 4 * 3600 + MIN
        want: list[int] = []
        for t in CronSim(expr, _dt(lo).astimezone(zone)):
            ts = int(t.timestamp())
            if ts > hi:
                break
            if not want or ts != want[-1]:
                want.append(ts)
        got = [int(t.at.timestamp()) for t in ticks_between(parse_cron(expr, name), _dt(lo), _dt(hi))]
        if got != want:
            failures.append(f"{name} @ {_dt(tr.ts)}: got {_fmt(got)} cronsim {_fmt(want)}")
    assert not failures, "\n".join(failures[:20])


def _expected_on_plain_day(p: Pattern, zone: zoneinfo.ZoneInfo, lo: int, hi: int) -> list[int]:
    """Instants in (lo, hi] of a stretch with one constant offset: every matching wall minute."""
    off = _offset(zone, lo)
    assert _offset(zone, hi) == off
    out = []
    hour = (lo + off) // 3600 * 3600
    while hour <= hi + off:
        for m in sorted(p.minutes):
            wall_ts = hour + m * MIN
            if lo < wall_ts - off <= hi and p.match(datetime.fromtimestamp(wall_ts, UTC)):
                out.append(wall_ts - off)
        hour += 3600
    return out


def test_ordinary_days_every_zone() -> None:
    """One ordinary day per zone and year, half-way between two transitions: plain counting."""
    failures: list[str] = []
    patterns = [(e, Pattern.of(e)) for e in PATTERNS]
    for i, (name, trs) in enumerate(transitions().items()):
        zone = zoneinfo.ZoneInfo(name)
        specs = [(expr, p, parse_cron(expr, name)) for expr, p in patterns]
        for a, b in itertools.pairwise(trs):
            if (i + a.ts // 86400) % 3:  # one pair in three keeps it cheap; all zones still covered
                continue
            lo = (a.ts + b.ts) // 2 // MIN * MIN
            hi = lo + 86400
            for expr, p, spec in specs:
                got = [int(t.at.timestamp()) for t in ticks_between(spec, _dt(lo), _dt(hi))]
                want = _expected_on_plain_day(p, zone, lo, hi)
                if got != want:
                    failures.append(f"{name} {expr!r} {_dt(lo)}: got {_fmt(got)} want {_fmt(want)}")
    assert not failures, "\n".join(failures[:20])


def test_monthly_every_month_every_zone() -> None:
    """`0 0 1 * *` over all 60 months in every zone: midnight on the 1st, or the transition instant."""
    failures: list[str] = []
    for name, trs in transitions().items():
        zone = zoneinfo.ZoneInfo(name)
        want = []
        for y in YEARS:
            for mo in range(1, 13):
                local = datetime(y, mo, 1, tzinfo=zone)
                ts = int(local.timestamp())
                if _wall(zone, ts) != local.replace(tzinfo=None):  # midnight skipped: first minute after
                    ts = next(t.ts for t in trs if abs(t.ts - ts) <= 86400)
                want.append(ts)
        spec = parse_cron("0 0 1 * *", name)
        got = [int(t.at.timestamp()) for t in ticks_between(spec, _dt(want[0] - 1), _dt(want[-1]))]
        if got != want:
            failures.append(f"{name}: got {_fmt(got)} want {_fmt(want)}")
    assert not failures, "\n".join(failures[:5])


@cache
def _all_transitions() -> list[tuple[str, Transition]]:
    return [(name, tr) for name, trs in transitions().items() for tr in trs]


@settings(max_examples=300, deadline=None, database=None)
@given(
    minute=st.sampled_from(["*", "*/7", "*/15", "0", "30", "0,30", "10-50/20", "59", "45"]),
    hour=st.sampled_from(["*", "*/2", "0", "1", "2", "3", "1,2,3", "0-4", "22-23", "12"]),
    dom=st.sampled_from(["*", "1", "*/2", "25-31", "1,15"]),
    month=st.sampled_from(["*", "3-4", "9-11", "*/2"]),
    dow=st.sampled_from(["*", "0", "6", "1-5", "5-7"]),
    pick=st.integers(0, 10**6),
    gap=st.sampled_from(["shift", "skip"]),
    fold=st.sampled_from(["once", "both"]),
)
def test_random_expressions_at_random_transitions(
    minute: str, hour: str, dom: str, month: str, dow: str, pick: int, gap: str, fold: str
) -> None:
    """Any expression, any transition of any zone, any policy: the same as the oracle."""
    expr = " ".join([minute, hour, dom, month, dow])
    name, tr = _all_transitions()[pick % len(_all_transitions())]
    d = abs(tr.after - tr.before)
    lo = (tr.ts - d - 2 * 3600) // MIN * MIN
    hi = lo + 2 * d + 4 * 3600 + MIN
    spec = parse_cron(expr, name, dst_gap=gap, dst_fold=fold)  # type: ignore[arg-type]
    want, want_skipped = oracle(zoneinfo.ZoneInfo(name), Pattern.of(expr), lo, hi, gap, fold)
    assert _fmt([int(t.at.timestamp()) for t in ticks_between(spec, _dt(lo), _dt(hi))]) == _fmt(want)
    assert [w for w, _ in skipped_in_gap(spec, _dt(lo), _dt(hi))] == want_skipped
