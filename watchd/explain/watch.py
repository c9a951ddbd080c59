"""`watchd explain`: why a watch fired or did not, and what one event did, from recorded decisions.

The logic is pure functions over plain rows (`Decision`s from the engine, `HandoffRow`s, the
engine's per-key state, `Heard` subjects), so tests build the rows and the CLI only reads them.
The thin readers at the bottom open the state database read-only (safe beside a running daemon:
WAL readers never block the writer) and rebuild an engine view for each watch's timers.

Verdict precedence for `explain WATCH` (the first that applies wins; `--since`/`--key` narrow
what counts). The lines marked (kind) are worded by the watch's kind class (`watchd/engine/`),
which also gives the next due time: explain repeats none of the engine's logic.

1. `enabled = false` → "disabled (enabled = false in file:line)".
   A snooze or mute in force is said before whatever verdict follows: "muted by telegram user
   42 until 2026-11-22 14:00 Europe/Berlin — fired 3 times since …" (answers: SPEC section 8;
   each answer is also a decision in the timeline, with who, when and until when).
2. (kind) An absent watch that is silent now (it fired for the current silence) → "silent since
   … (fired at …)".
3a. Handling an event or timer raised (a `failed` decision), later than its latest decisive
   outcome → "failed on event ID at …: processing failed: …".
3. The latest of fired / would_fire / suppressed decides: "suppressed by cooldown until …",
   "fired N times since …; last at … (handoff h_… delivered to notify.phone)", or "would have
   fired N times since …; last at … (shadow mode: no handoffs)".
4. (kind) What it is waiting for: a deadline window open now → "waiting: deadline …, in 1h12m";
   an absent watch's timer → "waiting: fires at … unless SUBJECT arrives, in …"; a count under
   way → "did not fire: count not reached — 3 of 5 in 10m (key bob)".
5. A `where` (or `key`) that errored → "did not fire: the where errored on N events: …".
6. A `where` that was false → "did not fire: N events on SUBJECT, none matched — last miss: …".
7. (kind) A deadline met, or an expect that came with no window open → "did not fire: met in
   time …" / "did not fire: no window was open — …" (plus when the next scheduled window
   opens); a scheduled deadline with nothing recorded → "waiting: next window opens …".
8. Nothing recorded → "did not fire: nothing arrived on SUBJECT — last heard … from SOURCE" (or
   "never heard since the state began"), from the `subjects` table, wildcards included.

Errors outrank false `where`s (an erroring predicate is usually a bug in the watch). A miss
carries its key when the watch has one and it evaluates for the event, so `--key K` shows the
near misses of K ("N events on SUBJECT for key K, none matched"). Only the latest few misses per
watch and key per batch are stored as rows; the rest are counted in a kept row's `n`, so miss
counts are exact while the timeline shows the nearest misses.

Times are shown in the watch's zone and UTC; JSON times are RFC 3339 (`at` UTC, `at_local` with
the zone's offset).

`explain WATCH --json` (stable)::

    {"watch": str, "kind": "match"|"absent"|"deadline", "mode": "live"|"shadow", "enabled": bool,
     "file": "path:line", "verdict": str, "fired": bool,
     "timeline": [{"at", "at_local", "verdict", "key", "reason", "event_id"}],   # newest last, ≤ 50
     "handoffs": [{"id", "key", "target", "state", "attempt", "last_error", "fired_at"}],
     "next_due": str | null, "note": str | null,   # note: a --since reaching past retention
     "version": {"version", "file", "line", "at", "git_commit", "git_author", "git_time", "git_dirty", …} | null}
    # each timeline entry also has "version": the definition version that made the decision

`explain --event ID --json` (stable)::

    {"event": str, "verdict": str, "rejected": bool,
     "decisions": [{"at", "at_local", "watch", "verdict", "key", "reason", "version"}],
     "handoffs": [{"id", "key", "target", "state", "attempt", "last_error", "fired_at"}]}
"""

from __future__ import annotations

