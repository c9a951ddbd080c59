"""Answers from the dashboard, over real HTTP against an in-process daemon: ack, snooze, mute and
unmute as CSRF-guarded forms applied by the engine as the HTTP API's are, the holds and open
incidents they leave on the overview and the watch page, none offered in read-only mode; the
sources' health and the deployment's members on the overview."""

from __future__ import annotations

import html as htmllib
import json
import re
import sqlite3
import urllib.parse
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
from support.inprocess import InProcessDaemon
from support.waiting import until
from test_web import CSRF, get, post

from watchd.bus import EmbeddedNats
from watchd.model import make_event
from watchd.store.runs import close_run, new_run

DISK = """
[[watch]]
id = "disk-full"
kind = "match"
on = { subject = "disk.full", key = "data.host" }
repeat = "1m"
then = ["notify.console"]
"""


def notice(location: str) -> str:
    return urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)["notice"][0]


def row(page: str, wid: str) -> str:
    """The overview's table row of one watch."""
    found = re.search(rf'<tr id="watch-{re.escape(wid)}">(.*?)</tr>', page, re.S)
    assert found is not None, page
    return htmllib.unescape(found.group(1))


async def status_of(d: InProcessDaemon, wid: str = "disk-full") -> dict[str, Any]:
    report = json.loads((await d.cli("status", "--json")).stdout)
    return next(w for w in report["watches"] if w["id"] == wid)


async def csrf_of(d: InProcessDaemon, path: str = "/") -> str:
    found = CSRF.search((await get(d, path))[1])
    assert found is not None
    return found.group(1)


