"""The heartbeat job: is there pending work? Re-drive only that, and tell an outside monitor we live.

It looks, in one read of the state, for:

- due retries: handoffs `pending`/`retrying` whose time has come → the dispatcher is woken;
- deliveries stuck in `delivering` long past their target's own timeout (an outcome that was never
  recorded) → put back to `retrying` with the same id, and the dispatcher is woken;
- overdue timers: a watch whose next due time is more than a minute gone (the engine loop fires
  timers itself, so these are only reported: a stalled engine, or a daemon that was down);
- silent sources: a `[source.x]` with `expect_every` that has published nothing for longer;
- new dead letters since the last heartbeat.

It never creates a handoff and never wakes anything when nothing is pending. Targets with a
`poll_batches()` method (batch agents) are polled, and their results counted. After a good run an
optional dead-man's switch (`ping_url` on the heartbeat's schedule, e.g. a Healthchecks.io URL) gets
a GET, so that something outside watches the watcher. That URL is a secret: it never appears in the
job's data, its summary or a log line.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Sized
from dataclasses import dataclass
from typing import Any

from watchd.config import Loaded, NatsAgent, resolve_secret
from watchd.cron.schedule import ScheduleError, format_duration, parse_duration
from watchd.dispatch import Delivered
from watchd.errors import WatchdError
from watchd.jobs import JobContext, JobResult
from watchd.jobs.builtin_watches import all_watches, enabled_schedules
from watchd.model import iso
from watchd.notify import http_client
from watchd.notify.http_client import DEFAULT_TIMEOUT_S, HttpClient, Response
from watchd.sources.settings import subject_of
from watchd.store.engine_state import Heard, engine_view, heard
from watchd.store.meta import get_float, set_metas
from watchd.store.outbox import dead_counts, delivering, due_count

log = logging.getLogger("watchd.jobs.heartbeat")

# A delivery may overrun its target's own timeout by this much before it counts as stuck: the
# dispatcher records every outcome, so only a lost one (a store error, a wedged task) gets here.
LEASE_GRACE_S = 300.0
OVERDUE_SLACK_S = 60.0  # the engine fires a timer within seconds; a minute late means it is not
META_LAST = "heartbeat.last_at"
META_FIRST = "heartbeat.first_at"  # a source never heard from is silent counting from here
SERVICE = "the dead-man's switch"


@dataclass
class _Snapshot:
    due_retries: int
    delivering: list[tuple[str, str, float]]  # id, target, updated_at
    dead_total: int
    dead_new: int
    heard: list[Heard]
    first_at: float | None
    overdue: list[dict[str, Any]]


def lease_s(loaded: Loaded, target: str) -> float:
    """How long one delivery to `target` may take at most, plus the grace."""
    kind, _, name = target.partition(".")
    agent = loaded.config.agent.get(name) if kind == "agent" else None
    if agent is None:
        return DEFAULT_TIMEOUT_S + LEASE_GRACE_S  # a notifier: one HTTP request
    timeout = agent.ack_timeout if isinstance(agent, NatsAgent) else agent.timeout
    return parse_duration(timeout) + LEASE_GRACE_S


def _snapshot(conn: sqlite3.Connection, loaded: Loaded, now: float) -> _Snapshot:
    """One read of the state, on the store's thread."""
    last_at = get_float(conn, META_LAST)
    dead_total, dead_new = dead_counts(conn, last_at or 0.0)
    engine = engine_view(conn, all_watches(loaded), loaded.zone(), now)
    overdue = []
    for wid in engine.watches:
        at = engine.watch_next_due(wid)
        if at is not None and at < now - OVERDUE_SLACK_S:
            overdue.append({"watch": wid, "due": iso(at), "late_s": round(now - at)})
    return _Snapshot(
        due_count(conn, now), delivering(conn), dead_total, dead_new, heard(conn), get_float(conn, META_FIRST), overdue
    )


def subject_pattern(template: str) -> re.Pattern[str]:
    """A source's `subject` template (`github.{header:X-GitHub-Event}`) as a regex over subjects."""
    parts = re.split(r"\{[^}]*\}", template)
    return re.compile(".+".join(re.escape(p) for p in parts))


def silent_sources(loaded: Loaded, subjects: list[Heard], since: float, now: float) -> list[dict[str, Any]]:
    """Sources with `expect_every` that published nothing for longer. A source is recognised by its
    name as the events' source, or by its subject template; one never heard from is silent
    counting from `since` (the first heartbeat)."""
    silent = []
    for name, src in sorted(loaded.config.source.items()):
        if not src.expect_every:
            continue
        try:
            every = parse_duration(src.expect_every)
        except ScheduleError:
            continue  # `watchd validate` reports it
        subject = subject_of(src)
        pattern = subject_pattern(subject) if subject else None
        # Sources publish with their name as the events' source; the subject also recognises a
        # source that runs elsewhere under another name (or an older version that set none).
        times = [h.last_at for h in subjects if h.last_source == name or (pattern and pattern.fullmatch(h.subject))]
        last = max(times, default=None)
        quiet_for = now - (last if last is not None else since)
        if quiet_for > every:
            silent.append(
                {"source": name, "last_at": iso(last), "silent_s": round(quiet_for), "expect_every": src.expect_every}
            )
    return silent