import difflib
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from watchd.config import WatchDef
from watchd.cron.schedule import format_duration, parse_duration
from watchd.engine import (
    DECISIVE,
    Decision,
    Engine,
    KeyState,
    Situation,
    Verdict,
    WatchLogic,
    WatchMeta,
    compile_watch,
    for_key,
)
from watchd.engine.base import hold_words
from watchd.engine.index import subject_matches
from watchd.errors import WatchdError
from watchd.model import instant, iso, ts_from_iso
from watchd.store.db import check_readable
from watchd.store.decisions import decisions_kept_from, event_decisions, watch_decisions
from watchd.store.engine_state import Heard, engine_view, heard
from watchd.store.history import Version, version_at, versions_of
from watchd.store.outbox import HandoffRow, handoff_rows
from watchd.store.run_facts import RunFacts, run_facts

TIMELINE_LIMIT = 50
READ_LIMIT = 20_000  # decisions read per explain: enough for the verdict; totals come from SQL
UTC_NAMES = frozenset({"UTC", "Etc/UTC"})
_DELIVERED = frozenset({"delivered", "accepted", "done", "delivering"})


# ---- plain rows ------------------------------------------------------------------------------


@dataclass(frozen=True)
class WatchInfo:
    """What explain needs of a watch definition: its kind's logic, and where it is defined."""

    logic: WatchLogic
    file: str

    @staticmethod
    def of(d: WatchDef, default_zone: str, logic: WatchLogic | None = None) -> WatchInfo:
        """`logic`: the engine's, when at hand (the version does not matter to explain)."""
        logic = logic or compile_watch(d.watch, 1, default_zone)
        return WatchInfo(logic, f"{d.file}:{d.line}" if d.line else d.file)

    @property
    def id(self) -> str:
        return self.logic.id

    @property
    def kind(self) -> str:
        return self.logic.kind

    @property
    def mode(self) -> str:
        return self.logic.watch.mode

    @property
    def enabled(self) -> bool:
        return self.logic.watch.enabled

    @property
    def zone(self) -> str:
        return self.logic.zone


@dataclass
class WatchState:
    """The engine's view of one watch now: its per-key state and its own (`meta`)."""

    keys: dict[str | None, KeyState] = field(default_factory=dict)
    meta: WatchMeta | None = None

    @staticmethod
    def of(engine: Engine, wid: str) -> WatchState:
        return WatchState(dict(engine.keys.get(wid, {})), engine.meta.get(wid))


@dataclass
class WatchReport:
    info: WatchInfo
    verdict: str
    fired: bool
    timeline: list[Decision]
    total: int  # decisions in range (the timeline shows the last TIMELINE_LIMIT)
    handoffs: list[HandoffRow]
    next_due: float | None
    now: float
    note: str | None = None  # e.g. a --since that reaches past what retention kept
    sources: list[str] = field(default_factory=list)  # silent sources that feed it (explain/sources.py)
    versions: list[Version] = field(default_factory=list)  # its definition history, oldest first
    runs: dict[str, RunFacts] = field(default_factory=dict)  # handoff id -> what its agent run did

    def version_of(self, at: float) -> int | None:
        """The version behind a decision made at `at`."""
        v = version_at(self.versions, at)
        return v.version if v else None

    def to_json(self) -> dict[str, Any]:
        z = self.info.zone
        return {
            "watch": self.info.id,
            "kind": self.info.kind,
            "mode": self.info.mode,
            "enabled": self.info.enabled,
            "file": self.info.file,
            "verdict": self.verdict,
            "fired": self.fired,
            "timeline": [
                {
                    "at": iso(d.at),
                    "at_local": iso_local(d.at, z),
                    "verdict": d.verdict,
                    "key": d.key,
                    "reason": d.reason,
                    "event_id": d.event_id,
                    "version": self.version_of(d.at),
                }
                for d in self.timeline
            ],
            "handoffs": [
                {**h.to_json(), **({"run": self.runs[h.id].to_json()} if h.id in self.runs else {})}
                for h in self.handoffs
            ],
            "next_due": iso(self.next_due),
            "note": self.note,
            "sources": self.sources,
            "version": self.versions[-1].to_json(content=False) if self.versions else None,
        }


