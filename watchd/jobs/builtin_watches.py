"""The watches watchd brings along: the canary's own watch, and alerts when its jobs go wrong.

They are ordinary `WatchDef`s (file `<built-in>`), so the engine runs them, and `status` and
`explain` show them, like the watches in files:

- `watchd-canary`: the synthetic path of the canary job. A `watchd.canary.ping` event fires it; its
  handoff goes through the outbox to the `watchd.canary` sink, which answers on NATS.
- `watchd-canary-failed`: a canary failed (`watchd.job.canary.failed`).
- `watchd-backup-failed`: a backup failed (`watchd.job.backup.failed`).
- `watchd-release-failed`: an agent's new release failed its canary; its handoffs are held (or a
  rollback ran): once per failed release (watchd/jobs/release.py). Only when agents are configured.
- `watchd-backup-missing`: no verified backup (`watchd.job.backup.done`) for a whole backup period
  plus two hours (26 h for the default nightly one); only while a backup schedule is enabled.

The alerts go to the top-level `alert = [...]` targets; by default every configured notifier other
than the console, or the console when there is none. Watch ids starting with `watchd-` are
reserved: a watch file using one is a validation error, so a built-in is never silently replaced.
"""

from __future__ import annotations

import hashlib
import itertools
from datetime import UTC, datetime

import msgspec

from watchd.config import (
    AbsentWatch,
    ConsoleNotifier,
    Loaded,
    MatchWatch,
    Pattern,
    Schedule,
    Watch,
    WatchDef,
    effective_schedules,
)
from watchd.cron.schedule import ScheduleError, format_duration, next_tick, parse_cron, parse_duration

BUILTIN_FILE = "<built-in>"
CANARY_WATCH = "watchd-canary"
CANARY_TARGET = "watchd.canary"  # the sink the canary watch hands off to (built by the daemon)
PING_SUBJECT = "watchd.canary.ping"

MISSING_GRACE_S = 2 * 3600.0  # a backup may run late (a long job, a laptop waking up) before it is missing
_PERIOD_REFERENCE = datetime(2026, 1, 5, tzinfo=UTC)  # fixed, so the definition (and version) never drifts
_PERIOD_TICKS = 32


def alert_targets(loaded: Loaded) -> list[str]:
    """`alert = [...]` if set; else every notifier but the console; else the console."""
    if loaded.config.alert is not None:
        return list(loaded.config.alert)
    named = [f"notify.{n}" for n, cfg in loaded.config.notify.items() if not isinstance(cfg, ConsoleNotifier)]
    return named or ["notify.console"]


def enabled_schedules(loaded: Loaded) -> dict[str, Schedule]:
    """The schedules that run: the built-in defaults as the config changes them."""
    return effective_schedules(loaded.config)


def backup_period_s(sched: Schedule, zone: str) -> float | None:
    """The longest gap between two runs of a backup schedule (None for a one-shot `at`)."""
    if sched.every:
        return parse_duration(sched.every)
    if not sched.cron:
        return None
    try:
        spec = parse_cron(sched.cron, sched.timezone or zone, dst_gap=sched.dst_gap, dst_fold=sched.dst_fold)
    except ScheduleError:
        return None
    ticks: list[datetime] = []
    after = _PERIOD_REFERENCE
    for _ in range(_PERIOD_TICKS):
        nxt = next_tick(spec, after)
        if nxt is None:
            break
        ticks.append(nxt)
        after = nxt
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(ticks)]
    return max(gaps) if gaps else None


def builtin_watches(loaded: Loaded) -> list[Watch]:
    alert = alert_targets(loaded)
    watches: list[Watch] = [
        MatchWatch(
            id=CANARY_WATCH,
            description="the canary's synthetic event, handed to the canary sink (checks NATS → engine → delivery)",
            on=Pattern(subject=PING_SUBJECT),
            then=[CANARY_TARGET],
        ),
        MatchWatch(
            id="watchd-canary-failed",
            description="a canary run failed: the path or a notifier/agent probe is broken",
            on=Pattern(subject="watchd.job.canary.failed"),
            then=alert,
            message="watchd canary failed: {event.data.summary}",
        ),
        MatchWatch(
            id="watchd-backup-failed",
            description="a backup failed or could not be verified",
            on=Pattern(subject="watchd.job.backup.failed"),
            then=alert,
        ),
    ]
    if loaded.config.agent:
        watches.append(
            MatchWatch(
                id="watchd-release-failed",
                description="an agent's new release failed its canary: its handoffs are held, or it was rolled back",
                on=Pattern(subject="watchd.release.failed"),
                then=alert,
                message="watchd: {event.data.summary}",
            )
        )
    periods = [
        p for s in enabled_schedules(loaded).values() if s.job == "backup" and (p := backup_period_s(s, loaded.zone()))
    ]
    if periods:
        silence = format_duration(max(periods) + MISSING_GRACE_S)
        watches.append(
            AbsentWatch(
                id="watchd-backup-missing",
                description=f"no verified backup for {silence}",
                expect=Pattern(subject="watchd.job.backup.done"),
                for_=silence,
                then=alert,
                message=f"no verified watchd backup for {silence}: check `watchd status` and the backup schedule",
            )
        )
    return watches


def builtin_defs(loaded: Loaded) -> list[WatchDef]:
    return [
        WatchDef(w, BUILTIN_FILE, 0, hashlib.sha256(msgspec.json.encode(w)).hexdigest()[:16])
        for w in builtin_watches(loaded)
    ]


def all_watches(loaded: Loaded) -> list[WatchDef]:
    """The watch files' watches, then the built-in ones: what the daemon runs and `status` shows."""
    return [*loaded.watches, *builtin_defs(loaded)]