async def test_answers_from_the_overview_and_the_watch_page_act_and_leave_holds_and_incidents_shown(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = await daemon_factory({"w.toml": DISK}).start()
    await d.publish(make_event("disk.full", {"host": "nas"}), make_event("disk.full", {"host": "db"}))
    await until(lambda: len(d.handoffs("disk-full")) == 2, what="two incidents")

    status, page, _ = await get(d, "/")
    assert status == 200
    cells = row(page, "disk-full")
    assert "/actions/watches/disk-full/ack" in cells and "snooze 1h" in cells and "mute 24h" in cells
    assert re.search(r'class="incidents"><span class="bad">2</span>', cells), cells
    assert "nas since" in cells and "db since" in cells
    csrf = await csrf_of(d)

    # snooze one key from the overview: back on the overview, the hold says who and until when
    status, _, r = await post(d, "/actions/watches/disk-full/snooze", {"csrf": csrf, "key": "nas", "back": "/"})
    assert status == 303 and r.headers["Location"].startswith("/?notice=")
    said = notice(r.headers["Location"])
    assert said.startswith("disk-full [nas]: snoozed for key nas by the dashboard until "), said
    cells = row((await get(d, "/"))[1], "disk-full")
    assert "snoozed for key nas by the dashboard until " in cells
    assert 'action="/actions/watches/disk-full/unmute"' in cells and 'name="key" value="nas"' in cells
    (hold,) = (await status_of(d))["holds"]
    assert hold == {**hold, "action": "snooze", "key": "nas", "by": "web"}
    assert hold["until"] is not None

    # ack one key from its watch page: its incident closes, the other stays open
    status, page, _ = await get(d, "/watches/disk-full?key=db")
    assert status == 200 and 'name="key" value="db"' in page and "key db only" in page
    status, _, r = await post(d, "/actions/watches/disk-full/ack", {"csrf": csrf, "key": "db"})
    assert status == 303 and r.headers["Location"].startswith("/watches/disk-full?notice=")
    assert notice(r.headers["Location"]).startswith("disk-full [db]: acked by the dashboard")
    page = htmllib.unescape((await get(d, "/watches/disk-full"))[1])
    incidents = re.search(r'<table class="incidents">(.*?)</table>', page, re.S)
    assert incidents is not None and ">nas</a>" in incidents.group(1) and ">db</a>" not in incidents.group(1)
    assert "acked by the dashboard" in page  # the timeline row of the ack

    # mute every key for 24h, then end it and the snooze early
    status, _, r = await post(d, "/actions/watches/disk-full/mute", {"csrf": csrf})
    assert notice(r.headers["Location"]).startswith("disk-full: muted by the dashboard until ")
    page = htmllib.unescape((await get(d, "/watches/disk-full"))[1])
    assert "muted by the dashboard until " in page and "snoozed for key nas by the dashboard" in page
    await post(d, "/actions/watches/disk-full/unmute", {"csrf": csrf})
    await post(d, "/actions/watches/disk-full/unmute", {"csrf": csrf, "key": "nas"})
    watch = await status_of(d)
    assert watch["holds"] == [] and [i["key"] for i in watch["incidents"]] == ["nas"]
    assert "the dashboard" in (await d.cli("explain", "disk-full")).stdout  # explain names who answered

    # a watch that does not exist, an action that does not: said, or not found
    status, _, r = await post(d, "/actions/watches/disk-ful/ack", {"csrf": csrf})
    assert status == 303 and notice(r.headers["Location"]) == "no watch or handoff named 'disk-ful'"
    assert (await post(d, "/actions/watches/disk-full/explode", {"csrf": csrf}))[0] == 404


async def test_an_answer_without_the_forms_csrf_token_or_from_another_site_is_refused(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = await daemon_factory({"w.toml": DISK}).start()
    csrf = await csrf_of(d)
    before = len(d.decisions("disk-full"))
    assert (await post(d, "/actions/watches/disk-full/mute", {}))[0] == 403
    assert (await post(d, "/actions/watches/disk-full/mute", {"csrf": "0" * 64}))[0] == 403
    evil = {"Origin": "http://evil.example"}
    assert (await post(d, "/actions/watches/disk-full/mute", {"csrf": csrf}, headers=evil))[0] == 403
    assert len(d.decisions("disk-full")) == before  # nothing reached the engine
    status, text, _ = await post(d, "/actions/watches/disk-full/mute", {"csrf": csrf[:-1] + "x"})
    assert status == 403 and "CSRF" in text
    status, _, _ = await post(d, "/actions/watches/disk-full/mute", {"csrf": csrf})
    assert status == 303  # the same form with its token is taken


async def test_a_read_only_dashboard_shows_holds_but_offers_no_answer(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = await daemon_factory({"w.toml": DISK}, extra_config='dashboard = "read-only"\n').start()
    code, _, err = await d.cli("mute", "disk-full", "2h")
    assert code == 0, err
    for path in ("/", "/watches/disk-full"):
        status, page, _ = await get(d, path)
        assert status == 200 and "read-only" in page
        assert "muted by " in page and "(command line) until " in page
        assert "/actions/watches/" not in page  # no ack, snooze, mute or unmute
    status, text, _ = await post(d, "/actions/watches/disk-full/unmute", {"csrf": "0" * 64})
    assert status == 403 and 'the dashboard is read-only ([http] dashboard = "read-only")' in htmllib.unescape(text)
    watch = await status_of(d)
    assert [h["action"] for h in watch["holds"]] == ["mute"]  # still muted


SOURCES = """
[source.shop]
type = "webhook"
path = "/hooks/shop"
subject = "shop.order"
verify = "token"
secret = "env:SHOP_TOKEN"

[source.scans]
type = "file"
paths = ["missing/*.pdf"]
subject = "files.scans"
"""


async def test_the_overview_shows_each_sources_health(daemon_factory: Callable[..., InProcessDaemon]) -> None:
    d = await daemon_factory(extra_config=SOURCES, env={"SHOP_TOKEN": "t0k"}).start()
    async with aiohttp.ClientSession() as http:
        auth = {"Authorization": "Bearer t0k", "Content-Type": "application/json"}
        wrong = {**auth, "Authorization": "Bearer nope"}
        async with http.post(d.http_url + "/hooks/shop", data=b'{"n": 2}', headers=wrong) as r:
            assert r.status == 401
        async with http.post(d.http_url + "/hooks/shop", data=b'{"n": 1}', headers=auth) as r:
            assert r.status == 200  # an event after the refusal: the source is healthy again
    await until(lambda: next(s for s in d.health()["sources"] if s["name"] == "scans").get("last_error"), what="scans")
    page = (await get(d, "/"))[1]
    shop = re.search(r'<tr id="source-shop">(.*?)</tr>', page, re.S)
    scans = re.search(r'<tr id="source-scans">(.*?)</tr>', page, re.S)
    assert shop is not None and scans is not None, page
    assert '<td class="ok">ok</td>' in shop.group(1) and "<td>1 (1 refused)</td>" in shop.group(1)
    assert "401 wrong token" in shop.group(1)  # the last error stays shown, in its own column
    assert '<td class="bad">error: ' in scans.group(1) and "no folder to watch exists" in scans.group(1)
    status = (await d.cli("status")).stdout  # the words are the command line's
    assert re.search(r"shop\s+webhook\s+1 \(1 refused\)", status), status


async def test_the_overview_names_the_deployments_members_and_the_lease_holder(
    nats_server: EmbeddedNats, daemon_factory: Callable[..., InProcessDaemon]
) -> None:
    url = nats_server.url
    fast = '[cluster]\ntakeover = "2s"\n'
    a = await daemon_factory({"w.toml": DISK}, nats_url=url, extra_config=fast).start()
    b = await daemon_factory({"w.toml": DISK}, nats_url=url, extra_config=fast).start()
    await until(lambda: len(b.running.lease.members) == 2 if b.running.lease else False, what="b to see both")
    page = htmllib.unescape((await get(b, "/"))[1])
    assert "<h2>Deployment</h2>" in page and "cluster <strong>watchd</strong>" in page
    members = re.search(r'<table class="members">(.*?)</table>', page, re.S)
    assert members is not None
    assert str(a.state_dir) in members.group(1) and str(b.state_dir) in members.group(1)
    holder = re.search(r"<tr><td><code>([^<]+)</code>(?:(?!</tr>).)*holds the lease", members.group(1), re.S)
    assert holder is not None and holder.group(1) == a.running.lease.me.instance  # type: ignore[union-attr]
    assert "(this instance)" not in page  # b stands by
    assert "(this instance)" in (await get(a, "/"))[1]
    # a single daemon on its own embedded NATS has no deployment to show
    solo = await daemon_factory({"w.toml": DISK}).start()
    assert "Deployment" not in (await get(solo, "/"))[1]


async def test_the_pages_tell_times_in_the_configured_zone(daemon_factory: Callable[..., InProcessDaemon]) -> None:
    d = await daemon_factory({"w.toml": DISK}).start()
    await d.publish(make_event("disk.full", {"host": "nas"}))
    await until(lambda: d.handoffs("disk-full"), what="the fire")
    d.config_path.write_text(d.config_path.read_text().replace('timezone = "UTC"', 'timezone = "Asia/Kolkata"'))
    assert await d.running.reload()
    fired = datetime.fromisoformat((await status_of(d))["last_fired"].replace("Z", "+00:00"))
    page = (await get(d, "/"))[1]
    cells = row(page, "disk-full")
    assert f"{fired.astimezone(ZoneInfo('Asia/Kolkata')):%Y-%m-%d %H:%M:%S} IST" in cells, cells
    assert f"{fired:%H:%M:%S}" not in cells  # not the UTC wall time (+05:30)
    assert "times in Asia/Kolkata" in page


async def test_every_page_with_rows_tells_its_times_in_the_zone(daemon_factory: Callable[..., InProcessDaemon]) -> None:
    d = await daemon_factory({"w.toml": DISK}).start()
    await d.publish(make_event("disk.full", {"host": "nas"}))
    await until(lambda: d.handoffs("disk-full"), what="the fire")
    conn = sqlite3.connect(d.db_path)
    try:
        run = new_run(conn, d.handoffs("disk-full")[0]["id"], "agent.fixer", "claude-haiku-4-5", 1_795_000_000.0)
        close_run(conn, run.id, 1_795_000_030.0, "done", "fixed")
        conn.commit()
    finally:
        conn.close()
    assert (await d.cli("backup")).returncode == 0
    await d.advance_until(lambda: bool(d.query("SELECT 1 FROM schedule_ticks")), step_s=60, limit_s=600, what="a tick")
    started = datetime.fromtimestamp(1_795_000_000.0, ZoneInfo("UTC"))
    for path, shown in (
        ("/runs", f"{started:%Y-%m-%d %H:%M:%S} UTC"),
        ("/maintenance", " UTC"),
        ("/handoffs", " UTC"),
        ("/schedules", " UTC"),
        ("/schedules/heartbeat", " UTC"),
        ("/watches/disk-full", " UTC"),
    ):
        status, page, _ = await get(d, path)
        assert status == 200 and shown in page, (path, page[-3000:])
        if not path.startswith("/schedules"):  # ticks are given in their schedule's own zone (and UTC), as such
            assert not re.search(r">\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z<", page), path  # no raw instant
