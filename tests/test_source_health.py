"""Source health: a silence past `expect_every` is announced once and its end too; `status`,
`/metrics` and `explain` show it; a source that keeps failing is restarted and never stops the
daemon."""

from __future__ import annotations

import json
from collections.abc import Callable

import aiohttp
from support.inprocess import InProcessDaemon
from support.project import stream_events
from support.sites import FakeSite
from support.waiting import until

WATCH = '[[watch]]\nid = "price-drop"\nkind = "match"\non = { subject = "shop.price" }\nthen = ["notify.console"]\n'


def source(url: str) -> str:
    return (
        f'[source.shop]\ntype = "poll"\nurl = "{url}"\nevery = "1m"\nsubject = "shop.price"\n'
        'css = "b"\nexpect_every = "5m"\n'
    )


async def own(d: InProcessDaemon) -> list[str]:
    return [e["subject"] for e in await stream_events(d.nats_url) if e["subject"].startswith("watchd.source.")]


async def test_silence_is_announced_once_and_its_end_too(daemon_factory: Callable[..., InProcessDaemon]) -> None:
    async with FakeSite("<b>1</b>") as site:
        d = daemon_factory({"w.toml": WATCH}, extra_config=source(site.page_url))
        await d.start()
        await until(lambda: len(site.requests) == 1, what="the first poll")
        for _ in range(4):
            await d.advance(60)
        assert await own(d) == []  # 4 minutes: within expect_every
        await d.advance(90)
        await until(lambda: own(d), what="the silence")
        for _ in range(5):
            await d.advance(60)
        assert await own(d) == ["watchd.source.shop.silent"]  # once per silence

        status = await d.cli("status", "--json")
        shop = next(s for s in json.loads(status.stdout)["sources"] if s["name"] == "shop")
        assert shop["silent"] is True and shop["type"] == "poll" and shop["events"] == 0
        text = (await d.cli("status")).stdout
        assert "shop" in text and "silent since" in text
        explained = await d.cli("explain", "price-drop")
        assert "no events from source 'shop' yet" in explained.stdout, explained.stdout
        async with aiohttp.ClientSession() as http, http.get(d.http_url + "/metrics") as resp:
            metrics = await resp.text()
        assert 'watchd_source_silent{source="shop"} 1.0' in metrics
        assert 'watchd_source_events_total{source="shop",type="poll"} 0.0' in metrics

        site.set("<b>2</b>")
        await d.advance(60)
        await until(lambda: _has(own(d), "watchd.source.shop.recovered"), what="the recovery")
        assert await own(d) == ["watchd.source.shop.silent", "watchd.source.shop.recovered"]
        await until(lambda: _explained_without_silence(d), what="explain to see the event")


async def _has(found: object, subject: str) -> bool:
    return subject in await found  # type: ignore[operator]


async def _explained_without_silence(d: InProcessDaemon) -> bool:
    return "no events from source" not in (await d.cli("explain", "price-drop")).stdout


async def test_a_failing_source_is_restarted_and_the_daemon_goes_on(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    extra = '[source.scans]\ntype = "file"\npaths = ["missing/*.pdf"]\nsubject = "files.scans"\n'
    d = daemon_factory(extra_config=extra)
    await d.start()
    scans = await until(
        lambda: next((s for s in d.health()["sources"] if s["restarts"] >= 1), None), what="a failed start"
    )
    assert "no folder to watch exists" in scans["last_error"]
    assert d.health()["ok"]
    # A loop of the daemon's like the others: its failures in /metrics, logged as theirs are.
    loop = d.running.upkeep.stats["source-scans"]
    assert loop.failures >= 1 and "no folder to watch exists" in loop.last_error
    assert 'watchd_task_failures_total{task="source-scans"}' in d.running.metrics.exposition().decode()
    (d.root / "missing").mkdir()  # the next start (after its backoff) finds the folder
    await until(lambda: (d.state_dir / "sources" / "scans.json").exists(), timeout_s=10, what="a good start")
    assert not loop.failing and loop.restarts >= 1  # started again, and running
    (d.root / "missing" / "a.pdf").write_text("x")
    await until(lambda: _has(_subjects(d), "files.scans"), what="the file")
    assert extra in d.config_path.read_text()
    d.config_path.write_text(d.config_path.read_text().replace(extra, ""))
    assert await d.running.reload()
    assert "source-scans" not in d.running.upkeep.stats  # a source a reload removed leaves /metrics


async def _subjects(d: InProcessDaemon) -> list[str]:
    return [e["subject"] for e in await stream_events(d.nats_url)]
