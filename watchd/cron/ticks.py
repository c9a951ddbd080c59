"""Pure planning for the schedule runner: which ticks of a schedule are due at `now`, which of them
run and which are skipped (and why), and when the next one is due.

No I/O and no clock: instants are Unix seconds (UTC) passed in, so the runner, `watchd schedules`,
`status`, `explain --schedule` and the tests all ask the same questions of the same functions.

- A tick is a *nominal* instant: a cron tick, an `every` interval point, or the `at` instant. Its
  identity is `tick_key(name, version, tick)`; `jitter` only delays when it runs (by an offset fixed
  per schedule name, so every restart and every process agrees), never what it is.
- What is due at `now` is every tick after the last one handled (or after the schedule was first
  seen, less the grace) up to `now`. A tick at most GRACE_S late is on time; later ones were missed
  (the daemon was down or the machine asleep) and `missed` decides, once, what runs: `skip` (none of
  them), `coalesce` (the last one, standing for all), `replay` (each, in order); any tick later than
  `max_lateness` is dropped. So waking up after three days is one decision, never a burst.
- `every` counts from the last *completion* (or from when the schedule was first seen): its points
  are completion + k·interval. There is only ever one due run, so `replay` acts as `coalesce`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import Any, Literal

import msgspec

from watchd.config import Schedule
from watchd.cron.schedule import (
    DEFAULT_GRACE_S,
    HORIZON,
    CronSpec,
    at_instant,
    first_instant_at,
    format_duration,
    next_tick,
    parse_cron,
    parse_duration,
    plan_missed,
    skipped_in_gap,
    ticks_between,
)
from watchd.model import iso, stable_hash

GRACE_S = DEFAULT_GRACE_S
Kind = Literal["cron", "every", "at", "after"]
Trigger = Literal["schedule", "manual", "after"]
OverlapAction = Literal["run", "skip", "replace"]


@dataclass(frozen=True)
class Definition:
    """One schedule, resolved: its zone, parsed timing, and fixed jitter offset."""

    name: str
    schedule: Schedule
    zone: str
    digest: str  # content hash of the definition and its zone: a change bumps the version
    kind: Kind
    cron: CronSpec | None = None
    every_s: float | None = None
    at: float | None = None
    max_lateness_s: float | None = None
    jitter_s: float = 0.0  # this schedule's offset within `jitter`
    timeout_s: float = 3600.0
    retry_backoff_s: float = 60.0

    @property
    def what(self) -> str:
        """What it does, for tables: `job heartbeat`, `run restic`, `then notify.phone`."""
        s = self.schedule
        parts = [f"job {s.job}"] if s.job else []
        if s.run:
            parts.append(f"run {s.run[0]}")
        if s.then:
            parts.append(f"then {', '.join(s.then)}")
        return "; ".join(parts)

    @property
    def timing(self) -> str:
        s = self.schedule
        if s.after is not None:
            return f"after {', '.join(s.after)} (on {s.on})"
        return f"cron {s.cron!r}" if s.cron else f"every {s.every}" if s.every else f"at {s.at}"


def define(name: str, sched: Schedule, default_zone: str) -> Definition:
    """Resolve a configured schedule (already validated by config.load; raises ScheduleError if not)."""
    zone = sched.timezone or default_zone
    digest = hashlib.sha256(msgspec.json.encode(sched) + zone.encode()).hexdigest()[:16]
    cron = parse_cron(sched.cron, zone, sched.dst_gap, sched.dst_fold) if sched.cron else None
    every_s = parse_duration(sched.every) if sched.every else None
    at = at_instant(sched.at, zone).timestamp() if sched.at and not (cron or every_s) else None
    kind: Kind = "cron" if cron else "every" if every_s is not None else "at" if at is not None else "after"
    return Definition(
        name,
        sched,
        zone,
        digest,
        kind,
        cron,
        every_s,
        at,
        max_lateness_s=parse_duration(sched.max_lateness) if sched.max_lateness else None,
        jitter_s=jitter_offset(name, parse_duration(sched.jitter)) if sched.jitter else 0.0,
        timeout_s=parse_duration(sched.timeout),
        retry_backoff_s=parse_duration(sched.retry_backoff),
    )


def jitter_offset(name: str, jitter_s: float) -> float:
    """A fixed delay in [0, jitter) from the schedule's name: spreads schedules that share a minute,
    and every restart (and a second process) computes the same one."""
    ms = int(jitter_s * 1000)
    if ms <= 0:
        return 0.0
    return (int(hashlib.sha256(name.encode()).hexdigest()[:12], 16) % ms) / 1000


def tick_key(name: str, version: int, tick_at: float, extra: str = "") -> str:
    """The identity of one tick: a restart, a second process or an overlap never runs it twice."""
    return "t_" + stable_hash(name, version, iso(tick_at), extra)


@dataclass(frozen=True)
class State:
    """What the store remembers of a schedule: when this version was first seen, the last tick
    handled (run or skipped, any version), and the end of the last run."""

    since: float
    last_tick: float | None = None
    completed_at: float | None = None

    def anchor(self) -> float:
        """Ticks after this are due: a schedule set up at 10:05 does not owe its 10:00 tick, but
        one a few seconds before it was first seen still runs (on time, within the grace)."""
        floor = self.since - GRACE_S
        return floor if self.last_tick is None else max(self.last_tick, floor)


@dataclass(frozen=True)
class Run:
    tick_at: float
    late_s: float
    backfill_from: float | None = None  # coalesce: the first tick this one run stands for
    note: str | None = None  # a DST note
    trigger: Trigger = "schedule"
    by: str | None = None  # manual: who asked
    attempt: int = 1
    key: str = ""  # set for every run but a planned tick's (whose key is tick_key of its instant)
    period: tuple[float | None, float] | None = None  # (start, end): set when known before the run
    upstream: tuple[dict[str, Any], ...] = ()  # after: the upstream runs it follows

    def key_of(self, name: str, version: int) -> str:
        return self.key or tick_key(name, version, self.tick_at)


def run_key(name: str, version: int, tick_at: float, trigger: Trigger) -> str:
    """A manual run and a run after an upstream are keys of their own beside the schedule's ticks."""
    return tick_key(name, version, tick_at, "" if trigger == "schedule" else trigger)