@dataclass
class EventReport:
    event_id: str
    verdict: str
    rejected: bool
    decisions: list[Decision]
    handoffs: list[HandoffRow]
    zones: dict[str, str]  # watch -> zone, for local times
    default_zone: str
    versions: dict[str, list[Version]] = field(default_factory=dict)  # each watch's definition history

    def zone(self, watch: str) -> str:
        return self.zones.get(watch, self.default_zone)

    def version_of(self, d: Decision) -> int | None:
        v = version_at(self.versions.get(d.watch or "", []), d.at)
        return v.version if v else None

    def to_json(self) -> dict[str, Any]:
        return {
            "event": self.event_id,
            "verdict": self.verdict,
            "rejected": self.rejected,
            "decisions": [
                {
                    "at": iso(d.at),
                    "at_local": iso_local(d.at, self.zone(d.watch)),
                    "watch": d.watch,
                    "verdict": d.verdict,
                    "key": d.key,
                    "reason": d.reason,
                    "version": self.version_of(d),
                }
                for d in self.decisions
            ],
            "handoffs": [h.to_json() for h in self.handoffs],
        }


# ---- time in words ---------------------------------------------------------------------------


def _clock(dt: datetime) -> str:
    return dt.strftime("%H:%M:%S" if dt.second else "%H:%M")


def when(ts: float, zone: str, now: float) -> str:
    """An instant in the watch's zone and UTC: "03:00 Europe/Berlin (02:00 UTC)"; the date only
    when it is not today (in that zone), and on the UTC side only when it differs."""
    tz = ZoneInfo(zone)
    local = instant(ts, tz)
    today = instant(now, tz).date()
    text = _clock(local) if local.date() == today else f"{local:%Y-%m-%d} {_clock(local)}"
    if zone in UTC_NAMES:
        return f"{text} UTC"
    utc = instant(ts)
    utc_text = _clock(utc) if utc.date() == local.date() else f"{utc:%Y-%m-%d} {_clock(utc)}"
    return f"{text} {zone} ({utc_text} UTC)"


def iso_local(ts: float, zone: str) -> str:
    dt = instant(ts, ZoneInfo(zone))
    return dt.isoformat(timespec="milliseconds" if dt.microsecond else "seconds").replace("+00:00", "Z")


def span(seconds: float) -> str:
    """A coarse duration: whole minutes from an hour up, whole seconds below."""
    s = abs(seconds)
    return format_duration(round(s / 60) * 60 if s >= 3600 else round(s))


def time_until(due: float, now: float) -> str:
    left = due - now
    return f"in {span(left)}" if left >= 0 else f"overdue by {span(left)} (is watchd running?)"


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def _events(n: int) -> str:
    return "1 event" if n == 1 else f"{n} events"


# ---- the verdict -----------------------------------------------------------------------------


def _handoff_clause(hs: list[HandoffRow], t: Callable[[float], str], now: float) -> str:
    if not hs:
        return " (no handoff recorded)"
    parts = [
        f"{h.id} {h.state} {'to' if h.state in _DELIVERED else 'for'} {h.target}{_waiting(h, t, now)}{_decider(h)}"
        for h in hs
    ]
    return f" (handoff{'s' if len(hs) > 1 else ''} {', '.join(parts)})"


def _decider(h: HandoffRow) -> str:
    """In a cluster: the instance that decided it (this one or another; see watchd/handoff_queue.py)."""
    return f", decided by {h.decided_by}" if h.decided_by else ""


def _waiting(h: HandoffRow, t: Callable[[float], str], now: float) -> str:
    """Why a handoff that is not out yet waits: quiet hours, an exhausted token budget, a held release,
    a backoff."""
    if h.state not in ("pending", "retrying") or h.next_attempt_at <= now:
        return ""
    if (h.last_error or "").startswith("budget_exhausted"):  # pending: the agent's waits use no attempt
        return f", budget exhausted: waits until {t(h.next_attempt_at)}"
    if (h.last_error or "").startswith("release_failed"):  # pending too: held until promoted or rolled back
        return f", held: {h.target}'s new release failed its canary (see `watchd release`)"
    if h.state == "pending":
        return f", held for quiet hours until {t(h.next_attempt_at)}"
    return f", next try {t(h.next_attempt_at)}"


