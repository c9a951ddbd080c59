"""Notifiers against real HTTP fakes on loopback: content, classification, limits, signatures,
secrets, and one contract every notifier meets."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, Protocol

import msgspec
import pytest
from support.fake_telegram import FakeTelegram
from support.fakes import FakeServer, FakeSlack, FakeWebhook, Reply, closed_port_url
from support.waiting import until

from watchd.config import SlackNotifier as SlackConfig
from watchd.config import TelegramNotifier as TelegramConfig
from watchd.config import WebhookNotifier as WebhookConfig
from watchd.dispatch import Dead, Delivered, Outcome, Retry
from watchd.errors import WatchdError
from watchd.model import Handoff, Window
from watchd.notify import http_client
from watchd.notify.http_client import HttpClient, Misconfigured, parse_retry_after
from watchd.notify.render import TRUNCATED, render, render_template, truncate, utf16_len
from watchd.notify.slack import SlackNotifier, build_payload
from watchd.notify.telegram import TelegramNotifier
from watchd.notify.webhook import WebhookNotifier, sign, verify

SECRET = "S3CRET-zq8Xv"  # distinctive: any leak shows up in a plain substring search


class Notifier(Protocol):
    async def deliver(self, handoff: Handoff) -> Outcome: ...
    async def probe(self) -> tuple[bool, str]: ...


def templated(template: str, **kw: Any) -> Handoff:
    """A handoff whose message was filled from `template`, as the dispatcher does when making it."""
    h = make_handoff(**kw)
    h.message = render_template(template, h)
    return h


def test_template_is_filled_once_so_event_data_cannot_inject_placeholders() -> None:
    h = templated(
        "{event.data.note}", evidence=[{"id": "e", "subject": "x", "time": "t", "data": {"note": "{reason}"}}]
    )
    assert render(h) == "{reason}"


def make_handoff(**kw: Any) -> Handoff:
    base: dict[str, Any] = dict(
        id="h_3f2a9c",
        watch="nightly-backup",
        watch_version=3,
        kind="deadline",
        key=None,
        target="notify.phone",
        trigger="watch",
        reason="no backup.done with data.exit_code == 0 between 01:00 and 03:00 Europe/Berlin",
        fired_at="2026-11-22T02:00:00Z",
        window=Window("2026-11-22T00:00:00Z", "2026-11-22T02:00:00Z"),
        evidence=[
            {"id": "e1", "subject": "backup.started", "time": "2026-11-22T00:10:00Z", "data": {}},
            {
                "id": "e2",
                "subject": "backup.done",
                "time": "2026-11-22T01:13:00Z",
                "data": {"exit_code": 2, "host": {"name": "nas"}, "ok": False},
            },
        ],
    )
    base.update(kw)
    return Handoff(**base)


# ---- rigs: a fake service and a notifier pointed at it -------------------------------------------------------

KINDS = ["telegram", "slack-webhook", "slack-api", "webhook"]


@dataclass
class Rig:
    fake: FakeServer
    notifier: Notifier
    sent: Callable[[], list[dict[str, Any]]]


@contextlib.asynccontextmanager
async def rig(
    kind: str, http: HttpClient, *, secret: str = "", timeout_s: float = 2.0, base: str | None = None
) -> AsyncIterator[Rig]:
    """`secret` goes into every credential, so a leak test can search for it; `base` points the
    notifier somewhere other than the fake (a closed port)."""
    if kind == "telegram":
        async with FakeTelegram(token=f"123456:{secret}AAbbCC") as tg:
            n = TelegramNotifier(
                TelegramConfig(token=tg.token, chat_id="42", api_base=base or tg.api_base),
                name="notify.phone",
                timeout_s=timeout_s,
                http=http,
            )
            yield Rig(tg, n, lambda: tg.messages)
    elif kind == "slack-webhook":
        async with FakeSlack("webhook", hook_secret=f"{secret}hookXX") as sl:
            url = (base + sl.hook_path) if base else sl.webhook_url
            n2 = SlackNotifier(SlackConfig(webhook_url=url), name="notify.team", timeout_s=timeout_s, http=http)
            yield Rig(sl, n2, lambda: sl.messages)
    elif kind == "slack-api":
        async with FakeSlack("api", token=f"xoxb-{secret}tok") as sl:
            n3 = SlackNotifier(
                SlackConfig(token=sl.token, channel="#alerts", api_base=(base + "/api") if base else sl.api_base),
                name="notify.team",
                timeout_s=timeout_s,
                http=http,
            )
            yield Rig(sl, n3, lambda: sl.messages)
    elif kind == "webhook":
        async with FakeWebhook(secret=f"{secret}hmac-key") as wh:
            url = (base + "/hook" if base else wh.hook_url) + f"?token={secret}q"
            n4 = WebhookNotifier(
                WebhookConfig(url=url, secret=wh.secret), name="notify.hook", timeout_s=timeout_s, http=http
            )
            yield Rig(wh, n4, lambda: wh.deliveries)
    else:
        raise AssertionError(kind)


# ---- the contract: every notifier ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_contract_success_5xx_401(http: HttpClient, kind: str) -> None:
    async with rig(kind, http) as r:
        ok = await r.notifier.deliver(make_handoff())
        assert isinstance(ok, Delivered), ok
        assert len(r.sent()) == 1

        r.fake.fail(500)
        assert isinstance(await r.notifier.deliver(make_handoff()), Retry)

        r.fake.fail(503, headers={"Retry-After": "12"})
        out = await r.notifier.deliver(make_handoff())
        assert isinstance(out, Retry) and out.retry_after_s == 12

        r.fake.fail(401)
        out = await r.notifier.deliver(make_handoff())
        assert isinstance(out, Dead), out
        assert out.detail.startswith("notify.")

        r.fake.reject_auth()  # the service's own way of refusing credentials
        out = await r.notifier.deliver(make_handoff())
        assert isinstance(out, Dead), out

        r.fake.fail(403)
        assert isinstance(await r.notifier.deliver(make_handoff()), Dead)
        assert len(r.sent()) == 1
        assert isinstance(await r.notifier.deliver(make_handoff()), Delivered)
        ok_probe, detail = await r.notifier.probe()
        assert ok_probe, detail


@pytest.mark.parametrize("kind", KINDS)
async def test_contract_fail_then_succeed_rate_limit_stall_refused(http: HttpClient, kind: str) -> None:
    async with rig(kind, http, timeout_s=0.3) as r:
        r.fake.fail(502, times=2)
        outcomes = [await r.notifier.deliver(make_handoff()) for _ in range(3)]
        assert [type(o) for o in outcomes] == [Retry, Retry, Delivered]

        r.fake.rate_limit(retry_after=7)
        out = await r.notifier.deliver(make_handoff())
        assert isinstance(out, Retry) and out.retry_after_s == 7, out

        r.fake.stall(5)
        t0 = time.monotonic()
        out = await r.notifier.deliver(make_handoff())
        assert isinstance(out, Retry) and "timeout" in out.detail, out
        assert time.monotonic() - t0 < 2

    async with rig(kind, http, base=closed_port_url()) as r:
        out = await r.notifier.deliver(make_handoff())
        assert isinstance(out, Retry) and "cannot connect" in out.detail, out
        ok_probe, detail = await r.notifier.probe()
        assert ok_probe is False and "connection refused" in detail, detail  # every probe connects


@pytest.mark.parametrize("kind", KINDS)
async def test_secrets_never_leak(http: HttpClient, kind: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    async with rig(kind, http, secret=SECRET, timeout_s=0.3) as r:
        texts.append(repr(r.notifier))
        assert isinstance(await r.notifier.deliver(make_handoff()), Delivered)
        for status in (400, 401, 403, 404, 410, 429, 500, 503):
            r.fake.fail(status)
            texts.append((await r.notifier.deliver(make_handoff())).detail)
        # Servers and proxies that echo the request path (with the token in it) into their error page:
        path = r.fake.default_path
        r.fake.script(
            Reply(404, text="Cannot POST", echo=True),
            Reply(502, text="bad gateway for", echo=True),
            Reply(200, json={"ok": False, "error_code": 400, "description": f"bad {path}", "error": f"e {path}"}),
            path=path,
        )
        for _ in range(3):
            texts.append((await r.notifier.deliver(make_handoff())).detail)
        r.fake.stall(5)
        texts.append((await r.notifier.deliver(make_handoff())).detail)
        r.fake.reject_auth()
        texts.append((await r.notifier.deliver(make_handoff())).detail)
        texts.append(str(await r.notifier.probe()))
    async with rig(kind, http, secret=SECRET, base=closed_port_url()) as r:
        texts.append((await r.notifier.deliver(make_handoff())).detail)
        texts.append(str(await r.notifier.probe()))
    assert all(texts), texts
    for text in [*texts, caplog.text]:
        assert SECRET not in text, text
    assert any("notify." in t for t in texts)


def test_secrets_absent_from_construction_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    http = HttpClient()  # never sends: construction fails first
    bad: list[Callable[[], object]] = [
        lambda: SlackNotifier(SlackConfig(webhook_url=f"ftp://hooks.example/{SECRET}"), name="notify.team", http=http),
        lambda: SlackNotifier(SlackConfig(webhook_url=f"not a url {SECRET}"), name="notify.team", http=http),
        lambda: WebhookNotifier(WebhookConfig(url=f"hooks.example/{SECRET}"), name="notify.hook", http=http),
        lambda: WebhookNotifier(
            WebhookConfig(url="https://hooks.example/x", secret="env:WATCHD_TEST_UNSET_SECRET"),
            name="notify.hook",
            http=http,
        ),
    ]
    monkeypatch.delenv("WATCHD_TEST_UNSET_SECRET", raising=False)
    for make in bad:
        with pytest.raises(WatchdError) as info:
            make()
        assert SECRET not in str(info.value) and SECRET not in repr(info.value)
        assert str(info.value).startswith("notify.")
    assert "WATCHD_TEST_UNSET_SECRET" in str(info.value)


# ---- Telegram ------------------------------------------------------------------------------------------------


async def test_telegram_message_content(http: HttpClient) -> None:
    async with rig("telegram", http) as r:
        out = await r.notifier.deliver(make_handoff(key="nas"))
        assert out == Delivered("Telegram message 1")
        (msg,) = r.sent()
        assert msg["chat_id"] == "42" and msg["disable_web_page_preview"] is True
        lines = msg["text"].splitlines()
        assert lines[0] == "🔔 nightly-backup fired (key nas)"
        assert lines[1].startswith("no backup.done")
        assert "window: 2026-11-22T00:00:00Z → 2026-11-22T02:00:00Z" in lines
        assert lines[-1] == "why: watchd explain nightly-backup"
        await r.notifier.deliver(templated("backup {watch} missed {deadline}; exit {event.data.exit_code}"))
        assert r.sent()[-1]["text"] == "backup nightly-backup missed 2026-11-22T02:00:00Z; exit 2"


async def test_telegram_long_message_truncated(http: HttpClient) -> None:
    async with rig("telegram", http) as r:
        long = "🔔 " + "x" * 3000 + "\n" + "é🙂" * 2000
        assert isinstance(await r.notifier.deliver(make_handoff(message=long)), Delivered)
        text = r.sent()[-1]["text"]
        assert text.endswith(TRUNCATED) and utf16_len(text) <= 4096 and utf16_len(text) > 4000


async def test_telegram_errors_say_what_to_fix(http: HttpClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHD_TEST_TG_TOKEN", "999:right-token")
    async with FakeTelegram(token="999:right-token", chats={"42"}) as tg:
        cfg = TelegramConfig(token="env:WATCHD_TEST_TG_TOKEN", chat_id="42", api_base=tg.api_base)
        n = TelegramNotifier(cfg, name="notify.phone", http=http)
        assert isinstance(await n.deliver(make_handoff()), Delivered)

        tg.reject_auth()
        out = await n.deliver(make_handoff())
        assert out == Dead("notify.phone: Telegram rejected the bot token (401): check token / WATCHD_TEST_TG_TOKEN")

        wrong = TelegramNotifier(
            TelegramConfig(token="999:wrong", chat_id="42", api_base=tg.api_base), name="notify.phone", http=http
        )
        out = await wrong.deliver(make_handoff())
        assert isinstance(out, Dead) and "(401)" in out.detail and "check token" in out.detail
        ok, detail = await wrong.probe()
        assert not ok and "rejected the bot token" in detail

        other_chat = TelegramNotifier(
            TelegramConfig(token="env:WATCHD_TEST_TG_TOKEN", chat_id="7", api_base=tg.api_base),
            name="notify.phone",
            http=http,
        )
        out = await other_chat.deliver(make_handoff())
        assert isinstance(out, Dead) and "chat not found" in out.detail and "check chat_id" in out.detail

        tg.fail(403)
        out = await n.deliver(make_handoff())
        assert isinstance(out, Dead) and "blocked" in out.detail and "chat 42" in out.detail

        migrated = "Bad Request: group chat was upgraded to a supergroup chat"
        params = {"migrate_to_chat_id": -100123}
        tg.script(Reply(400, json={"ok": False, "error_code": 400, "description": migrated, "parameters": params}))
        out = await n.deliver(make_handoff())
        assert isinstance(out, Dead) and 'chat_id = "-100123"' in out.detail

        tg.rate_limit(retry_after=3600)  # a huge retry_after is capped at ten minutes
        out = await n.deliver(make_handoff())
        assert isinstance(out, Retry) and out.retry_after_s == 600

        ok, detail = await n.probe()
        assert ok and "@watchd_test_bot" in detail


# ---- Slack ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["slack-webhook", "slack-api"])
async def test_slack_message_content_and_limits(http: HttpClient, kind: str) -> None:
    async with rig(kind, http) as r:
        assert isinstance(await r.notifier.deliver(make_handoff(reason="a <b> & c")), Delivered)
        msg = r.sent()[-1]
        assert msg["text"].startswith("🔔 nightly-backup fired") and "a &lt;b&gt; &amp; c" in msg["text"]
        first = msg["blocks"][0]["text"]
        assert first["type"] == "plain_text" and "a <b> & c" in first["text"]
        assert msg["blocks"][-1]["type"] == "context" and "h_3f2a9c" in msg["blocks"][-1]["elements"][0]["text"]
        if kind == "slack-api":
            assert msg["channel"] == "#alerts"
            assert isinstance(r.fake, FakeSlack)
            assert r.fake.requests[-1].headers["Authorization"] == f"Bearer {r.fake.token}"

        huge = "\n".join(f"line {i} " + "y" * 90 for i in range(2000))  # ~200 k characters
        assert isinstance(await r.notifier.deliver(make_handoff(message=huge)), Delivered)
        msg = r.sent()[-1]
        assert len(msg["blocks"]) == 50
        sections = [b for b in msg["blocks"] if b["type"] == "section"]
        assert all(len(b["text"]["text"]) <= 3000 for b in sections)
        assert sections[-1]["text"]["text"].endswith(TRUNCATED)
        assert len(msg["text"]) <= 3000


def test_slack_payload_one_huge_line() -> None:
    payload = build_payload("z" * 7000, footer=None)
    assert [len(b["text"]["text"]) for b in payload["blocks"]] == [3000, 3000, 1000]


async def test_slack_api_error_codes(http: HttpClient) -> None:
    async with rig("slack-api", http) as r:
        assert isinstance(r.fake, FakeSlack)
        for error in ("invalid_auth", "not_authed", "account_inactive", "token_revoked"):
            r.fake.slack_error(error)
            out = await r.notifier.deliver(make_handoff())
            assert isinstance(out, Dead) and error in out.detail and "check token" in out.detail, out
        r.fake.slack_error("channel_not_found")
        out = await r.notifier.deliver(make_handoff())
        assert isinstance(out, Dead) and "#alerts" in out.detail and "channel_not_found" in out.detail
        r.fake.slack_error("ratelimited", headers={"Retry-After": "30"})
        out = await r.notifier.deliver(make_handoff())
        assert out == Retry("notify.team: Slack answered ratelimited", 30)
        r.fake.slack_error("internal_error")
        assert isinstance(await r.notifier.deliver(make_handoff()), Retry)
        r.fake.slack_error("missing_scope")
        out = await r.notifier.deliver(make_handoff())
        assert isinstance(out, Dead) and "chat:write" in out.detail
        r.fake.rate_limit(retry_after=5, http_date=True)
        out = await r.notifier.deliver(make_handoff())
        assert isinstance(out, Retry) and out.retry_after_s is not None and 3 <= out.retry_after_s <= 5
        ok, detail = await r.notifier.probe()
        assert ok and "user watchd" in detail


async def test_slack_api_channel_and_webhook_errors(http: HttpClient, monkeypatch: pytest.MonkeyPatch) -> None:
    async with FakeSlack("api", channels={"#alerts"}) as sl:
        n = SlackNotifier(
            SlackConfig(token=sl.token, channel="#nope", api_base=sl.api_base), name="notify.team", http=http
        )
        out = await n.deliver(make_handoff())
        assert isinstance(out, Dead) and "invite the bot" in out.detail
        bad = SlackNotifier(
            SlackConfig(token="xoxb-wrong", channel="#alerts", api_base=sl.api_base), name="notify.t", http=http
        )
        assert (await bad.probe())[0] is False
    monkeypatch.setenv("WATCHD_TEST_SLACK_URL", "")
    async with FakeSlack("webhook") as sl:
        monkeypatch.setenv("WATCHD_TEST_SLACK_URL", sl.webhook_url)
        n = SlackNotifier(SlackConfig(webhook_url="env:WATCHD_TEST_SLACK_URL"), name="notify.team", http=http)
        sl.fail(404)
        out = await n.deliver(make_handoff())
        assert out == Dead(
            "notify.team: Slack does not know this endpoint (404: no_service): "
            "check webhook_url / WATCHD_TEST_SLACK_URL: the webhook was removed or disabled"
        )
        sl.fail(410)
        out = await n.deliver(make_handoff())
        assert isinstance(out, Dead) and "archived" in out.detail


def test_slack_config_errors() -> None:
    http = HttpClient()  # never sends: construction fails first
    with pytest.raises(WatchdError, match="needs webhook_url, or token and channel"):
        SlackNotifier(SlackConfig(), name="notify.team", http=http)
    with pytest.raises(WatchdError, match="not both"):
        SlackNotifier(
            SlackConfig(webhook_url="https://hooks.slack.com/x", token="xoxb-1"), name="notify.team", http=http
        )
    with pytest.raises(WatchdError, match="needs a channel"):
        SlackNotifier(SlackConfig(token="xoxb-1"), name="notify.team", http=http)


# ---- webhook -------------------------------------------------------------------------------------------------


async def test_webhook_body_headers_and_hmac(http: HttpClient) -> None:
    async with FakeWebhook(secret="signing-key") as wh:
        n = WebhookNotifier(WebhookConfig(url=wh.hook_url, secret="signing-key"), name="notify.hook", http=http)
        h = make_handoff(attempt=2)
        assert await n.deliver(h) == Delivered("webhook receiver answered 200")
        req = wh.requests[-1]
        assert req.headers["Content-Type"] == "application/json"
        assert req.headers["X-Watchd-Handoff-Id"] == "h_3f2a9c"
        assert req.headers["X-Watchd-Attempt"] == "2"
        assert msgspec.json.decode(req.body, type=Handoff) == msgspec.structs.replace(h, message=render(h))
        expected = "sha256=" + hmac.new(b"signing-key", req.body, hashlib.sha256).hexdigest()
        assert req.headers["X-Watchd-Signature-256"] == expected
        assert verify("signing-key", req.body, req.headers["X-Watchd-Signature-256"])
        assert not verify("other-key", req.body, req.headers["X-Watchd-Signature-256"])
        await n.deliver(h)  # a retry repeats the id: the receiver's dedup key
        assert wh.handoff_ids == ["h_3f2a9c", "h_3f2a9c"] and wh.unique_ids == {"h_3f2a9c"}

        wrong = WebhookNotifier(WebhookConfig(url=wh.hook_url, secret="wrong-key"), name="notify.hook", http=http)
        out = await wrong.deliver(h)
        assert isinstance(out, Dead) and "(401: " in out.detail and "signature" in out.detail

        custom = WebhookNotifier(
            WebhookConfig(url=wh.hook_url, secret="k2", header="X-Sig"), name="notify.hook", http=http
        )
        wh.secret, wh.header = "k2", "X-Sig"
        assert isinstance(await custom.deliver(h), Delivered)
        assert wh.requests[-1].headers["X-Sig"] == sign("k2", wh.requests[-1].body)


async def test_webhook_body_message_is_the_text_a_person_reads(http: HttpClient) -> None:
    async with FakeWebhook() as wh:
        n = WebhookNotifier(WebhookConfig(url=wh.hook_url), name="notify.hook", http=http)
        plain = make_handoff(message=None)
        assert isinstance(await n.deliver(plain), Delivered)
        body = msgspec.json.decode(wh.requests[-1].body)
        assert body["message"] == render(plain) and body["message"].startswith("🔔 nightly-backup fired")
        assert isinstance(await n.deliver(make_handoff(message="backup late on nas")), Delivered)
        assert msgspec.json.decode(wh.requests[-1].body)["message"] == "backup late on nas"


def test_an_unset_secret_is_named_once(monkeypatch: pytest.MonkeyPatch) -> None:
    http = HttpClient()  # never sends: construction fails first
    monkeypatch.delenv("WATCHD_TEST_UNSET_SECRET", raising=False)
    with pytest.raises(WatchdError) as info:
        WebhookNotifier(
            WebhookConfig(url="https://hooks.example/x", secret="env:WATCHD_TEST_UNSET_SECRET"),
            name="notify.hook",
            http=http,
        )
    assert info.value.message == "notify.hook: secret: env:WATCHD_TEST_UNSET_SECRET is not set"


async def test_webhook_unsigned_redirect_and_http_date(http: HttpClient) -> None:
    async with FakeWebhook() as wh:
        n = WebhookNotifier(WebhookConfig(url=wh.hook_url), name="notify.hook", http=http)
        assert isinstance(await n.deliver(make_handoff()), Delivered)
        assert "X-Watchd-Signature-256" not in wh.requests[-1].headers
        wh.script(Reply(301, headers={"Location": "https://elsewhere.example/"}))
        out = await n.deliver(make_handoff())
        assert isinstance(out, Dead) and "redirected" in out.detail
        wh.script(Reply(503, headers={"Retry-After": formatdate(time.time() + 120, usegmt=True)}))
        out = await n.deliver(make_handoff())
        assert isinstance(out, Retry) and out.retry_after_s is not None and 110 <= out.retry_after_s <= 120
        wh.fail(422)
        out = await n.deliver(make_handoff())
        assert isinstance(out, Dead) and "422" in out.detail
        wh.fail(408)
        assert isinstance(await n.deliver(make_handoff()), Retry)


# ---- shared pieces -------------------------------------------------------------------------------------------


async def test_each_owner_has_its_own_session_and_closing_one_leaves_the_others_alone(http: HttpClient) -> None:
    """The daemon, a second daemon in the same process (tests) and `watchd canary` each own a client:
    closing one must not cut a request in flight on another, and a closed one sends nothing more
    (a delivery outliving its daemon's stop must not open a session nobody would close)."""
    async with FakeWebhook() as wh:
        other = HttpClient()
        mine = WebhookNotifier(WebhookConfig(url=wh.hook_url), name="notify.hook", http=http)
        theirs = WebhookNotifier(WebhookConfig(url=wh.hook_url), name="notify.hook", http=other)
        assert isinstance(await theirs.deliver(make_handoff()), Delivered)
        wh.stall(0.5)
        in_flight = asyncio.create_task(mine.deliver(make_handoff()))
        await until(lambda: len(wh.requests) == 2, what="the stalled request to arrive")
        await other.close()
        assert isinstance(await in_flight, Delivered)
        out = await theirs.deliver(make_handoff())
        assert (
            isinstance(out, Retry) and out.detail == "notify.hook: not sent to the webhook receiver: watchd is stopping"
        )
        assert len(wh.requests) == 2 and other.closed and not http.closed


def test_parse_retry_after() -> None:
    now = 1_800_000_000.0
    assert parse_retry_after("120", now) == 120
    assert parse_retry_after("1.5", now) == 1.5
    assert parse_retry_after("99999", now) == 600
    assert parse_retry_after("-5", now) == 0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now) == 30
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now) == 0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("", now) is None
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("nan", now) is None