def retry_delay(backoff_s: float, attempt: int, rand: float) -> float:
    """The wait before attempt `attempt + 1`: backoff doubled per failed attempt, capped at 64x,
    with ±20% jitter (`rand` in [0, 1)) so schedules failing together do not retry together."""
    return float(backoff_s * 2.0 ** min(attempt - 1, 6) * (0.8 + 0.4 * rand))


def previous_tick(defn: Definition, state: State, before: float) -> float | None:
    """The nominal tick before `before` (strictly): where the period a run covers starts. None
    when the schedule has none (an `at`, or a cron's first tick since watchd knew it)."""
    if defn.kind == "cron":
        assert defn.cron is not None
        end = _dt(before - 0.001)
        # Narrow first: walking a whole hour of an every-minute cron for each run cost ~60 steps of
        # croniter a run (1,000 schedules due together started seconds late).
        for window_s in (120.0, 3600.0, 86400.0, 32 * 86400.0, 400 * 86400.0):
            ticks = list(ticks_between(defn.cron, _dt(before - window_s), end))
            if ticks:
                return ticks[-1].at.timestamp()
        return None
    if defn.kind == "every":
        assert defn.every_s is not None
        return round(before - defn.every_s, 3)
    return None


def period_of(defn: Definition, state: State, run: Run) -> tuple[float, float]:
    """(period_start, period_end) of a run: the interval since the previous tick, so a job knows
    which period it covers. A coalesced run covers every tick it stands for; without a previous
    tick the period starts when watchd first saw the schedule."""
    if run.period is not None:
        start, end = run.period
        return (start if start is not None else state.since), end
    first = run.backfill_from if run.backfill_from is not None else run.tick_at
    # A manual run covers the time since the last tick at or before it.
    start = previous_tick(defn, state, first + (0.001 if run.trigger == "manual" else 0.0))
    return (start if start is not None else min(state.since, run.tick_at)), run.tick_at