def explain_watch(
    info: WatchInfo,
    decisions: Sequence[Decision],
    handoffs: Sequence[HandoffRow],
    state: WatchState,
    heard: Sequence[Heard],
    *,
    now: float,
    since: float | None = None,
    since_text: str | None = None,
    key: str | None = None,
    totals: dict[str, int] | None = None,
    limit: int = TIMELINE_LIMIT,
) -> WatchReport:
    """The report for one watch. `decisions` in any order (filtered here by since/key too);
    `totals` (verdict → count in range) when the reader capped the rows it read."""
    rows = sorted(
        (
            d
            for d in decisions
            if d.watch == info.id and (since is None or d.at >= since) and (key is None or d.key == key)
        ),
        key=lambda d: d.at,
    )
    hs = [h for h in handoffs if (key is None or h.key == key) and (since is None or h.created_at >= since)]
    counts = Counter(totals) if totals is not None else Counter()
    if totals is None:
        for d in rows:
            counts[d.verdict] += d.n
    verdict = _verdict(info, rows, hs, state, heard, counts, now=now, since=since, since_text=since_text, key=key)
    holds = [
        h for h in (state.meta.holds if state.meta else []) if h.until > now and (key is None or h.key in (None, key))
    ]
    if holds and info.enabled:  # a snooze or mute in force comes first: it is why nothing reaches anyone
        verdict = "; ".join(hold_words(h, info.zone) for h in holds) + " — " + verdict
    return WatchReport(
        info=info,
        verdict=verdict,
        fired=counts[Verdict.FIRED] > 0,
        timeline=rows[-limit:] if limit else [],
        total=sum(counts.values()),
        handoffs=hs,
        next_due=info.logic.next_due(state.keys, state.meta, key),
        now=now,
    )


