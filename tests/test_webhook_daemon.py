"""Webhook sources in the real daemon (in-process, virtual clock): configured from TOML, served on
its HTTP listener, their health in `status`, reloaded with the config; the README's GitHub recipe
end to end; validate's errors at their lines."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
from support.cli import run_cli
from support.fakes import FakeSlack
from support.inprocess import InProcessDaemon
from support.project import Project
from support.waiting import until

from watchd import bus
from watchd.model import make_event

SECRET = "readme-github-secret"

# The README's recipe, "GitHub: a pull request waits for review", as written there (the notifier aside).
GITHUB_SOURCE = """
[source.github]
type = "webhook"
path = "/hooks/github"
subject = "github.{header:X-GitHub-Event}"
verify = "github"
secret = "env:GITHUB_WEBHOOK_SECRET"
"""

PR_WATCH = """
[[watch]]
id = "pr-needs-review"
kind = "deadline"
description = "Every opened pull request gets a review within a day"
opens = { subject = "github.pull_request", where = 'data.action == "opened"', key = "data.number" }
expect = { subject = "github.pull_request_review", key = "data.pull_request.number" }
within = "24h"
then = ["notify.console"]
message = "PR #{key} has waited 24h for a review: {event.data.pull_request.html_url}"
"""


def signed(body: dict[str, Any], event: str, delivery: str, secret: str = SECRET) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    return raw, {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest(),
    }


def opened(number: int) -> dict[str, Any]:
    url = f"https://github.com/octo/hello/pull/{number}"
    return {"action": "opened", "number": number, "pull_request": {"number": number, "html_url": url}}


def reviewed(number: int) -> dict[str, Any]:
    return {"action": "submitted", "review": {"state": "approved"}, "pull_request": {"number": number}}


async def deliver(d: Project, body: dict[str, Any], event: str, delivery: str, **kw: Any) -> tuple[int, Any]:
    raw, headers = signed(body, event, delivery, **kw)
    async with aiohttp.ClientSession() as http, http.post(d.http_url + "/hooks/github", data=raw, headers=headers) as r:
        return r.status, await r.json()


async def stream(d: Project) -> list[dict[str, Any]]:
    nc = await bus.connect(d.nats_url, name="watchd-test")
    try:
        js = nc.jetstream()
        last = (await js.stream_info(bus.EVENTS_STREAM)).state.last_seq
        return [json.loads((await js.get_msg(bus.EVENTS_STREAM, seq)).data or b"{}") for seq in range(1, last + 1)]
    finally:
        await nc.close()


def github_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("source") == "github"]


async def test_readme_recipe_pull_request_review_deadline(daemon_factory: Callable[..., InProcessDaemon]) -> None:
    d = daemon_factory({"github.toml": PR_WATCH}, extra_config=GITHUB_SOURCE, env={"GITHUB_WEBHOOK_SECRET": SECRET})
    await d.start()
    assert (await deliver(d, opened(7), "pull_request", "d-7"))[0] == 200
    assert (await deliver(d, opened(8), "pull_request", "d-8"))[0] == 200
    # GitHub redelivers #8 (a timeout on its side): stored once, one window.
    status, answer = await deliver(d, opened(8), "pull_request", "d-8")
    assert status == 200 and answer["duplicate"] is True
    assert (await deliver(d, reviewed(7), "pull_request_review", "d-7r"))[0] == 200
    stored = github_events(await stream(d))
    assert [(e["subject"], e["id"]) for e in stored] == [
        ("github.pull_request", "d-7"),
        ("github.pull_request", "d-8"),
        ("github.pull_request_review", "d-7r"),
    ]
    await until(lambda: d.running.last_seq >= answer["seq"] + 1, what="the engine to read the review")

    await d.advance_until(lambda: "PR #8" in d.printed(), step_s=3600, limit_s=26 * 3600, what="the deadline fire")
    printed = d.printed()
    assert "PR #8 has waited 24h for a review: https://github.com/octo/hello/pull/8" in printed
    assert "PR #7" not in printed  # reviewed in time: its window closed
    await d.advance(3 * 86400)
    await d.settle()  # the engine has looked at the clock three days on, so "once" is not "not yet"
    assert d.printed().count("PR #8") == 1  # a deadline fires once
    explained = await d.cli("explain", "pr-needs-review", "--key", "7")
    assert explained.returncode == 0, explained


async def test_a_deadline_is_seen_at_the_step_it_falls_due_however_slowly_the_engine_looks(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = daemon_factory(
        {"github.toml": PR_WATCH.replace('within = "24h"', 'within = "1h"')},
        extra_config=GITHUB_SOURCE,
        env={"GITHUB_WEBHOOK_SECRET": SECRET},
    )
    await d.start()
    status, answer = await deliver(d, opened(5), "pull_request", "s-5")
    assert status == 200
    await until(lambda: d.running.last_seq >= answer["seq"], what="the engine to open the window")
    # The engine is busy (a long step holds the daemon's lock) when the clock moves: it looks at the
    # clock only after many of the test's steps would have gone by. The fire must still be seen at
    # the one step that makes it due.
    held = asyncio.Event()

    async def long_step() -> None:
        async with d.running.lock:
            held.set()
            await asyncio.sleep(0.3)

    busy = asyncio.create_task(long_step())
    await held.wait()
    await d.advance_until(lambda: "PR #5" in d.printed(), step_s=3600, limit_s=3600, what="the deadline fire")
    await busy


async def test_health_in_status_and_refusals_counted_by_reason(daemon_factory: Callable[..., InProcessDaemon]) -> None:
    d = daemon_factory(extra_config=GITHUB_SOURCE, env={"GITHUB_WEBHOOK_SECRET": SECRET})
    await d.start()
    assert (await deliver(d, opened(1), "pull_request", "h-1"))[0] == 200
    before = len(await stream(d))
    status, answer = await deliver(d, opened(2), "pull_request", "h-2", secret="not-the-secret")
    assert status == 401 and "X-Hub-Signature-256 does not match" in answer["error"]
    assert len(await stream(d)) == before  # nothing published
    (github,) = [s for s in d.health()["sources"] if s["name"] == "github"]
    assert github["type"] == "webhook" and github["events"] == 1
    assert github["rejections"] == {"signature": 1} and github["last_event_at"] is not None
    async with aiohttp.ClientSession() as http, http.get(d.http_url + "/metrics") as r:
        metrics = await r.text()
    assert 'watchd_source_rejections_total{reason="signature",source="github"} 1.0' in metrics
    assert 'watchd_source_events_total{source="github",type="webhook"} 1.0' in metrics
    shown = await d.cli("status", "--json")
    assert shown.returncode == 0 and SECRET not in shown.stdout + d.logged() + metrics


async def test_reload_moves_and_adds_routes(daemon_factory: Callable[..., InProcessDaemon]) -> None:
    d = daemon_factory(extra_config=GITHUB_SOURCE, env={"GITHUB_WEBHOOK_SECRET": SECRET, "SHOP_TOKEN": "t0k"})
    await d.start()
    moved = GITHUB_SOURCE.replace('"/hooks/github"', '"/hooks/gh"')
    shop = '[source.shop]\ntype = "webhook"\npath = "/hooks/shop"\nsubject = "shop.order"\nverify = "token"\n'
    d.write_config(moved + shop + 'secret = "env:SHOP_TOKEN"\n')
    assert await d.running.reload()
    raw, headers = signed(opened(3), "pull_request", "r-3")
    async with aiohttp.ClientSession() as http:
        async with http.post(d.http_url + "/hooks/github", data=raw, headers=headers) as r:
            assert r.status == 404
        async with http.post(d.http_url + "/hooks/gh", data=raw, headers=headers) as r:
            assert r.status == 200
        auth = {"Authorization": "Bearer t0k", "Content-Type": "application/json"}
        async with http.post(d.http_url + "/hooks/shop", data=b'{"n": 1}', headers=auth) as r:
            assert r.status == 200 and (await r.json())["id"] == hashlib.sha256(b'{"n": 1}').hexdigest()
    assert {e["subject"] for e in await stream(d)} >= {"github.pull_request", "shop.order"}


def test_validate_names_each_webhook_problem_at_its_line(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        '[http]\nlisten = "0.0.0.0:8787"\ntoken = "env:T"\n'  # 1-3
        '[source.open]\ntype = "webhook"\npath = "/hooks/open"\nsubject = "open.hit"\n'  # 4-7
        'verify = "none"\n'  # 8
        '[source.gh]\ntype = "webhook"\npath = "/hooks/open"\n'  # 9-11
        'subject = "gh.{headers:X-GitHub-Event}"\n'  # 12
        'verify = "github"\nsecret = "env:S"\nevery = "5m"\n'  # 13-15
        '[source.x]\ntype = "webhook"\npath = "/metrics"\nsubject = "x"\nverify = "slack"\n'  # 16-20
    )
    result = run_cli("validate", "--config", str(config), env={"T": "t", "S": "s"})
    assert result.returncode == 1
    out = result.stdout + result.stderr
    assert f"{config}:8:" in out and 'verify = "none" on a listener that is not loopback' in out
    assert f"{config}:11:" in out and "already source 'open'" in out
    assert f"{config}:12:" in out and "unknown template field {headers:X-GitHub-Event}" in out
    assert f"{config}:15:" in out and "every" in out
    assert f"{config}:18:" in out and "the listener's own" in out
    assert f"{config}:16:" in out or f"{config}:20:" in out  # slack without a secret
    assert 'verify = "slack" needs a secret' in out


SLACK_SIGNING = "slack-signing-secret-e2e"
SLACK_CONFIG = """
[notify.team]
type = "slack"
token = "env:SLACK_BOT_TOKEN"
channel = "C0000"
api_base = "{api}"