@dataclass(frozen=True)
class Skip:
    tick_at: float
    reason: str  # missed | max_lateness | coalesced | dst_gap | overlap
    detail: str
    count: int = 1  # an `every` schedule's missed interval points are one skip
    wall: str = ""  # dst_gap: the local time that did not exist (it shares its instant with others)

    def key(self, name: str, version: int) -> str:
        return tick_key(name, version, self.tick_at, self.wall)


@dataclass
class Due:
    runs: list[Run] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _reason_code(text: str) -> str:
    """schedule.plan_missed's reasons, as the short codes events and `explain` use."""
    if text.startswith("too late"):
        return "max_lateness"
    if text.startswith("coalesced"):
        return "coalesced"
    return "missed"


def plan(defn: Definition, state: State, now: float, expected: float | None = None) -> Due:
    """What to do with the ticks due by `now` (after `state.anchor()`): run which, skip which.

    `expected` is the tick the runner computed as the next one after everything it handled: when it
    is due and on time, it is the only tick due (cron ticks are a minute apart or more), so the
    common case needs no walk through the cron expression.
    """
    eff = now - defn.jitter_s  # a tick is due once its jittered run time has come
    anchor = state.anchor()
    if eff <= anchor or defn.kind == "after":
        return Due()
    if defn.kind == "cron":
        assert defn.cron is not None
        if expected is not None and anchor < expected <= eff < expected + GRACE_S and _plain(defn, eff - expected):
            return Due(runs=[Run(expected, eff - expected)])
        return _plan_cron(defn, defn.cron, anchor, eff)
    if defn.kind == "every":
        return _plan_every(defn, state, eff)
    return _plan_at(defn, state, eff)


def _plain(defn: Definition, late_s: float) -> bool:
    """No gap skips to report and not too late: an on-time tick simply runs."""
    spec = defn.cron
    gap_skips = spec is not None and spec.dst_gap == "skip" and not spec.follows_real_time
    return not gap_skips and (defn.max_lateness_s is None or late_s <= defn.max_lateness_s)


def _plan_cron(defn: Definition, spec: CronSpec, anchor: float, eff: float) -> Due:
    s = defn.schedule
    mp = plan_missed(spec, _dt(anchor), _dt(eff), s.missed, defn.max_lateness_s, grace_s=GRACE_S)
    due = Due()
    backfill = mp.backfill_from.timestamp() if mp.backfill_from else None
    for t in mp.run:
        at = t.at.timestamp()
        due.runs.append(Run(at, eff - at, backfill, t.note))
    due.skips = [Skip(t.at.timestamp(), _reason_code(why), why) for t, why in mp.skipped]
    for wall, why in skipped_in_gap(spec, _dt(anchor), _dt(eff)):
        at = first_instant_at(datetime.fromisoformat(wall), spec.tz).timestamp()
        due.skips.append(Skip(at, "dst_gap", why, wall=wall))
    due.skips.sort(key=lambda k: k.tick_at)
    return due


def _every_base(defn: Definition, state: State, eff: float) -> float:
    # A completion "in the future" means the clock was set back: count from now instead.
    base = state.completed_at if state.completed_at is not None else state.since
    return round(min(base, eff), 3)


def _plan_every(defn: Definition, state: State, eff: float) -> Due:
    assert defn.every_s is not None
    step, s = defn.every_s, defn.schedule
    base = _every_base(defn, state, eff)
    lower = state.last_tick if state.last_tick is not None else -math.inf
    k_lo = 1 if lower < base + step else math.floor((lower - base) / step) + 1
    k_hi = math.floor((eff - base) / step)
    if k_hi < max(k_lo, 1):
        return Due()
    k_lo = max(k_lo, 1)
    last = round(base + k_hi * step, 3)
    late, earlier = eff - last, k_hi - k_lo
    first = round(base + k_lo * step, 3)
    if defn.max_lateness_s is not None and late > defn.max_lateness_s:
        why = f"too late: {format_duration(late)} late, max_lateness is {format_duration(defn.max_lateness_s)}"
        return Due(skips=[Skip(last, "max_lateness", why, count=earlier + 1)])
    if late <= GRACE_S or s.missed != "skip":
        due = Due(runs=[Run(last, late, first if earlier else None)])
        if earlier:
            when = iso(last)
            detail = f"{earlier} interval(s) since {iso(first)} coalesced into the run for {when}"
            due.skips.append(Skip(round(last - step, 3), "coalesced", detail, count=earlier))
        return due
    why = f"missed: {format_duration(late)} late (daemon down or asleep); missed=skip"
    return Due(skips=[Skip(last, "missed", why, count=earlier + 1)])