async def test_misconfigured_target_dead_letters() -> None:
    m = Misconfigured("notify.phone", "notify.phone: token: env:X is not set")
    assert await m.deliver(make_handoff()) == Dead("notify.phone: token: env:X is not set")
    assert await m.probe() == (False, "notify.phone: token: env:X is not set")


def test_scrub() -> None:
    assert http_client.scrub(f"a {SECRET} b a%2F{SECRET}", [SECRET, None, "ab"]) == "a *** b a%2F***"
    assert http_client.scrub("x/y z", ["x/y"]) == "x/y z"  # too short to be a secret worth hiding


# ---- rendering -----------------------------------------------------------------------------------------------


def test_render_default_and_message() -> None:
    text = render(make_handoff())
    assert text.splitlines() == [
        "🔔 nightly-backup fired",
        "no backup.done with data.exit_code == 0 between 01:00 and 03:00 Europe/Berlin",
        "window: 2026-11-22T00:00:00Z → 2026-11-22T02:00:00Z",
        "fired at 2026-11-22T02:00:00Z",
        "evidence: 2 events, latest backup.done at 2026-11-22T01:13:00Z",
        "why: watchd explain nightly-backup",
    ]
    plain = render(make_handoff(window=None, evidence=[], key="laptop"))
    assert plain.splitlines()[0] == "🔔 nightly-backup fired (key laptop)"
    assert "window" not in plain and "evidence" not in plain
    assert render(templated("custom {count} events")) == "custom 2 events"