[source.slackhooks]
type = "webhook"
path = "/hooks/slack"
subject = "slack.{{json:type}}"
verify = "slack"
secret = "env:SLACK_SIGNING_SECRET"
"""

DISK_WATCH = """
[[watch]]
id = "disk-full"
kind = "match"
on = { subject = "disk.full" }
repeat = "1h"
then = ["notify.team"]
"""


async def test_a_slack_button_press_on_the_webhook_mutes_and_edits_the_message(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    async with FakeSlack(mode="api") as slack:
        d = daemon_factory(
            {"w.toml": DISK_WATCH},
            extra_config=SLACK_CONFIG.format(api=slack.api_base),
            env={"SLACK_BOT_TOKEN": slack.token, "SLACK_SIGNING_SECRET": SLACK_SIGNING},
        )
        await d.start()
        await d.publish(make_event("disk.full", {"host": "nas"}))
        await until(lambda: slack.messages, what="the notification")
        (posted_ts,) = slack.posted_ts
        buttons = [b for block in slack.messages[0]["blocks"] if block["type"] == "actions" for b in block["elements"]]
        (mute,) = [b for b in buttons if b["text"]["text"] == "Mute 24h"]
        # What Slack posts to the app's interactivity URL when a user presses the button.
        payload = {
            "type": "block_actions",
            "user": {"id": "U024BE7LH", "username": "ann"},
            "channel": {"id": "C0000", "name": "alerts"},
            "container": {"type": "message", "message_ts": posted_ts, "channel_id": "C0000"},
            "trigger_id": "13345224609.738474920.8088930838d88f008e0",
            "actions": [{"action_id": mute["action_id"], "type": "button", "value": mute["value"]}],
        }
        body = urlencode({"payload": json.dumps(payload)}).encode()
        stamp = str(int(time.time()))
        signature = "v0=" + hmac.new(SLACK_SIGNING.encode(), f"v0:{stamp}:".encode() + body, hashlib.sha256).hexdigest()
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": signature,
        }
        async with aiohttp.ClientSession() as http:
            async with http.post(d.http_url + "/hooks/slack", data=body, headers=headers) as r:
                assert r.status == 200 and await r.read() == b""
            forged = {**headers, "X-Slack-Signature": "v0=" + "0" * 64}
            async with http.post(d.http_url + "/hooks/slack", data=body, headers=forged) as r:
                assert r.status == 401
        await until(lambda: slack.updates, what="the message to be edited")
        (edit,) = slack.updates
        assert edit["channel"] == "C0000" and edit["ts"] == posted_ts
        assert "Muted by slack user U024BE7LH until " in json.dumps(edit)
        (muted,) = d.decisions("disk-full", "muted")
        assert muted["reason"].startswith("muted by slack user U024BE7LH until ")


def test_source_test_and_run_say_where_a_webhook_is_served(tmp_path: Path) -> None:
    project = Project(tmp_path, extra_config=GITHUB_SOURCE)
    env = {"GITHUB_WEBHOOK_SECRET": SECRET}
    tested = run_cli("source", "test", "github", "--config", str(project.config_path), env=env)
    assert tested.returncode == 1 and "POST to /hooks/github on the listener of `watchd run`" in tested.stderr
    assert "Traceback" not in tested.stderr
    ran = run_cli("source", "run", "github", "--config", str(project.config_path), env=env)
    assert ran.returncode == 1 and "`watchd run` serves it" in ran.stderr
