"""`/metrics` in the Prometheus text format, through prometheus_client, loaded by the first scrape.

Two kinds of figures. What the daemon sees happen — decisions, fires, deliveries, ticks, job
outcomes, refusals — is counted as it happens, in plain dicts per daemon (tests run several in
one process), turned into families when scraped. What is a state — handoffs by target and state,
dead letters, the last backup and canary, agent runs and their cost, the engine's position — is
read when scraped, from the daemon and from the state database opened read-only."""

from __future__ import annotations

import bisect
import collections
import itertools
import math
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from watchd.engine.verdict import FIRES
from watchd.model import ts_from_iso

if TYPE_CHECKING:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import CollectorRegistry

    from watchd.config import Loaded
    from watchd.engine.base import Decision
    from watchd.upkeep import LoopStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_SCHEDULE_EVENT = re.compile(r"watchd\.schedule\.([^.]+)\.(started|done|failed|skipped)")
_JOB_EVENT = re.compile(r"watchd\.job\.([^.]+)\.(done|failed)")


class Counts:
    """A counter family: a total per label values. Kept as a dict until scraped: prometheus_client
    (with its HTTP server, gzip and snappy) is loaded by the first scrape, not by every daemon."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...]) -> None:
        self.name, self.documentation, self.labels = name, documentation, labels
        self.values: dict[tuple[str, ...], float] = collections.defaultdict(float)

    def family(self) -> Metric:
        fam = counter_family(self.name, self.documentation, labels=list(self.labels))
        for values, total in list(self.values.items()):
            fam.add_metric(list(values), total)
        return fam


class Timings:
    """A histogram family: per label values, the count in each bucket, the sum and the count."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...], buckets: tuple[float, ...]) -> None:
        self.name, self.documentation, self.labels = name, documentation, labels
        self.bounds = (*buckets, math.inf)
        self.values: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}
        if not labels:  # a histogram without labels shows its zeros before anything is observed
            self.values[()] = ([0] * len(self.bounds), [0.0])

    def observe(self, value: float, *labels: str) -> None:
        got = self.values.get(labels)
        if got is None:
            got = self.values[labels] = ([0] * len(self.bounds), [0.0])
        got[0][bisect.bisect_left(self.bounds, value)] += 1
        got[1][0] += value

    def family(self) -> Metric:
        from prometheus_client.core import HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        les = [floatToGoString(b) for b in self.bounds]  # type: ignore[no-untyped-call]
        fam = HistogramMetricFamily(self.name, self.documentation, labels=list(self.labels))
        for values, (counts, total) in list(self.values.items()):
            cumulative = [float(n) for n in itertools.accumulate(counts)]
            fam.add_metric(list(values), list(zip(les, cumulative, strict=True)), total[0])
        return fam