async def _poll_batches(ctx: JobContext) -> tuple[int, int, list[str]]:
    """Poll every target that has batches out; (targets polled, results, problems)."""
    polled = results = 0
    problems = []
    for name, target in sorted(ctx.targets.items()):
        poll = getattr(target, "poll_batches", None)
        if poll is None:
            continue
        polled += 1
        try:
            got = await poll()
        except Exception as exc:  # one agent's trouble must not stop the heartbeat
            log.warning("%s: polling batches failed (%s)", name, type(exc).__name__)
            problems.append(f"{name}: polling batches failed ({type(exc).__name__})")
            continue
        results += got if isinstance(got, int) else len(got) if isinstance(got, Sized) else 0
    return polled, results, problems


def ping_url(loaded: Loaded) -> str | None:
    """The dead-man's switch of the heartbeat schedule (its raw value: `env:NAME` or a URL)."""
    for sched in enabled_schedules(loaded).values():
        if sched.job == "heartbeat" and sched.ping_url:
            return sched.ping_url
    return None


async def ping(raw: str, http: HttpClient) -> tuple[bool, str]:
    """GET the dead-man's switch. Every detail is built from the host and status, then scrubbed."""
    try:
        url = resolve_secret(raw) or ""
    except WatchdError as exc:
        return False, f"ping_url: {exc.message}"
    secrets = http_client.url_secrets(url)
    try:
        http_client.check_http_url("heartbeat", url, "ping_url", secret=True)
    except WatchdError as exc:
        return False, http_client.scrub(exc.message, secrets)
    resp = await http.send("GET", url, name="heartbeat", service=SERVICE, secrets=secrets)
    if not isinstance(resp, Response):
        return False, resp.detail
    outcome = http_client.classify(
        resp, name="heartbeat", service=SERVICE, hints={0: "check ping_url"}, secrets=secrets
    )
    if isinstance(outcome, Delivered):
        return True, f"{SERVICE} at {http_client.host_of(url)} answered {resp.status}"
    return False, outcome.detail


async def run(ctx: JobContext) -> JobResult:
    store, loaded = ctx.store, ctx.loaded
    now = ctx.clock()
    snap = await store.call(_snapshot, loaded, now)
    stuck_ids = [hid for hid, target, at in snap.delivering if now - at > lease_s(loaded, target)]
    stuck = await store.run(store.requeue_stuck, stuck_ids, now) if stuck_ids else 0
    if snap.due_retries or stuck:
        ctx.wake_dispatcher()
    silent = silent_sources(loaded, snap.heard, snap.first_at if snap.first_at is not None else now, now)
    polled, results, problems = await _poll_batches(ctx)
    await store.call(set_metas, {META_LAST: repr(now), **({META_FIRST: repr(now)} if snap.first_at is None else {})})

    done: list[str] = []
    if snap.due_retries:
        done.append(f"re-drove {snap.due_retries} due {_plural(snap.due_retries, 'retry', 'retries')}")
    if stuck:
        done.append(f"re-drove {stuck} stuck {_plural(stuck, 'delivery', 'deliveries')}")
    for o in snap.overdue:
        done.append(f"timer of {o['watch']} overdue by {format_duration(o['late_s'])}")
    for s in silent:
        done.append(f"source {s['source']} silent for {format_duration(s['silent_s'])}")
    if snap.dead_new:
        done.append(f"{snap.dead_new} new dead {_plural(snap.dead_new, 'letter', 'letters')} (watchd dlq list)")
    if results:
        done.append(f"{results} batch {_plural(results, 'result', 'results')} collected")
    done.extend(problems)
    data: dict[str, Any] = {
        "due_retries": snap.due_retries,
        "stuck_deliveries": stuck,
        "overdue_timers": len(snap.overdue),
        "overdue": snap.overdue,
        "silent_sources": len(silent),
        "silent": silent,
        "dead_letters": snap.dead_total,
        "dead_letters_new": snap.dead_new,
        "batch_polls": polled,
        "batch_results": results,
    }
    ok = True
    raw_url = ping_url(loaded)
    if raw_url is not None:
        if ctx.http is not None:
            ok, detail = await ping(raw_url, ctx.http)
        else:  # run outside the daemon (a test, a tool): a client for this ping alone
            async with HttpClient() as http:
                ok, detail = await ping(raw_url, http)
        data["ping"] = {"ok": ok, "detail": detail}
        if not ok:
            done.append(f"dead-man's switch ping failed: {detail}")
    summary = "; ".join(done) or "nothing pending"
    data["summary"] = summary
    return JobResult(ok, summary, data)


def _plural(n: int, one: str, many: str) -> str:
    return one if n == 1 else many
