"""`watchd test FILE`: backtest watch definitions against recorded history or a JSONL file.

A fresh `Engine` — the pure core the daemon runs — is driven by a virtual clock through the same
inputs the daemon would have seen, so what it reports is what the daemon would have done:

- Instants: with `--events FILE.jsonl` each line's `time` (events are replayed in time order, ties
  in line order); with `--since D` the JetStream timestamp of each message in the EVENTS stream,
  exactly the clock the daemon's engine uses.
- The engine starts at the first instant: the first event of the file, or now − D (or the
  stream's first message, when D reaches further back than the stream keeps). A watch without a
  `key` counts silence from there, as the daemon counts it from when the watch started.
- Before each event, every timer due at or before it fires at its own due instant, as the running
  daemon wakes for it (deadlines, absences, windows opened by a cron — DST included, through the
  same schedule maths); then the event is stepped. At the end the clock advances to the end
  instant (the last event for `--events`, now for `--since`), so a pending deadline or silence
  that would have fired by then is reported.
- Shadow watches count as would-fire (`mode` says which); `enabled = false` watches never fire,
  as in the daemon.
- Totals per watch: `fires`; `events`, the events its patterns matched (whether or not it fired);
  `misses`, the events that reached it by subject but whose `where` was false or errored, or
  whose `key` failed. A `where` or `key` that errored adds a note per watch: how often, and what
  the first such event met ("data.exit_code is a string '0', compared with an int").
- A bad line of the file (not JSON, not an object, no `time`, bad subject, too large) is reported
  with its line number and reason, and skipped; the rest is used. A line without an `id` gets
  `line-N`. A malformed message in the stream is reported by its sequence, as the daemon records
  it as rejected.

`watchd test --json` (stable)::

    {"fires": [{"watch", "key", "at", "at_local", "mode", "reason"}],   # in time order
     "totals": {watch_id: {"fires", "events", "misses"}},
     "skipped_lines": [{"line", "reason"}],       # --events: bad lines, 1-based
     "rejected": [{"seq", "reason"}],             # --since: malformed messages in the stream
     "events": int,                               # events replayed
     "from": str | null, "to": str | null,        # the replayed span, RFC 3339 UTC
     "notes": [str]}                              # e.g. the stream holds less than --since asked

`at` is RFC 3339 UTC; `at_local` the same instant with the watch's zone offset (its `opens`
timezone for a scheduled deadline, else the config's zone). `key` is null for an unkeyed watch.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from rich.console import Console
from rich.table import Table
from rich.text import Text

from watchd import bus
from watchd.config import WatchDef
from watchd.engine import FIRES, MISSES, Decision, Engine, EventInput, Outputs, Tick, Verdict
from watchd.errors import EventRejected, NatsUnavailable, WatchdError
from watchd.explain.clauses import explain_errored
from watchd.explain.watch import WatchInfo, iso_local
from watchd.jobs.meter import Progress  # (events replayed so far, events in all)
from watchd.limits import MAX_EVENT_BYTES
from watchd.model import EVENTS_PREFIX, Event, decode_event, decode_stored_event, iso

STREAM_IDLE_S = 5.0  # a replay that gets no message for this long has lost the stream: say so
REPLAY_BATCH = 256  # messages per fetch
REPLAY_IDLE_DELETE_S = 30.0  # the server deletes the replay's consumer once unused this long


# ---- the report ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WouldFire:
    at: float
    watch: str
    key: str | None
    reason: str
    zone: str
    mode: str

    def to_json(self) -> dict[str, Any]:
        return {
            "watch": self.watch,
            "key": self.key,
            "at": iso(self.at),
            "at_local": iso_local(self.at, self.zone),
            "mode": self.mode,
            "reason": self.reason,
        }


@dataclass(slots=True)
class Totals:
    fires: int = 0
    events: int = 0
    misses: int = 0


@dataclass(frozen=True, slots=True)
class Skipped:
    where: int  # line number (--events) or stream sequence (--since)
    reason: str


@dataclass
class Report:
    file: str
    source: str
    watches: list[WatchInfo]
    fires: list[WouldFire] = field(default_factory=list)
    totals: dict[str, Totals] = field(default_factory=dict)
    events: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    rejected: list[Skipped] = field(default_factory=list)
    start: float | None = None
    end: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "fires": [f.to_json() for f in self.fires],
            "totals": {w: {"fires": t.fires, "events": t.events, "misses": t.misses} for w, t in self.totals.items()},
            "skipped_lines": [{"line": s.where, "reason": s.reason} for s in self.skipped],
            "rejected": [{"seq": s.where, "reason": s.reason} for s in self.rejected],
            "events": self.events,
            "from": iso(self.start),
            "to": iso(self.end),
            "notes": self.notes,
        }


# ---- the replay ------------------------------------------------------------------------------


class Backtest:
    """A fresh engine on a virtual clock: `feed` events in time order, then `finish` at the end."""

    def __init__(self, report: Report, defs: list[WatchDef], default_zone: str, start: float) -> None:
        self.report = report
        self.engine = Engine(default_zone)
        # Versions do not matter here: no handoff is made, and the engine keeps no state across runs.
        self.engine.load([(d, 1) for d in defs], start)
        self.infos = {w.id: w for w in report.watches}
        self.progress: Callable[[int], None] | None = None  # told the events replayed, every PROGRESS_EVERY
        self.errors: dict[tuple[str, Verdict], tuple[int, Decision, Event]] = {}  # how many, and the first
        report.start = start
        report.totals = {w.id: Totals() for w in report.watches}

    def advance_to(self, at: float) -> None:
        """Let time pass to `at` with watchd running: it wakes at each due timer, in order."""
        while (due := self.engine.next_due()) is not None and due <= at:
            self._take(self.engine.step(Tick(due)), None)

    def feed(self, event: Event, at: float, seq: int) -> None:
        self.advance_to(at)
        self.report.events += 1
        if self.progress is not None and self.report.events % PROGRESS_EVERY == 0:
            self.progress(self.report.events)
        self._take(self.engine.step(EventInput(event, at, seq)), event)

    def finish(self, end: float) -> Report:
        end = max(end, self.engine.clock)
        self.advance_to(end)
        self._take(self.engine.step(Tick(end)), None)
        self.report.end = end
        for (wid, verdict), (n, first, event) in self.errors.items():
            what = "where" if verdict == Verdict.WHERE_ERROR else "key"
            detail = explain_errored(first.reason, event).removeprefix(f"{what} errored: ")
            many = "1 event" if n == 1 else f"{n} events, the first"
            self.report.notes.append(f"{wid}: the {what} errored on {many} ({event.id}): {detail}")
        return self.report

    def _take(self, out: Outputs, event: Event | None) -> None:
        verdicts: dict[str, bool] = {}  # watch -> matched (True) or only missed (False), for this event
        for d in out.decisions:
            if d.verdict in FIRES:
                self._fired(d)
            if event is not None and d.event_id == event.id and d.watch in self.report.totals:
                verdicts[d.watch] = verdicts.get(d.watch, False) or d.verdict not in MISSES
                if d.verdict in (Verdict.WHERE_ERROR, Verdict.KEY_ERROR):
                    n, first, at = self.errors.get((d.watch, d.verdict), (0, d, event))
                    self.errors[(d.watch, d.verdict)] = (n + 1, first, at)
        for wid, matched in verdicts.items():
            t = self.report.totals[wid]
            if matched:
                t.events += 1
            else:
                t.misses += 1

    def _fired(self, d: Decision) -> None:
        info = self.infos.get(d.watch)
        zone = info.zone if info else self.engine.default_zone
        mode = info.mode if info else "live"
        self.report.fires.append(WouldFire(d.at, d.watch, d.key, d.reason, zone, mode))
        if d.watch in self.report.totals:
            self.report.totals[d.watch].fires += 1


PROGRESS_EVERY = 500


def new_report(file: str, source: str, defs: list[WatchDef], default_zone: str) -> Report:
    return Report(file=file, source=source, watches=[WatchInfo.of(d, default_zone) for d in defs])


# ---- --events FILE.jsonl ---------------------------------------------------------------------


def read_jsonl(path: Path, max_bytes: int = MAX_EVENT_BYTES) -> tuple[list[tuple[Event, int]], list[Skipped]]:
    """Events of a JSONL file with their line numbers, and the lines skipped with why."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise WatchdError(f"cannot read {path}: {exc.strerror or exc}", hint="check the --events path") from None
    events: list[tuple[Event, int]] = []
    skipped: list[Skipped] = []
    for n, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            events.append((_event_of_line(line, n, max_bytes), n))
        except EventRejected as exc:
            skipped.append(Skipped(n, exc.message))
    return events, skipped


