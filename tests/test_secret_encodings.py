"""Secrets are redacted by value in every encoding watchd produces: a receiver that echoes the
Authorization header built from a URL's user:password@ (base64), or the URL's path and query
(URL-encoded), puts none of them into an outcome or the log; and a backup keeps only the scheme
and host of a secret-bearing URL written literally in the config."""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from urllib.parse import quote

import pytest
from support.fakes import FakeWebhook, Reply
from support.handoffs import make_handoff

from watchd.config import WebhookNotifier as WebhookConfig
from watchd.dispatch import Dead, Retry
from watchd.notify.http_client import HttpClient, scrub
from watchd.notify.webhook import WebhookNotifier
from watchd.redact import redact_config, secret_forms

USER, PASSWORD, TOKEN = "hook-user", "p@ss:w0rd/secret", "query-token-7f3a9c"


def leaks(text: str, *secrets: str) -> list[str]:
    """Every form of every secret found in text."""
    return [form for s in secrets for form in secret_forms(s) if form in text]


def test_secret_forms_are_the_encodings_a_secret_travels_in() -> None:
    forms = secret_forms("user:pa ss")
    assert base64.b64encode(b"user:pa ss").decode() in forms  # HTTP Basic
    assert quote("user:pa ss", safe="") in forms and "user%3Apa+ss" in forms  # URL path and form encodings
    assert b"user:pa ss".hex() in forms
    assert forms == sorted(forms, key=len, reverse=True)  # longest first: no half-replaced leftovers
    basic = "Basic " + base64.b64encode(b"user:pa ss").decode()
    assert scrub(f"denied: Authorization: {basic}", ["user:pa ss"]) == "denied: Authorization: Basic ***"


@pytest.mark.parametrize("status", [401, 500])
async def test_a_receiver_echoing_the_basic_auth_header_and_the_url_leaks_nothing(
    http: HttpClient, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with FakeWebhook() as wh:
        url = f"http://{USER}:{quote(PASSWORD, safe='')}@{wh.url.removeprefix('http://')}/hook?token={TOKEN}"
        n = WebhookNotifier(WebhookConfig(url=url), name="notify.hook", http=http)
        wh.script(Reply(status=status, text="refused", echo=True, echo_headers=("Authorization",)))
        outcome = await n.deliver(make_handoff(target="notify.hook"))
        assert isinstance(outcome, Dead if status == 401 else Retry)
        sent = wh.requests[-1].headers["Authorization"]
        assert sent == "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()  # what was echoed
        assert "refused" in outcome.detail
        assert leaks(outcome.detail, f"{USER}:{PASSWORD}", PASSWORD, TOKEN) == [], outcome.detail
        assert leaks(caplog.text, f"{USER}:{PASSWORD}", PASSWORD, TOKEN) == []


def test_a_backup_keeps_only_scheme_and_host_of_a_secret_url() -> None:
    text = (
        "# the team's hook\n"
        '[notify.hook]\ntype = "webhook"\nurl = "https://hooks.example.com/services/T0/B1/xyzSECRETpath?sig=abcSECRETsig"\n'
        '[schedule.heartbeat]\nping_url = "https://hc-ping.com/5f0e-SECRET-uuid"\n'
        '[nats]\nurl = ["nats://a.example:4222", "nats://u:pw-SECRET-12@b.example:4222/x"]\n'
        '[source.poll]\ntype = "poll"\nurl = "https://example.org/release.json"\n'
        'headers = { Authorization = "Bearer header-SECRET-token" }\n'
    )
    paths = ["notify.hook.url", "schedule.heartbeat.ping_url", "nats.url", "source.poll.headers.Authorization"]
    out, redacted = redact_config(text, paths)
    assert out is not None
    assert "SECRET" not in out, out
    assert 'url = "https://hooks.example.com/<redacted>"' in out
    assert 'ping_url = "https://hc-ping.com/<redacted>"' in out
    assert '"nats://a.example:4222"' in out and '"nats://***@b.example:4222/<redacted>"' in out
    assert 'url = "https://example.org/release.json"' in out  # not a secret setting: left alone
    assert 'Authorization = "<redacted>"' in out and "# the team's hook" in out
    assert redacted == [
        "nats.url.1",
        "notify.hook.url",
        "schedule.heartbeat.ping_url",
        "source.poll.headers.Authorization",
    ]


def test_a_secret_url_written_with_escapes_is_left_out_rather_than_kept(tmp_path: Path) -> None:
    # TOML escapes make the text differ from the value: the search cannot find it, so the check does.
    text = '[notify.hook]\ntype = "webhook"\nurl = "https://hooks.example.com/\\u0053ECRET-path"\n'
    out, redacted = redact_config(text, ["notify.hook.url"])
    assert out is None and redacted == ["notify.hook.url"]