def _plan_at(defn: Definition, state: State, eff: float) -> Due:
    assert defn.at is not None
    at, s = defn.at, defn.schedule
    if at > eff or (state.last_tick is not None and state.last_tick >= at):
        return Due()
    late = eff - at
    if at <= state.since - GRACE_S:
        return Due(skips=[Skip(at, "missed", f"missed: {s.at} had already passed when the schedule was set up")])
    if defn.max_lateness_s is not None and late > defn.max_lateness_s:
        why = f"too late: {format_duration(late)} late, max_lateness is {format_duration(defn.max_lateness_s)}"
        return Due(skips=[Skip(at, "max_lateness", why)])
    if late <= GRACE_S or s.missed != "skip":
        return Due(runs=[Run(at, late)])
    return Due(skips=[Skip(at, "missed", f"missed: {format_duration(late)} late (daemon down or asleep); missed=skip")])


def next_tick_after(defn: Definition, state: State, after: float) -> float | None:
    """The first nominal tick strictly after `after` (and after the last one handled); None if none."""
    now = after  # the runner passes the present; a completion after it means the clock was set back
    after = max(after, state.anchor())
    if defn.kind == "cron":
        assert defn.cron is not None
        t = next_tick(defn.cron, _dt(after))
        return t.timestamp() if t else None
    if defn.kind == "every":
        assert defn.every_s is not None
        base = _every_base(defn, state, now if math.isfinite(now) else math.inf)
        k = max(1, math.floor((after - base) / defn.every_s) + 1)
        return round(base + k * defn.every_s, 3)
    if defn.kind == "after":
        return None  # runs when its upstream's run ends
    assert defn.at is not None
    return defn.at if defn.at > after else None


def next_run_at(defn: Definition, state: State, now: float) -> float | None:
    """When the runner must next wake for this schedule: the next tick after `now`, jittered."""
    after = now - defn.jitter_s
    t = next_tick_after(defn, state, after)
    spec = defn.cron
    if t is not None and spec is not None and spec.dst_gap == "skip" and not spec.follows_real_time:
        # Wake at a skipped gap tick too, so its skip is reported when it happens, not a day late.
        after = max(after, state.anchor())
        for wall, _ in skipped_in_gap(spec, _dt(after), _dt(t))[:1]:
            t = min(t, first_instant_at(datetime.fromisoformat(wall), spec.tz).timestamp())
    return None if t is None else t + defn.jitter_s


def upcoming(defn: Definition, state: State | None, start: float, n: int) -> list[tuple[float, str | None]]:
    """The next `n` nominal ticks after `start`, with DST notes: `watchd schedules`. Without a
    state (watchd has not run), an `every` schedule counts from `start`."""
    if n <= 0:
        return []
    if defn.kind == "cron":
        assert defn.cron is not None
        ticks = ticks_between(defn.cron, _dt(start), _dt(start) + HORIZON)
        return [(t.at.timestamp(), t.note) for t in islice(ticks, n)]
    if defn.kind == "every":
        st = state or State(since=start)
        out: list[tuple[float, str | None]] = []
        t = next_tick_after(defn, st, start)
        while t is not None and len(out) < n:
            out.append((t, None))
            t = round(t + (defn.every_s or 0), 3)
        return out
    if defn.kind == "after":
        return []
    assert defn.at is not None
    return [(defn.at, None)] if defn.at > start else []


def overlap_action(policy: str, active: int) -> OverlapAction:
    """A tick that comes due while `active` runs of its schedule are still going."""
    if active == 0 or policy == "allow":
        return "run"
    return "replace" if policy == "replace" else "skip"