def _event_of_line(line: bytes, n: int, max_bytes: int) -> Event:
    if len(line) > max_bytes:
        raise EventRejected(f"event is {len(line)} bytes, over the {max_bytes}-byte limit")
    try:
        obj = msgspec.json.decode(line)
    except msgspec.DecodeError as exc:
        raise EventRejected(f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise EventRejected('not a JSON object: each line is one event {"subject", "time", "data", "id"?}')
    if "time" not in obj:
        raise EventRejected('no "time": the instant the event happened is needed to replay it (RFC 3339 UTC)')
    obj.setdefault("id", f"line-{n}")
    return decode_event(msgspec.json.encode(obj), max_bytes + 64)


def replay_events(
    file: str,
    defs: list[WatchDef],
    default_zone: str,
    events_path: Path,
    max_bytes: int = MAX_EVENT_BYTES,
    progress: Progress | None = None,
) -> Report:
    """Backtest over a JSONL file: from its first event's instant to its last."""
    events, skipped = read_jsonl(events_path, max_bytes)
    report = new_report(file, str(events_path), defs, default_zone)
    report.skipped = skipped
    if not events:
        report.notes.append(f"no usable events in {events_path}: nothing to replay")
        return report
    ordered = sorted(events, key=lambda e: (e[0].ts, e[1]))
    if ordered != events:
        report.notes.append("the file is not in time order: events were replayed in time order")
    bt = Backtest(report, defs, default_zone, ordered[0][0].ts)
    if progress is not None:
        total = len(ordered)
        bt.progress = lambda done: progress(done, total)
    for event, n in ordered:
        bt.feed(event, event.ts, n)
    return bt.finish(ordered[-1][0].ts)


# ---- --since D: the recorded EVENTS stream ---------------------------------------------------


async def replay_stream(
    file: str,
    defs: list[WatchDef],
    default_zone: str,
    url: str | list[str],
    since_s: float,
    now: float,
    since_text: str,
    max_bytes: int = MAX_EVENT_BYTES,
    progress: Progress | None = None,
) -> Report:
    """Backtest over the EVENTS stream from now − since_s to now, read by an ephemeral consumer."""
    report = new_report(file, f"the {bus.EVENTS_STREAM} stream", defs, default_zone)
    nc = await bus.connect(url, name="watchd-test", timeout_s=3)
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(bus.EVENTS_STREAM)
        except nats.js.errors.NotFoundError:
            raise WatchdError(
                f"NATS has no {bus.EVENTS_STREAM} stream: nothing was recorded there yet",
                hint="has `watchd run` run against this NATS? Or backtest a file with --events FILE.jsonl",
            ) from None
        except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError):
            raise NatsUnavailable("NATS did not answer for the EVENTS stream (is JetStream enabled?)") from None
        start = now - since_s
        state = info.state
        if state.messages == 0 or state.last_seq == 0:
            report.notes.append(f"the {bus.EVENTS_STREAM} stream is empty: nothing to replay")
            return Backtest(report, defs, default_zone, start).finish(now)
        first_at = await _stored_at(js, state.first_seq)
        last_at = await _stored_at(js, state.last_seq)
        if first_at is not None and first_at > start:
            kept = f"{state.messages} event(s) from {iso(first_at)} to {iso(last_at)}"
            report.notes.append(
                f"--since {since_text} reaches back to {iso(start)}, but the stream holds only {kept}: "
                f"replaying from {iso(first_at)}"
            )
            start = first_at
        bt = Backtest(report, defs, default_zone, start)
        if last_at is None or last_at >= start:
            # From the first message by sequence when the whole stream is wanted: exact, where a
            # start time goes through a microsecond round trip.
            first_seq = state.first_seq if first_at is not None and first_at >= start else None
            if progress is not None:  # the sequences still to read bound the events (some may be gone)
                total = state.last_seq - (first_seq or state.first_seq) + 1
                bt.progress = lambda done: progress(done, total)
            await _read_from(js, bt, report, start, first_seq, state.last_seq, max_bytes)
        return bt.finish(max(now, last_at or now))
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


