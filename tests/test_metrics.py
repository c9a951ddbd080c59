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