def test_render_template_fields() -> None:
    h = make_handoff(key="nas")
    t = (
        "{watch}|{key}|{reason}|{deadline}|{count}|{fired_at}|{event.data.exit_code}|{event.data.host.name}|"
        "{event.data.ok}|{event.data.host}|{window.start}|{evidence.0.subject}|{event.subject}"
    )
    assert render_template(t, h).split("|") == [
        "nightly-backup",
        "nas",
        h.reason,
        "2026-11-22T02:00:00Z",
        "2",
        "2026-11-22T02:00:00Z",
        "2",
        "nas",
        "false",
        '{"name":"nas"}',
        "2026-11-22T00:00:00Z",
        "backup.started",
        "backup.done",
    ]


def test_render_template_missing_and_attacks() -> None:
    h = make_handoff(window=None, evidence=[])
    assert render_template("{event.data.x} by {deadline}; {key} {nope}", h) == (
        "{event.data.x?} by {deadline?}; {key?} {nope?}"
    )
    attacks = {
        "{watch.__class__}": "{watch.__class__?}",
        "{watch.__class__.__init__.__globals__}": "{watch.__class__.__init__.__globals__?}",
        "{__class__}": "{__class__?}",
        "{evidence.__len__}": "{evidence.__len__?}",
        "{watch!r}": "{watch!r}",  # not a placeholder: left as written, never formatted
        "{watch:>40}": "{watch:>40}",
        "{0}": "{0}",
        "{watch[0]}": "{watch[0]}",
        "{{watch}}": "{watch}",
        "{": "{",
        "}": "}",
        "{evidence.99}": "{evidence.99?}",
    }
    for template, expected in attacks.items():
        assert render_template(template, h) == expected, template
    assert render_template("{a.b}", {"a": {"b": [1, 2]}}) == "[1,2]"