async def _stored_at(js: JetStreamContext, seq: int) -> float | None:
    try:
        msg = await js.get_msg(bus.EVENTS_STREAM, seq=seq)
    except (nats.errors.Error, nats.js.errors.Error):
        return None
    return msg.time.timestamp() if msg.time is not None else None


async def _read_from(
    js: JetStreamContext,
    bt: Backtest,
    report: Report,
    start: float,
    first_seq: int | None,
    last_seq: int,
    max_bytes: int,
) -> None:
    """Feed every message from `start` (or `first_seq`) to `last_seq`, the last one when the replay began.

    An ephemeral pull consumer that needs no acks: the `read` role may create one on EVENTS (named
    by the client, see watchd/credentials.py) but may not delete it; the server does, once idle."""
    if first_seq is not None:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=first_seq)
    else:  # the server's BY_START_TIME is inclusive; the time is cut to the microsecond, not rounded up
        start_dt = datetime.fromtimestamp(math.floor(start * 1e6) / 1e6, UTC)
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=start_dt)
    config.ack_policy = AckPolicy.NONE
    config.inactive_threshold = REPLAY_IDLE_DELETE_S
    sub = await js.pull_subscribe(EVENTS_PREFIX + ">", stream=bus.EVENTS_STREAM, config=config)
    try:
        while True:
            try:
                msgs = await sub.fetch(REPLAY_BATCH, timeout=STREAM_IDLE_S)
            except nats.errors.TimeoutError:
                report.notes.append(f"the stream stopped delivering before seq {last_seq}: the replay is incomplete")
                return
            for msg in msgs:
                seq = bus.seq_of(msg)
                try:
                    event, _id_note = decode_stored_event(msg.data, seq, max_bytes)  # the id the daemon gave it
                except EventRejected as exc:
                    report.rejected.append(Skipped(seq, exc.message))
                else:
                    bt.feed(event, bus.time_of(msg), seq)
                if seq >= last_seq:
                    return
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