class Metrics:
    def __init__(self) -> None:
        self.decisions = Counts(
            "watchd_decisions", "Decisions the engine recorded, by watch and verdict.", ("watch", "verdict")
        )
        self.fires = Counts("watchd_fires", "Watches that fired (or would have, in shadow mode).", ("watch",))
        self.deliveries = Counts("watchd_deliveries", "Delivery attempts by target and outcome.", ("target", "outcome"))
        self.delivery_latency = Timings(
            "watchd_delivery_latency_seconds",
            "From a handoff's fire to its successful delivery.",
            ("target",),
            (0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 1800, 7200),
        )
        self.tick_lateness = Timings(
            "watchd_schedule_tick_lateness_seconds",
            "How late a schedule's tick started after its due instant (jitter excluded).",
            ("schedule",),
            (0.1, 0.5, 1, 5, 30, 60, 300, 3600),
        )
        self.ticks_skipped = Counts(
            "watchd_schedule_ticks_skipped", "Ticks skipped or missed, by schedule and reason.", ("schedule", "reason")
        )
        self.ack_window = Timings(
            "watchd_handoff_ack_window_seconds",
            "In a cluster: from the start of a delivery to the server's confirmation of the queue's ack. A "
            "deliverer that dies inside this window may have the next holder deliver that handoff again.",
            (),
            (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1, 5),
        )
        self.job_runs = Counts("watchd_job_runs", "Job outcomes by job and outcome.", ("job", "outcome"))
        self._states: list[Callable[[], Iterator[Metric]]] = []
        self._registry: CollectorRegistry | None = None

    # ---- what happens ----

    def decided(self, decisions: Iterable[Decision]) -> None:
        counts, fires = self.decisions.values, self.fires.values
        for d in decisions:
            counts[d.watch, str(d.verdict)] += d.n
            if d.verdict in FIRES:
                fires[(d.watch,)] += 1

    def delivered(self, target: str, outcome: str, latency_s: float | None = None) -> None:
        self.deliveries.values[target, outcome] += 1
        if latency_s is not None:
            self.delivery_latency.observe(max(0.0, latency_s), target)

    def own_event(self, subject: str, data: dict[str, Any]) -> None:
        """Read the figures off watchd's own events as they are published: each tick, skip and job
        outcome is one, so the scheduler needs no hooks of its own."""
        if m := _SCHEDULE_EVENT.fullmatch(subject):
            schedule, what = m.groups()
            if what == "started" and isinstance(data.get("lateness_s"), int | float):
                self.tick_lateness.observe(max(0.0, float(data["lateness_s"])), schedule)
            elif what == "skipped":
                reason = str(data.get("reason") or "unknown")
                self.ticks_skipped.values[schedule, reason] += int(data.get("count") or 1)
        elif m := _JOB_EVENT.fullmatch(subject):
            self.job_runs.values[m.groups()] += 1

    # ---- scraping ----

    def add_state(self, read: Callable[[], Iterator[Metric]]) -> None:
        self._states.append(read)

    def _happened(self) -> Iterator[Metric]:
        for figure in (
            self.decisions,
            self.fires,
            self.deliveries,
            self.delivery_latency,
            self.tick_lateness,
            self.ticks_skipped,
            self.ack_window,
            self.job_runs,
        ):
            yield figure.family()
        for read in self._states:
            yield from read()

    def exposition(self) -> bytes:
        # A registry per daemon (tests run several in one process), never the library's global one.
        from prometheus_client import CollectorRegistry, generate_latest

        if self._registry is None:
            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(_Collector(self._happened))
        return generate_latest(self._registry)


