"""The dashboard, over real HTTP against an in-process daemon: the pages read what the command line
reads, the timeline is a picture of the decisions, actions need a CSRF token (and the token when one
is set), and a read-only dashboard offers none."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp
from support.inprocess import InProcessDaemon
from support.waiting import until

from watchd.model import make_event

WATCHES = {
    "mail.toml": """
[[watch]]
id = "urgent-mail"
kind = "match"
on = { subject = "mail.received", where = "data.urgent == true" }
then = ["notify.console"]
""",
}

DEAD = """
[[watch]]
id = "job-failed"
kind = "match"
on = { subject = "job.failed", key = "data.job" }
then = ["agent.fixer"]
"""

CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


async def get(d: InProcessDaemon, path: str, **kw: object) -> tuple[int, str, aiohttp.ClientResponse]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(d.http_url + path, allow_redirects=False, **kw) as r,  # type: ignore[arg-type]
    ):
        return r.status, await r.text(), r


async def post(
    d: InProcessDaemon, path: str, form: dict[str, str], **kw: object
) -> tuple[int, str, aiohttp.ClientResponse]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(d.http_url + path, data=form, allow_redirects=False, **kw) as r,  # type: ignore[arg-type]
    ):
        return r.status, await r.text(), r


async def test_pages_show_what_happened_and_the_timeline_is_a_picture(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = await daemon_factory(WATCHES).start()
    await d.publish(
        make_event("mail.received", {"urgent": False, "from": "x"}, id="near-miss"),
        make_event("mail.received", {"urgent": True, "from": "<b>ceo</b>"}, id="the-fire"),
    )
    await until(lambda: d.handoffs("urgent-mail"), what="the fire")

    status, html, r = await get(d, "/")
    assert status == 200 and r.content_type == "text/html"
    assert "urgent-mail" in html and 'href="/watches/urgent-mail"' in html
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]

    status, html, _ = await get(d, "/watches/urgent-mail")
    assert status == 200 and "<svg" in html
    # one triangle for the fire, one faint circle for the near miss, each with its reason as a title
    assert len(re.findall(r'<polygon class="mark fired"', html)) == 1
    assert len(re.findall(r'<circle class="mark where_false"', html)) == 1
    assert "near-miss" in html and "the-fire" in html
    explain = json.loads((await d.cli("explain", "urgent-mail", "--json")).stdout)
    assert explain["verdict"] in html  # the same verdict as `watchd explain`

    status, html, _ = await get(d, "/watches/urgent-mal")
    assert status == 404 and "urgent-mail" in html  # did you mean

    for path in ("/schedules", "/handoffs", "/runs", "/maintenance", "/schedules/heartbeat"):
        status, html, _ = await get(d, path)
        assert status == 200, (path, html[:500])
    status, html, _ = await get(d, "/handoffs")
    assert "urgent-mail" in html and "console" in html


async def test_dead_letters_replayed_from_the_page_with_a_csrf_token(
    daemon_factory: Callable[..., InProcessDaemon], tmp_path: Path
) -> None:
    script = tmp_path / "agent.py"
    script.write_text("import sys\nprint('not ready')\nsys.exit(75)\n")
    cmd = json.dumps([sys.executable, str(script)])
    d = daemon_factory({"w.toml": DEAD}, extra_config=f'[agent.fixer]\ntype = "command"\ncommand = {cmd}\n')
    await d.start()
    await d.publish(make_event("job.failed", {"job": "a"}))
    await until(lambda: [h["state"] for h in d.handoffs("job-failed")] == ["dead"], 15, "a dead letter")
    hid = d.handoffs("job-failed")[0]["id"]

    status, html, _ = await get(d, "/handoffs?state=dead")
    assert status == 200 and f"/actions/dlq/{hid}/replay" in html
    csrf = CSRF.search(html)
    assert csrf is not None

    # no token, a wrong token, a page from another site: refused, nothing changes
    status, _, _ = await post(d, f"/actions/dlq/{hid}/drop", {})
    assert status == 403
    status, _, _ = await post(d, f"/actions/dlq/{hid}/drop", {"csrf": "0" * 64})
    assert status == 403
    form = {"csrf": csrf.group(1)}
    status, _, _ = await post(d, f"/actions/dlq/{hid}/drop", form, headers={"Origin": "http://evil.example"})
    assert status == 403
    assert d.handoffs("job-failed")[0]["state"] == "dead"

    status, _, r = await post(d, f"/actions/dlq/{hid}/drop", {**form, "back": "//evil.example/x"})
    assert status == 303 and r.headers["Location"].startswith("/?notice=dropped")  # never an open redirect
    assert d.handoffs("job-failed")[0]["state"] == "dropped"


async def test_a_token_guards_every_page_and_a_read_only_dashboard_offers_no_action(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = await daemon_factory(
        WATCHES, env={"DASH_TOKEN": "s3cret-t0ken"}, extra_config='token = "env:DASH_TOKEN"\ndashboard = "read-only"\n'
    ).start()
    status, _, r = await get(d, "/watches/urgent-mail")
    assert status == 303 and r.headers["Location"].startswith("/login")
    status, html, _ = await post(d, "/login", {"token": "wrong", "next": "/"})
    assert status == 401 and "not the token" in html
    status, _, r = await post(d, "/login", {"token": "s3cret-t0ken", "next": "/watches/urgent-mail"})
    assert status == 303 and r.headers["Location"] == "/watches/urgent-mail"
    cookie = r.cookies["watchd_session"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict"
    session = {"Cookie": f"watchd_session={cookie.value}"}
    status, html, _ = await get(d, "/watches/urgent-mail", headers=session)
    assert status == 200 and "s3cret-t0ken" not in html
    status, html, _ = await get(d, "/", headers={"Authorization": "Bearer s3cret-t0ken"})
    assert status == 200 and "read-only" in html and '<form method="post" action="/actions' not in html
    csrf = CSRF.search(html) or CSRF.search((await get(d, "/handoffs", headers=session))[1])
    status, _, _ = await post(d, "/actions/dlq/h_x/drop", {"csrf": csrf.group(1) if csrf else ""}, headers=session)
    assert status == 403