def _verdict(
    info: WatchInfo,
    rows: list[Decision],
    hs: list[HandoffRow],
    state: WatchState,
    heard: Sequence[Heard],
    counts: Counter[str],
    *,
    now: float,
    since: float | None,
    since_text: str | None,
    key: str | None,
) -> str:
    def t(ts: float) -> str:
        return when(ts, info.zone, now)

    logic = info.logic
    keyed = {k: st for k, st in state.keys.items() if key is None or k == key}
    sit = Situation(rows, keyed, state.meta, key, now, t, lambda due: time_until(due, now))
    start = since if since is not None else (rows[0].at if rows else now)

    # 1. switched off
    if not info.enabled:
        return f"disabled (enabled = false in {info.file})"

    # 2. the state now, when it outranks the latest fire (an absent watch's silence)
    text = logic.explain_state(sit)
    if text is not None:
        return text

    # 3. the latest decisive outcome, unless handling an input failed since
    last = sit.latest(*DECISIVE)
    failed = sit.latest(Verdict.FAILED)
    if failed is not None and (last is None or failed.at >= last.at):
        on = f"event {failed.event_id}" if failed.event_id else "a timer"
        n = counts[Verdict.FAILED]
        more = f" ({_times(n)} since {t(start)})" if n > 1 else ""
        return f"failed on {on}{for_key(failed.key)} at {t(failed.at)}{more}: {failed.reason}"
    if last is not None and last.verdict == Verdict.SUPPRESSED and not last.reason.startswith("cooldown until "):
        return f"suppressed: {last.reason}{for_key(last.key)}"
    if last is not None and last.verdict == Verdict.SUPPRESSED:
        until = last.reason.removeprefix("cooldown until ")
        try:
            until_text = t(ts_from_iso(until))
        except ValueError:
            until_text = until
        text = f"suppressed by cooldown until {until_text}{for_key(last.key)}"
        fire = sit.latest_for(last.key, Verdict.FIRED)
        return text + (f"; last fired at {t(fire.at)}" if fire else "")
    if last is not None and last.verdict == Verdict.FIRED:
        mine = [h for h in hs if h.fired_at == iso(last.at) and h.key == last.key]
        return (
            f"fired {_times(counts[Verdict.FIRED])} since {t(start)}; last at {t(last.at)}{for_key(last.key)}"
            + _handoff_clause(mine, t, now)
        )
    if last is not None:  # would_fire
        return (
            f"would have fired {_times(counts[Verdict.WOULD_FIRE])} since {t(start)}; last at {t(last.at)}"
            f"{for_key(last.key)} (shadow mode: no handoffs)"
        )

    # 4. what it is waiting for: a window, a timer, a count
    text = logic.explain_pending(sit)
    if text is not None:
        return text

    # 5. and 6. misses
    error = sit.latest(Verdict.WHERE_ERROR, Verdict.KEY_ERROR)
    if error is not None:
        what = "where" if error.verdict == Verdict.WHERE_ERROR else "key"
        n = counts[Verdict.WHERE_ERROR] + counts[Verdict.KEY_ERROR]
        detail = error.reason.removeprefix(f"{what} errored: ")
        return f"did not fire: the {what} errored on {_events(n)}: {detail}"
    miss = sit.latest(Verdict.WHERE_FALSE)
    if miss is not None:
        return (
            f"did not fire: {_events(counts[Verdict.WHERE_FALSE])} on {logic.miss_subject(miss.reason)}"
            f"{for_key(key)}, none matched — last miss: {miss.reason} (at {t(miss.at)})"
        )

    # 7. what its last decision means (a deadline met, or an expect with no window open)
    text = logic.explain_settled(sit)
    if text is not None:
        return text

    # 8. nothing recorded at all
    subject = logic.waits_for
    span_text = f" in the last {since_text}" if since_text else (" since " + t(since) if since is not None else "")
    head = f"did not fire: nothing arrived on {subject}{for_key(key)}{span_text}"
    heard_rows = [h for h in heard if subject_matches(subject, h.subject)]
    if not heard_rows:
        return f"{head} — never heard since the state began"
    h = max(heard_rows, key=lambda r: r.last_at)
    source = f" from {h.last_source}" if h.last_source else ""
    on = f" on {h.subject}" if h.subject != subject else ""
    return f"{head} — last heard {t(h.last_at)}{source}{on}"


def explain_event(
    event_id: str,
    decisions: Sequence[Decision],
    handoffs: Sequence[HandoffRow],
    zones: dict[str, str],
    default_zone: str,
) -> EventReport:
    """Every decision recorded for one event: which watches it was a candidate for, and how each
    judged it; or that it was rejected and why."""
    rows = sorted((d for d in decisions if d.event_id == event_id), key=lambda d: d.at)
    fired = {(d.watch, d.key, iso(d.at)) for d in rows if d.verdict == Verdict.FIRED}
    hs = [h for h in handoffs if (h.watch, h.key, h.fired_at) in fired]
    rejected = next((d for d in rows if d.verdict == Verdict.REJECTED), None)
    failed = next((d for d in rows if d.verdict == Verdict.FAILED and not d.watch), None)
    if not rows:
        verdict = (
            f"no decisions recorded for event {event_id} (not a candidate for any watch, beyond retention, "
            "or only misses not kept)"
        )
    elif rejected is not None:
        verdict = f"rejected: {rejected.reason} (at {when(rejected.at, default_zone, rejected.at)})"
    elif failed is not None:
        verdict = f"failed: {failed.reason} (at {when(failed.at, default_zone, failed.at)}); the stream went on"
    else:
        last: dict[str, Decision] = {}
        for d in rows:
            last[d.watch] = d  # the last decision per watch says where the event left it
        n = len(last)
        parts = [f"{w} {d.verdict}{for_key(d.key)}" for w, d in last.items()]
        verdict = f"candidate for {n} watch{'es' if n > 1 else ''}: {', '.join(parts)}"
    return EventReport(event_id, verdict, rejected is not None, rows, hs, zones, default_zone)