class _Collector:
    """What `CollectorRegistry.register` takes: families read when scraped."""

    def __init__(self, read: Callable[[], Iterator[Metric]]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        return self.read()

    def describe(self) -> Iterable[Metric]:
        return []  # families vary with the state (targets, agents): not described up front


def counter_family(name: str, documentation: str, **kw: Any) -> CounterMetricFamily:
    from prometheus_client.core import CounterMetricFamily

    return CounterMetricFamily(name, documentation, **kw)


def gauge_family(name: str, documentation: str, **kw: Any) -> GaugeMetricFamily:
    from prometheus_client.core import GaugeMetricFamily

    return GaugeMetricFamily(name, documentation, **kw)


def health_families(health: dict[str, Any], refusals: dict[str, int]) -> Iterator[Metric]:
    """What the daemon knows of itself: up, its parts, its position in the stream."""
    yield _gauge("watchd_up", "1 when the engine loop runs and NATS is connected.", 1 if health.get("ok") else 0)
    yield _gauge("watchd_engine_ok", "1 when the engine loop ran recently.", 1 if health.get("engine") else 0)
    yield _gauge("watchd_nats_connected", "1 while connected to NATS.", 1 if health.get("nats") else 0)
    yield _gauge(
        "watchd_storage_ok",
        "1 while events and state can be stored (0 from a failed publish or commit until the next success).",
        1 if health.get("storage", True) else 0,
    )
    yield _gauge("watchd_watches", "Watches loaded.", health.get("watches", 0))
    yield _gauge("watchd_uptime_seconds", "Seconds since the daemon started.", health.get("uptime_s", 0))
    yield _gauge("watchd_last_seq", "The last stream sequence the engine committed.", health.get("last_seq", 0))
    if "behind" in health:  # as of the last batch fetched: a stalled engine shows its last figure
        yield _gauge("watchd_engine_lag_events", "Events stored but not yet decided.", health["behind"])
    events = counter_family("watchd_events", "Events the engine consumed since start.")
    events.add_metric([], health.get("events", 0))
    yield events
    rejected = counter_family("watchd_http_rejected", "Requests the listener refused, by reason.", labels=["reason"])
    for reason, n in sorted(refusals.items()):
        rejected.add_metric([reason], n)
    yield rejected
    yield from source_families(health.get("sources") or [])
    if health.get("cluster"):
        yield from cluster_families(health["cluster"])


def cluster_families(view: dict[str, Any]) -> Iterator[Metric]:
    """The deployment as this instance last saw it (SPEC section 9): who holds the lease and since
    when, the members, the backlog on the shared consumers, and the handoffs queued twice and dropped."""
    name = view["name"]
    holder = gauge_family(
        "watchd_cluster_lease_holder",
        "1 for the instance that holds the deployment's lease, as this instance last read it.",
        labels=["cluster", "instance", "host", "pid"],
    )
    lease = view.get("lease")
    if lease:
        holder.add_metric([name, lease["instance"], lease["host"], str(lease["pid"])], 1)
    yield holder
    if lease and lease.get("since_ts"):
        since = gauge_family(
            "watchd_cluster_lease_since_timestamp_seconds", "When the holder took the lease.", labels=["cluster"]
        )
        since.add_metric([name], lease["since_ts"])
        yield since
    mine = gauge_family(
        "watchd_cluster_holding", "1 while this instance holds the lease and decides.", labels=["cluster", "instance"]
    )
    mine.add_metric([name, view["instance"]], 1 if view.get("role") == "holder" else 0)
    yield mine
    members = gauge_family("watchd_cluster_members", "Instances in the deployment.", labels=["cluster"])
    members.add_metric([name], len(view.get("members") or []))
    yield members
    shard_rows = view.get("shards") or []
    if len(shard_rows) > 1:  # [cluster] shards: who steps each part of the watches
        shard_holder = gauge_family(
            "watchd_cluster_shard_holder",
            "1 for the instance that holds each shard's lease, as this instance last read it.",
            labels=["cluster", "shard", "instance"],
        )
        for row in shard_rows:
            if row["holder"]:
                shard_holder.add_metric([name, str(row["shard"]), row["holder"]], 1)
        yield shard_holder
        held = gauge_family("watchd_cluster_shards_held", "Shards this instance steps.", labels=["cluster", "instance"])
        held.add_metric([name, view["instance"]], len(view.get("holding") or []))
        yield held
    lag = gauge_family(
        "watchd_cluster_lag",
        "Backlog on the deployment's shared consumers: events not yet decided, handoffs not yet delivered.",
        labels=["cluster", "queue"],
    )
    for queue, n in sorted((view.get("lag") or {}).items()):
        lag.add_metric([name, queue], n)
    yield lag
    if "duplicates" in view:
        dropped = counter_family(
            "watchd_cluster_handoffs_queued_twice",
            "Handoffs this instance decided again (a batch decided twice) that the stream held already.",
            labels=["cluster"],
        )
        dropped.add_metric([name], view["duplicates"])
        yield dropped


def task_families(stats: Iterable[LoopStats]) -> Iterator[Metric]:
    """The daemon's loops and tasks (watchd/upkeep.py): how often each failed, was started again,
    and whether it is failing now."""
    failures = counter_family(
        "watchd_task_failures", "Failures of a loop or task of the daemon, each retried with backoff.", labels=["task"]
    )
    restarts = counter_family("watchd_task_restarts", "Times a task crashed and was started again.", labels=["task"])
    failing = gauge_family("watchd_task_failing", "1 while a loop or task's last attempt failed.", labels=["task"])
    for st in sorted(stats, key=lambda st: st.name):
        failures.add_metric([st.name], st.failures)
        restarts.add_metric([st.name], st.restarts)
        failing.add_metric([st.name], 1 if st.failing else 0)
    yield from (failures, restarts, failing)


def source_families(sources: list[dict[str, Any]]) -> Iterator[Metric]:
    """Each source's health (sources/health.py): what it published, refused and when it last spoke."""
    events = counter_family("watchd_source_events", "Events a source published.", labels=["source", "type"])
    rejections = counter_family(
        "watchd_source_rejections", "What a source refused or dropped, by reason.", labels=["source", "reason"]
    )
    restarts = counter_family(
        "watchd_source_restarts", "Times a source failed and was started again.", labels=["source"]
    )
    last = gauge_family(
        "watchd_source_last_event_timestamp_seconds", "When a source last published (Unix time).", labels=["source"]
    )
    silent = gauge_family("watchd_source_silent", "1 while a source is silent past expect_every.", labels=["source"])
    failing = gauge_family(
        "watchd_source_error", "1 when a source's last error is newer than its last event.", labels=["source"]
    )
    for s in sources:
        name = s["name"]
        events.add_metric([name, s["type"]], s.get("events", 0))
        for reason, n in sorted((s.get("rejections") or {}).items()):
            rejections.add_metric([name, reason], n)
        restarts.add_metric([name], s.get("restarts", 0))
        if s.get("last_event_ts") is not None:
            last.add_metric([name], s["last_event_ts"])
        silent.add_metric([name], 1 if s.get("silent") else 0)
        erred = s.get("last_error_at") is not None and (s.get("last_event_at") or "") < s["last_error_at"]
        failing.add_metric([name], 1 if erred else 0)
    yield from (events, rejections, restarts, last, silent, failing)


def store_families(loaded: Loaded) -> Iterator[Metric]:
    """What the state database holds now: handoffs, dead letters, agent runs, backups, canaries."""
    from watchd.jobs.backup import last_backup
    from watchd.jobs.canary import last_canary
    from watchd.store import open_readonly
    from watchd.store.outbox import count_by_target_state
    from watchd.store.runs import totals_by_agent

    handoffs = gauge_family("watchd_handoffs", "Handoffs by target and state.", labels=["target", "state"])
    dead = 0
    runs = counter_family(
        "watchd_agent_runs", "Agent runs kept, by agent, model and outcome.", labels=["agent", "model", "outcome"]
    )
    tokens = counter_family(
        "watchd_agent_tokens", "Tokens of the kept agent runs.", labels=["agent", "model", "direction"]
    )
    cost = counter_family(
        "watchd_agent_cost_usd", "Estimated cost of the kept agent runs, US dollars.", labels=["agent", "model"]
    )
    canary_at: float | None = None
    conn = open_readonly(loaded.state_dir)
    if conn is not None:
        with conn:
            try:
                for target, state, n in count_by_target_state(conn):
                    handoffs.add_metric([target, state], n)
                    dead += n if state == "dead" else 0
                spent: dict[tuple[str, str], list[float]] = {}
                for agent, model, outcome, n, tin, tout, usd in totals_by_agent(conn):
                    runs.add_metric([agent, model, outcome], n)
                    acc = spent.setdefault((agent, model), [0, 0, 0.0])
                    acc[0] += tin or 0
                    acc[1] += tout or 0
                    acc[2] += usd or 0.0
                for (agent, model), totals in sorted(spent.items()):
                    tokens.add_metric([agent, model, "input"], totals[0])
                    tokens.add_metric([agent, model, "output"], totals[1])
                    cost.add_metric([agent, model], totals[2])
                canary = last_canary(conn)
                if canary and canary.get("ok") and canary.get("at"):
                    canary_at = ts_from_iso(str(canary["at"]))
            except sqlite3.Error:
                pass  # a state db no daemon has finished creating: report what is known
    yield handoffs
    yield _gauge("watchd_dead_letters", "Handoffs in the dead-letter queue.", dead)
    yield runs
    yield tokens
    yield cost
    backup = last_backup(loaded)
    if backup and backup.get("verified") and backup.get("at"):
        at = ts_from_iso(str(backup["at"]))
        yield _gauge("watchd_last_backup_timestamp_seconds", "When the last verified backup was made.", at)
    elif backup and backup.get("last_verified"):
        at = ts_from_iso(str(backup["last_verified"]["at"]))
        yield _gauge("watchd_last_backup_timestamp_seconds", "When the last verified backup was made.", at)
    if canary_at is not None:
        yield _gauge("watchd_last_canary_timestamp_seconds", "When the last good canary ran.", canary_at)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return gauge_family(name, documentation, value=value)
