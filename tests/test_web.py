"""The dashboard, over real HTTP against an in-process daemon: the pages read what the command line
reads, the timeline is a picture of the decisions, actions need a CSRF token (and the token when one
is set), and a read-only dashboard offers none."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from html import unescape
from pathlib import Path
from typing import Any

import aiohttp
from support.fake_anthropic import FakeAnthropic, tool_use
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


async def test_the_run_page_shows_the_transcript_of_runs_show_as_data(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    async with FakeAnthropic() as fake:
        agent = (
            '[agent.triage]\ntype = "anthropic"\nmodel = "claude-haiku-4-5"\n'
            'api_key = "env:WATCHD_TEST_ANTHROPIC_KEY"\n'
            f'base_url = "{fake.url}"\ninstructions = "Triage urgent mail."\ntools = ["notify.console"]\n'
        )
        triage = WATCHES["mail.toml"].replace('then = ["notify.console"]', 'then = ["agent.triage"]')
        d = await daemon_factory(
            {"mail.toml": triage}, extra_config=agent, env={"WATCHD_TEST_ANTHROPIC_KEY": fake.api_key}
        ).start()
        fake.turns(
            tool_use("notify", {"to": "notify.console", "message": "the CEO <b>wrote</b>"}),
            tool_use("done", {"status": "resolved", "summary": "told the phone"}),
        )
        # The event carries markup and, by mistake, the API key: the page shows the first as text and
        # never the second.
        data = {"urgent": True, "from": "<script>alert(1)</script>", "note": f"key {fake.api_key}"}
        await d.publish(make_event("mail.received", data, id="the-mail"))
        await until(
            lambda: [h["state"] for h in d.handoffs("urgent-mail") if h["target"] == "agent.triage"] == ["done"],
            what="the agent's run",
        )
        (run,) = json.loads((await d.cli("runs", "--json")).stdout)
        shown = json.loads((await d.cli("runs", "show", run["id"], "--json")).stdout)

        status, html, _ = await get(d, f"/runs/{run['id']}")
        assert status == 200
        # (the envelope hands event data to the model with its markup characters escaped)
        assert "<script>" not in html and "\\u003cscript\\u003ealert(1)" in html
        assert '<pre class="request">&lt;untrusted_event_data count=&#34;1&#34;&gt;' in html
        assert "<b>wrote</b>" not in html and "the CEO &lt;b&gt;wrote&lt;/b&gt;" in html  # the tool's argument
        assert fake.api_key not in html and "key ***" in html
        assert "request: the handoff (1 events)" in html and "request: results of 1 tool call" in html
        assert "tool <code>notify</code>" in html and "tool <code>done</code>" in html
        # The JSON on the page is the command line's, whole.
        (raw,) = re.findall(r'<pre class="json">(.*?)</pre>', html, re.S)
        assert json.loads(unescape(raw)) == shown
        assert [s["n"] for s in shown["steps"]] == [1, 2]

        status, _, _ = await get(d, "/runs/r_nope")
        assert status == 404


PR_DEADLINE = {
    "pr.toml": """
[[watch]]
id = "pr-needs-review"
kind = "deadline"
opens = { subject = "github.pull_request", where = 'data.action == "opened"', key = "data.number" }
expect = { subject = "github.pull_request_review", key = "data.pull_request.number" }
within = "24h"
then = ["notify.console"]
""",
}


async def test_deadline_windows_are_bars_met_missed_and_open(daemon_factory: Callable[..., InProcessDaemon]) -> None:
    d = await daemon_factory(PR_DEADLINE).start()
    await d.publish(
        make_event("github.pull_request", {"action": "opened", "number": 1}),
        make_event("github.pull_request", {"action": "opened", "number": 2}),
        make_event("github.pull_request_review", {"pull_request": {"number": 1}}),
    )
    await until(lambda: d.decisions("pr-needs-review", "window_closed"), what="PR 1 reviewed in time")
    await d.advance(25 * 3600)
    await until(lambda: d.handoffs("pr-needs-review"), what="PR 2 past its deadline")
    await d.publish(make_event("github.pull_request", {"action": "opened", "number": 3}))
    await until(lambda: len(d.decisions("pr-needs-review", "window_opened")) == 3, what="PR 3's window")

    status, html, _ = await get(d, "/watches/pr-needs-review")
    assert status == 200
    bars = re.findall(r'<rect class="window (\w+)"[^>]*><title>([^<]*)</title>', html)
    assert sorted(outcome for outcome, _ in bars) == ["met", "missed", "open"], bars
    assert any("[2]" in title and "missed" in title for _, title in bars)


def test_the_daemon_routes_every_page_of_the_dashboard_before_loading_it() -> None:
    """The daemon mounts the dashboard's routes from its own table and loads the pages (and
    Jinja2) on the first request: the table must be the pages' own."""
    from watchd.dashboard import ROUTES
    from watchd.web.access import Access
    from watchd.web.app import Dashboard

    def no_config() -> Any:
        raise AssertionError("not read while routing")

    pages = Dashboard(loaded=no_config, clock=lambda: 0.0, health=dict, access=Access(None))
    assert sorted((r.method, r.path) for r in pages.routes()) == sorted(ROUTES)