# ---- rendering -------------------------------------------------------------------------------


def _utc(ts: float | None) -> str:
    return "—" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def when(ts: float, zone: str) -> str:
    """Like "2026-10-25 02:30:00 CET (01:30:00 UTC)": the zone's abbreviation tells a repeated
    fall-back hour apart; the UTC date only when it differs."""
    local = datetime.fromtimestamp(ts, ZoneInfo(zone))
    text = local.strftime("%Y-%m-%d %H:%M:%S %Z")
    if local.utcoffset() == timedelta(0):
        return text if local.tzname() == "UTC" else f"{text} (UTC)"
    utc = datetime.fromtimestamp(ts, UTC)
    return f"{text} ({utc:%H:%M:%S} UTC)" if utc.date() == local.date() else f"{text} ({utc:%Y-%m-%d %H:%M:%S} UTC)"


def render(report: Report, console: Console, all_fires: bool = False) -> None:
    """A summary per watch (fires, the first and the last, how many keys), what was skipped, and
    with `all_fires` every would-be fire (watch zone and UTC), two lines each, like `dlq list`:
    reasons are long and never cut to fit 80 columns. Text, not markup: keys and reasons come
    from event data."""
    n = len(report.watches)
    head = f"backtest of {n} watch{'es' if n != 1 else ''} from {report.file} over {report.events} events from "
    console.print(Text(head + report.source))
    console.print(Text(f"  {_utc(report.start)} → {_utc(report.end)}"))
    for note in report.notes:
        console.print(Text(f"note: {note}", style="yellow"))
    console.print()
    if all_fires:
        for f in report.fires:
            key = f" [{f.key}]" if f.key is not None else ""
            shadow = " (shadow: would fire)" if f.mode == "shadow" else ""
            console.print(Text(f"{when(f.at, f.zone)}  {f.watch}{key}{shadow}"))
            console.print(Text(f"    {f.reason}", style="dim"))
        if report.fires:
            console.print()
    # 80 columns: the watch id folds rather than being cut; the instants never break
    summary = Table(box=None, pad_edge=False)
    summary.add_column("watch", overflow="fold")
    for name in ("mode", "fires", "first", "last", "keys", "events", "misses"):
        summary.add_column(name, no_wrap=True)
    by_watch: dict[str, list[WouldFire]] = {}
    for f in report.fires:
        by_watch.setdefault(f.watch, []).append(f)
    for w in report.watches:
        t = report.totals.get(w.id, Totals())
        fires = by_watch.get(w.id, [])
        first = _short(fires[0].at, fires[0].zone) if fires else "-"
        last = _short(fires[-1].at, fires[-1].zone) if fires else "-"
        keys = len({f.key for f in fires if f.key is not None})
        mode = w.mode if w.enabled else "disabled"
        cells = (
            w.id,
            mode,
            str(t.fires),
            first,
            last,
            str(keys) if keys else "-",
            str(t.events),
            str(t.misses),
        )
        summary.add_row(*(Text(c) for c in cells))
    console.print(summary, soft_wrap=False)  # a table fits the terminal: its cells wrap, not its lines
    _skipped(console, "skipped line", report.skipped)
    _skipped(console, "rejected seq", report.rejected)
    fires_n = len(report.fires)
    more = "" if all_fires or not fires_n else " (--all lists each one with its reason)"
    console.print(Text(f"\n{fires_n} would-be fire{'s' if fires_n != 1 else ''}{more}"))


def _short(ts: float, zone: str) -> str:
    return datetime.fromtimestamp(ts, ZoneInfo(zone)).strftime("%m-%d %H:%M")


def _skipped(console: Console, label: str, items: Iterable[Skipped]) -> None:
    items = list(items)
    if items:
        console.print()
    for s in items:
        console.print(Text(f"{label} {s.where}: {s.reason}", style="yellow"))
