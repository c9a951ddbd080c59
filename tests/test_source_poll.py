"""The poll source against a real local web server whose page changes (and one that fails), in the
real daemon on a virtual clock, and `watchd source test`."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.inprocess import InProcessDaemon
from support.project import Project, stream_events
from support.sites import FakeSite
from support.waiting import until


def page(price: str) -> str:
    return f"<html><body><h1>Kettle</h1><span class=price>{price}</span><p>ad {price}</p></body></html>"


def poll_source(url: str, **extra: str) -> str:
    lines = [f'[source.shop]\ntype = "poll"\nurl = "{url}"\nevery = "1m"\nsubject = "shop.price"']
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


async def from_shop(d: Project) -> list[dict[str, Any]]:
    return [e for e in await stream_events(d.nats_url) if e.get("source") == "shop"]


async def test_a_changed_price_is_announced_once_with_previous_and_current(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    async with FakeSite(page("12,00 €")) as site:
        d = daemon_factory(extra_config=poll_source(site.page_url, css='"span.price"'))
        await d.start()
        await until(lambda: len(site.requests) == 1, what="the first poll")
        await until(lambda: (d.state_dir / "sources" / "shop.json").exists(), what="the baseline saved")
        assert await from_shop(d) == []  # the first poll only records the value

        await d.advance(60)  # same page: a conditional request, answered 304
        await until(lambda: site.not_modified == 1, what="a 304")
        assert site.requests[1].headers["If-None-Match"] == site.current_etag()

        site.set(page("9,99 €"))
        await d.advance(60)
        events = await until(lambda: from_shop(d), what="the change")
        (event,) = events
        assert event["subject"] == "shop.price"
        data = event["data"]
        assert (data["previous"], data["current"], data["status"]) == ("12,00 €", "9,99 €", 200)
        assert data["url"] == site.page_url and data["latency_ms"] >= 0
        status = next(s for s in d.health()["sources"] if s["name"] == "shop")
        assert status["events"] == 1 and status["last_event_at"] is not None

        # A restart polls again (the slot is due) and finds the same page: nothing re-announced.
        await d.stop()
        await d.start()
        await d.advance(60)
        await until(lambda: len(site.requests) >= 4, what="the poll after the restart")
        await until(lambda: site.not_modified == 2, what="the second 304")
        assert len(await from_shop(d)) == 1


async def test_a_failing_site_is_an_event_and_its_recovery_a_change(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    async with FakeSite(page("5 €"), etag=False) as site:
        d = daemon_factory(extra_config=poll_source(site.page_url, css='"span.price"'))
        await d.start()
        await until(lambda: len(site.requests) == 1, what="the first poll")
        site.fail(503, times=2)
        for polls in (1, 2):  # one poll per slot: a jump over two slots would poll once
            await d.advance(60)
            await until(lambda n=polls: len(site.requests) > n, what="the next poll")
        failed = await until(lambda: _two(from_shop(d)), what="two failed polls")
        assert [e["subject"] for e in failed] == ["shop.price.failed"] * 2
        assert [e["data"]["failures"] for e in failed] == [1, 2]
        assert failed[0]["data"]["status"] == 503 and "HTTP 503" in failed[0]["data"]["error"]
        assert failed[0]["id"] != failed[1]["id"]
        status = next(s for s in d.health()["sources"] if s["name"] == "shop")
        assert "HTTP 503" in status["last_error"]
        site.set(page("6 €"))
        await d.advance(60)
        events = await until(lambda: _three(from_shop(d)), what="the change after the outage")
        assert events[-1]["subject"] == "shop.price"
        assert (events[-1]["data"]["previous"], events[-1]["data"]["current"]) == ("5 €", "6 €")


async def _two(found: Any) -> Any:
    events = await found
    return events if len(events) >= 2 else None


async def _three(found: Any) -> Any:
    events = await found
    return events if len(events) >= 3 else None


async def test_a_value_that_comes_back_is_announced_again(daemon_factory: Callable[..., InProcessDaemon]) -> None:
    """A → B → A: the third value is a change too (its id counts the changes, so the stream's
    duplicate window does not swallow it)."""
    async with FakeSite('{"version": "1.0"}', "application/json") as site:
        d = daemon_factory(extra_config=poll_source(site.page_url, select='"data.version"'))
        await d.start()
        await until(lambda: len(site.requests) == 1, what="the first poll")
        for version in ("1.1", "1.0"):
            site.set(json.dumps({"version": version}))
            await d.advance(60)
            await until(lambda v=version: _last_current(from_shop(d), v), what=f"version {version}")
        events = await from_shop(d)
        assert [(e["data"]["previous"], e["data"]["current"]) for e in events] == [("1.0", "1.1"), ("1.1", "1.0")]


async def _last_current(found: Any, value: str) -> bool:
    events = await found
    return bool(events) and events[-1]["data"]["current"] == value


async def test_source_test_prints_what_it_would_publish_and_publishes_nothing(tmp_path: Path) -> None:
    from support.cli import run_cli

    async with FakeSite("Release v2.4.1 is out", "text/plain") as site:
        proj = Project(tmp_path / "p", extra_config=poll_source(site.page_url, regex=r"'v(\d+\.\d+)'", emit='"always"'))
        result = await asyncio.to_thread(run_cli, "source", "test", "shop", "--config", str(proj.config_path))
        assert result.returncode == 0, result.stderr
        (line,) = result.stdout.strip().splitlines()
        event = json.loads(line)
        assert event["subject"] == "shop.price" and event["data"]["current"] == "2.4"
        assert event["source"] == "shop"
        assert "1 event(s) would be published; nothing was" in result.stderr
        assert not (proj.state_dir / "sources" / "shop.json").exists()

        # --json: one object, the same event in it, nothing else on either stream
        result = await asyncio.to_thread(run_cli, "source", "test", "shop", "--json", "--config", str(proj.config_path))
        assert result.returncode == 0 and result.stderr == "", result.stderr
        report = json.loads(result.stdout)
        assert report == {**report, "source": "shop", "type": "poll", "dropped": [], "last_error": None}
        (again,) = report["events"]
        assert again["subject"] == "shop.price" and again["data"]["current"] == "2.4" and again["source"] == "shop"
        assert not (proj.state_dir / "sources" / "shop.json").exists()


async def test_a_command_is_polled_without_a_shell(tmp_path: Path) -> None:
    from support.cli import run_cli

    script = tmp_path / "count.py"
    script.write_text('import sys; print(\'{"n": 3, "arg": "\' + sys.argv[1] + \'"}\')\n')
    extra = (
        f'[source.shop]\ntype = "poll"\ncommand = ["{sys.executable}", "{script}", "$HOME;echo"]\n'
        'subject = "shop.count"\nselect = "data"\nemit = "always"\n'
    )
    proj = Project(tmp_path / "p", extra_config=extra)
    result = await asyncio.to_thread(run_cli, "source", "test", "shop", "--config", str(proj.config_path))
    assert result.returncode == 0, result.stderr
    event = json.loads(result.stdout.strip())
    assert event["data"]["current"] == {"n": 3, "arg": "$HOME;echo"}  # no shell expanded it
    assert event["data"]["exit_code"] == 0 and event["data"]["command"] == sys.executable


async def test_a_value_that_comes_back_is_announced_again_under_an_id_of_its_own(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    """SPEC 8 names a change event by its source and its selected value; the stream keeps one event
    per id for two days, so a price that goes 1 → 2 → 1 → 2 must not reuse an id or the second
    rise would be dropped as a duplicate: the id counts the changes too."""
    async with FakeSite(page("1 €"), etag=False) as site:
        d = daemon_factory(extra_config=poll_source(site.page_url, css='"span.price"'))
        await d.start()
        await until(lambda: len(site.requests) == 1, what="the first poll")
        for polls, price in enumerate(("2 €", "1 €", "2 €"), start=1):
            site.set(page(price))
            await d.advance(60)
            await until(lambda n=polls: len(site.requests) > n, what="the next poll")
            await until(lambda n=polls: _at_least(from_shop(d), n), what=f"change {polls}")
        events = await from_shop(d)
        await d.stop()
    assert [(e["data"]["previous"], e["data"]["current"]) for e in events] == [
        ("1 €", "2 €"),
        ("2 €", "1 €"),
        ("1 €", "2 €"),
    ]
    assert len({e["id"] for e in events}) == 3


async def _at_least(found: Any, n: int) -> Any:
    events = await found
    return events if len(events) >= n else None
