"""The dashboard in a real browser: Debian's Chromium driven by Playwright. Skipped, saying why,
where no Chromium is installed (`.ci/run` installs it). With WATCHD_SCREENSHOTS=DIR the pages
are saved there as PNG (how docs/ gets its pictures)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from support.inprocess import InProcessDaemon
from support.waiting import until

from watchd.model import make_event

playwright_api = pytest.importorskip("playwright.async_api")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")

WATCHES = {
    "w.toml": """
[[watch]]
id = "urgent-mail"
kind = "match"
on = { subject = "mail.received", where = "data.urgent == true" }
then = ["notify.console"]

[[watch]]
id = "job-failed"
kind = "match"
on = { subject = "job.failed", key = "data.job" }
then = ["agent.fixer"]
""",
}


@pytest.fixture
async def browser() -> AsyncIterator[object]:
    async with playwright_api.async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            await b.close()


def shoot_dir() -> Path | None:
    where = os.environ.get("WATCHD_SCREENSHOTS")
    return Path(where) if where else None


async def test_a_person_sees_the_fire_and_replays_a_dead_letter(
    daemon_factory: Callable[..., InProcessDaemon], tmp_path: Path, browser: object
) -> None:
    script = tmp_path / "agent.py"
    script.write_text("import sys\nprint('not ready')\nsys.exit(75)\n")
    cmd = json.dumps([sys.executable, str(script)])
    d = daemon_factory(WATCHES, extra_config=f'[agent.fixer]\ntype = "command"\ncommand = {cmd}\n')
    await d.start()
    await d.publish(
        make_event("mail.received", {"urgent": False}),
        make_event("mail.received", {"urgent": True}),
        make_event("job.failed", {"job": "nightly"}),
    )
    await until(lambda: [h["state"] for h in d.handoffs("job-failed")] == ["dead"], 15, "a dead letter")
    await until(lambda: d.handoffs("urgent-mail"), what="the mail fire")

    page = await browser.new_page(viewport={"width": 1200, "height": 800})  # type: ignore[attr-defined]
    shots = shoot_dir()
    await page.goto(d.http_url + "/")
    assert await page.locator("a", has_text="urgent-mail").count() == 1
    if shots:
        await page.screenshot(path=str(shots / "overview.png"), full_page=True)

    await page.click("text=urgent-mail")
    assert page.url.endswith("/watches/urgent-mail")
    assert await page.locator("svg.timeline polygon.fired").count() == 1
    title = await page.locator("svg.timeline polygon.fired title").text_content()
    assert title is not None and "fired" in title
    if shots:
        await page.screenshot(path=str(shots / "watch.png"), full_page=True)

    hid = d.handoffs("job-failed")[0]["id"]
    before = len(d.states(hid))
    await page.click("text=dead letters")
    assert await page.locator("td", has_text="job-failed").count() == 1
    await page.click("button:has-text('replay')")
    await page.wait_for_url("**notice=replaying*")
    assert "replaying" in (await page.locator("p.notice").text_content() or "")
    await until(lambda: len(d.states(hid)) > before, what="the replayed handoff to move")  # replayed: it moves again
    if shots:
        await page.goto(d.http_url + "/schedules")
        await page.screenshot(path=str(shots / "schedules.png"), full_page=True)


DISK = """
[[watch]]
id = "disk-full"
kind = "match"
on = { subject = "disk.full", key = "data.host" }
repeat = "1m"
then = ["notify.console"]
"""


async def test_a_person_acks_an_incident_and_snoozes_a_watch_from_the_pages(
    daemon_factory: Callable[..., InProcessDaemon], browser: object
) -> None:
    d = await daemon_factory({"w.toml": DISK}).start()
    await d.publish(make_event("disk.full", {"host": "nas"}))
    await until(lambda: d.handoffs("disk-full"), what="the incident")

    page = await browser.new_page(viewport={"width": 1200, "height": 800})  # type: ignore[attr-defined]
    await page.goto(d.http_url + "/")
    row = page.locator("tr#watch-disk-full")
    assert (await row.locator("td.incidents span.bad").text_content()) == "1"
    await row.locator("button", has_text="ack").click()
    await page.wait_for_url("**notice=*")
    assert "disk-full [nas]: acked by the dashboard" in (await page.locator("p.notice").text_content() or "")
    assert (await page.locator("tr#watch-disk-full td.incidents").text_content() or "").strip() == "0"
    assert d.decisions("disk-full", "acked")  # the engine decided it, as for the command line

    await page.get_by_role("link", name="disk-full", exact=True).click()
    await page.wait_for_url("**/watches/disk-full")
    await page.locator("#answers button", has_text="snooze 1h").click()
    await page.wait_for_url("**/watches/disk-full?notice=*")
    assert "snoozed by the dashboard until" in (await page.locator("ul.holds").text_content() or "")
    shots = shoot_dir()
    if shots:
        await page.screenshot(path=str(shots / "answers.png"), full_page=True)
    await page.locator("ul.holds button", has_text="unmute").click()
    await page.wait_for_url("**notice=*")
    assert "ended early by the dashboard" in (await page.locator("p.notice").text_content() or "")
    assert await page.locator("ul.holds").count() == 0