def test_truncate() -> None:
    assert truncate("short", 10) == "short"
    cut = truncate("a" * 100, 20)
    assert len(cut) == 20 and cut.endswith(TRUNCATED)
    cut = truncate("🙂" * 100, 21, utf16=True)  # never half an emoji
    assert utf16_len(cut) <= 21 and cut.endswith(TRUNCATED) and "\ud83d" not in cut


# ---- console -------------------------------------------------------------------------------------------------


async def test_console_prints_one_plain_line_off_a_terminal_and_a_panel_on_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Off a terminal (a pipe, the journal) one line, written without rich; where rich takes the
    stream for a terminal (here told so by TTY_COMPATIBLE=1), the panel."""
    import io

    from watchd.notify.console import ConsoleNotifier

    h = make_handoff(key="nas", message="disk full\non nas")
    for name in ("TTY_COMPATIBLE", "FORCE_COLOR"):
        monkeypatch.delenv(name, raising=False)
    plain = io.StringIO()
    notifier = ConsoleNotifier(plain)
    assert not notifier.fancy
    assert isinstance(await notifier.deliver(h), Delivered)
    assert plain.getvalue() == (
        "[watchd: nightly-backup fired] disk full | on nas | watch nightly-backup v3 · deadline · key nas"
        " | fired 2026-11-22T02:00:00Z · handoff h_3f2a9c | why: watchd explain nightly-backup\n"
    )
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    panel = io.StringIO()
    notifier = ConsoleNotifier(panel)
    assert notifier.fancy
    await notifier.deliver(h)
    shown = panel.getvalue()
    assert "watchd: nightly-backup fired" in shown and "why: watchd explain nightly-backup" in shown
    assert "╭" in shown and "\x1b[" in shown  # a box, in colour
