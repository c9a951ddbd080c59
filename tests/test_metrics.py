"""`/metrics` parsed with prometheus_client's own parser after real traffic through an in-process
daemon: each family has HELP and TYPE, the content type is Prometheus text, and the figures move
with what happened (decisions, fires, deliveries, refusals, ticks, job outcomes, handoff states)."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from support.inprocess import InProcessDaemon
from support.waiting import until

from watchd.model import make_event

WATCH = """
[[watch]]
id = "urgent-mail"
kind = "match"
on = { subject = "mail.received", where = "data.urgent == true" }
then = ["notify.console"]
"""


async def scrape(d: InProcessDaemon) -> tuple[str, dict[str, dict[tuple[tuple[str, str], ...], float]]]:
    async with aiohttp.ClientSession() as s, s.get(d.http_url + "/metrics") as r:
        assert r.status == 200
        text = await r.text()
        content_type = r.headers["Content-Type"]
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        assert family.documentation, f"{family.name} has no HELP"
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return content_type, samples


async def test_metrics_follow_real_traffic(daemon_factory: Callable[..., InProcessDaemon]) -> None:
    d = await daemon_factory({"mail.toml": WATCH}).start()
    await d.publish(
        make_event("mail.received", {"urgent": True}),
        make_event("mail.received", {"urgent": False}),
        make_event("mail.received", {"urgent": True}),
    )
    await until(lambda: [h["state"] for h in d.handoffs("urgent-mail")] == ["delivered", "delivered"], what="2 fires")
    async with aiohttp.ClientSession() as s, s.post(d.http_url + "/events/watchd.forged", json={}) as r:
        assert r.status == 400  # reserved: refused and counted

    content_type, m = await scrape(d)
    assert content_type.startswith("text/plain; version=0.0.4")
    assert m["watchd_up"][()] == 1 and m["watchd_watches"][()] >= 1
    assert m["watchd_events_total"][()] >= 3
    assert m["watchd_decisions_total"][(("verdict", "fired"), ("watch", "urgent-mail"))] == 2
    assert m["watchd_decisions_total"][(("verdict", "where_false"), ("watch", "urgent-mail"))] == 1
    assert m["watchd_fires_total"][(("watch", "urgent-mail"),)] == 2
    assert m["watchd_deliveries_total"][(("outcome", "delivered"), ("target", "notify.console"))] == 2
    assert m["watchd_delivery_latency_seconds_count"][(("target", "notify.console"),)] == 2
    assert m["watchd_handoffs"][(("state", "delivered"), ("target", "notify.console"))] == 2
    assert m["watchd_dead_letters"][()] == 0
    assert m["watchd_engine_lag_events"][()] == 0  # drained: nothing stored past what it decided
    assert sum(v for k, v in m["watchd_http_rejected_total"].items()) >= 1

    # the heartbeat schedule's first tick: lateness observed, the job's outcome counted
    await d.advance(6 * 60)
    _, m = await until_scraped(d, "watchd_job_runs_total")
    assert m["watchd_job_runs_total"][(("job", "heartbeat"), ("outcome", "done"))] >= 1
    assert m["watchd_schedule_tick_lateness_seconds_count"][(("schedule", "heartbeat"),)] >= 1


async def until_scraped(
    d: InProcessDaemon, name: str
) -> tuple[str, dict[str, dict[tuple[tuple[str, str], ...], float]]]:
    async def has() -> tuple[str, dict[str, dict[tuple[tuple[str, str], ...], float]]] | None:
        got = await scrape(d)
        return got if got[1].get(name) else None

    for _ in range(100):
        got = await has()
        if got is not None:
            return got
        await d.advance(1)
    raise AssertionError(f"{name} never appeared")


def test_counts_kept_until_scraped_read_as_prometheus_clients_own_counter_and_histogram() -> None:
    """The figures are plain dicts until the first scrape loads prometheus_client: they must read
    exactly as its own Counter and Histogram fed the same would."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    from watchd.engine import Decision, Verdict
    from watchd.metrics import Metrics

    ours = Metrics()
    ours.decided([Decision(1.0, "w", None, Verdict.FIRED, "r"), Decision(1.0, "w", "k", Verdict.WHERE_FALSE, "", n=3)])
    for latency in (0.3, 0.01, 9000.0, 0.05):  # inside, on and past the bounds
        ours.delivered("notify.a", "delivered", latency)
    ours.own_event("watchd.schedule.backup.skipped", {"reason": "missed", "count": 4})
    ours.ack_window.observe(0.0005)

    registry = CollectorRegistry()
    decisions = Counter("watchd_decisions", ours.decisions.documentation, ["watch", "verdict"], registry=registry)
    decisions.labels("w", "fired").inc()
    decisions.labels("w", "where_false").inc(3)
    fires = Counter("watchd_fires", ours.fires.documentation, ["watch"], registry=registry)
    fires.labels("w").inc()
    deliveries = Counter("watchd_deliveries", ours.deliveries.documentation, ["target", "outcome"], registry=registry)
    latency = Histogram(
        "watchd_delivery_latency_seconds",
        ours.delivery_latency.documentation,
        ["target"],
        buckets=ours.delivery_latency.bounds,
        registry=registry,
    )
    for seconds in (0.3, 0.01, 9000.0, 0.05):
        deliveries.labels("notify.a", "delivered").inc()
        latency.labels("notify.a").observe(seconds)
    skipped = Counter(
        "watchd_schedule_ticks_skipped", ours.ticks_skipped.documentation, ["schedule", "reason"], registry=registry
    )
    skipped.labels("backup", "missed").inc(4)
    window = Histogram(
        "watchd_handoff_ack_window_seconds",
        ours.ack_window.documentation,
        buckets=ours.ack_window.bounds,
        registry=registry,
    )
    window.observe(0.0005)

    def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if not s.name.endswith("_created")
        }

    theirs = samples(generate_latest(registry).decode())
    assert len(theirs) > 30 and samples(ours.exposition().decode()) == theirs