def suggest(watch_id: str, known: Iterable[str]) -> WatchdError:
    """The error for an unknown watch id, suggesting the nearest ones."""
    ids = sorted(known)
    close = difflib.get_close_matches(watch_id, ids, n=3, cutoff=0.5)
    if close:
        hint = f"did you mean {' or '.join(close)}? (`watchd status` lists every watch)"
    elif ids:
        hint = f"known watches: {', '.join(ids[:10])}{' …' if len(ids) > 10 else ''}"
    else:
        hint = "no watches are configured: add [[watch]] tables under the config's `watches` paths"
    return WatchdError(f"no watch named {watch_id!r}", hint)


# ---- readers (read-only, beside a running daemon or not) -------------------------------------


def open_db(state_dir: Path) -> sqlite3.Connection:
    from watchd.store import connect, db_path

    path = db_path(state_dir)
    if not path.exists():
        raise WatchdError(
            f"no watchd state at {path.absolute()}: the daemon has not run with this config yet",
            hint="start it with `watchd run` (or pass the --config the daemon uses)",
        )
    try:
        conn = connect(path, readonly=True)
        check_readable(conn, "decisions")
    except sqlite3.Error as exc:
        raise WatchdError(f"cannot read {path}: {exc}", hint="check the file's permissions") from None
    return conn


def read_watch_rows(
    conn: sqlite3.Connection, watch_id: str, since: float | None, key: str | None
) -> tuple[list[Decision], dict[str, int], list[HandoffRow]]:
    decisions, totals = watch_decisions(conn, watch_id, since, key, READ_LIMIT)
    return decisions, totals, handoff_rows(conn, watch_id, since=since, key=key, limit=1000)


def explain_from_db(
    conn: sqlite3.Connection,
    defs: list[WatchDef],
    default_zone: str,
    watch_id: str,
    *,
    now: float,
    since: str | None = None,
    key: str | None = None,
) -> WatchReport:
    d = next((d for d in defs if d.watch.id == watch_id), None)
    if d is None:
        raise suggest(watch_id, (d.watch.id for d in defs))
    since_ts = now - parse_since(since) if since else None
    engine = engine_view(conn, defs, default_zone, now)
    info = WatchInfo.of(d, default_zone, engine.watches.get(watch_id))
    decisions, totals, handoffs = read_watch_rows(conn, watch_id, since_ts, key)
    state = WatchState.of(engine, watch_id)
    report = explain_watch(
        info,
        decisions,
        handoffs,
        state,
        heard(conn),
        now=now,
        since=since_ts,
        since_text=since,
        key=key,
        totals=totals,
    )
    report.versions = versions_of(conn, watch_id, "watch")
    report.runs = run_facts(conn, [h.id for h in report.handoffs])
    kept_from = decisions_kept_from(conn)
    if since_ts is not None and kept_from is not None and since_ts < kept_from:
        report.note = (
            f"--since {since} reaches past retention: decisions before {when(kept_from, info.zone, now)} are no "
            "longer kept ([engine] decisions_keep_days / decisions_keep_rows); showing what is available"
        )
    return report


def event_from_db(conn: sqlite3.Connection, defs: list[WatchDef], default_zone: str, event_id: str) -> EventReport:
    rows = event_decisions(conn, event_id)
    watches = sorted({d.watch for d in rows if d.verdict == Verdict.FIRED})
    handoffs: list[HandoffRow] = []
    for w in watches:
        handoffs += handoff_rows(conn, w)
    zones = {d.watch.id: WatchInfo.of(d, default_zone).zone for d in defs}
    report = explain_event(event_id, rows, handoffs, zones, default_zone)
    report.versions = {w: versions_of(conn, w, "watch") for w in {d.watch for d in rows if d.watch}}
    return report


def parse_since(text: str) -> float:
    try:
        return parse_duration(text)
    except WatchdError as exc:
        first = exc.message.split("; ", 1)[0]
        raise WatchdError(f"bad --since: {first}", "use a duration like 90s, 2h, 1d or 1h30m") from None
