"""Webhook routes on the running HTTP listener: real requests over sockets, a real nats-server.
Signed with the providers' published examples, then tampered, replayed, stale, oversized and
wrongly typed; every refusal is proven to store nothing (the stream's last sequence stays put)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from support.ingress_harness import Listener, Response
from support.webhooks import (
    GITHUB_BODY,
    GITHUB_SECRET,
    GITHUB_SIGNATURE,
    SLACK_BODY,
    SLACK_SECRET,
    SLACK_SIGNATURE,
    SLACK_TIMESTAMP,
)

from watchd.sources.settings import Verify, WebhookSettings
from watchd.sources.webhook import WebhookRoute, compile_route


def Hook(path: str, subject: str, verify: Verify = "none", secret: str | None = None, **more: Any) -> WebhookSettings:
    """A webhook source's settings, as a config table gives them."""
    return WebhookSettings(path=path, subject=subject, verify=verify, secret=secret, **more)


TOKEN = "hook-token-7f3a"
HMAC_SECRET = "shop-secret-91c2"
SLACK_TEST_SECRET = "slack-signing-secret-5e"

HOOKS = {
    "github": Hook("/hooks/github", "github.{header:X-GitHub-Event}", "github", GITHUB_SECRET.decode()),
    "slack": Hook("/hooks/slack", "slack.{json:event.type}", "slack", SLACK_TEST_SECRET),
    "slackteam": Hook(
        "/hooks/slack-team", "slack.x", "slack", SLACK_TEST_SECRET, senders=["U2CERLKJA"], channels=["C0123"]
    ),
    "slackcmd": Hook("/hooks/slack-command", "slack.command", "slack", SLACK_SECRET.decode()),
    "shop": Hook(
        "/hooks/shop",
        "shop.{json:topic}",
        "hmac-sha256",
        HMAC_SECRET,
        id="shop-{header:X-Shop-Id}",
        header="X-Shop-Hmac",
        prefix="",
    ),
    "ci": Hook("/hooks/ci", "ci.{query:job}", "token", TOKEN, max_body="1KiB"),
    "local": Hook("/hooks/local", "local.ping"),
}


def slack_clock() -> float:
    return SLACK_TIMESTAMP + 60.0  # a minute after Slack's documented example was signed


def start_listener(root: Path) -> Listener:
    lst = Listener(root).start()
    routes = {}
    for name, hook in HOOKS.items():
        clock = slack_clock if name == "slackcmd" else time.time
        routes[hook.path] = compile_route(name, hook, secret=hook.secret, clock=clock)
    assert lst.ingress is not None
    lst.ingress.webhooks = routes
    return lst


@pytest.fixture(scope="module")
def listener(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Listener]:
    lst = start_listener(tmp_path_factory.mktemp("webhooks"))
    try:
        yield lst
    finally:
        lst.stop()


@pytest.fixture(autouse=True)
def no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.INFO)
    yield
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


def route(lst: Listener, name: str) -> WebhookRoute:
    assert lst.ingress is not None
    return lst.ingress.webhooks[HOOKS[name].path]


def post(lst: Listener, name: str, body: bytes, headers: dict[str, str], query: str = "") -> Response:
    return lst.request("POST", HOOKS[name].path + query, body, headers)


def github_headers(body: bytes, event: str = "pull_request", delivery: str = "d-1", **more: str) -> dict[str, str]:
    signature = "sha256=" + hmac.new(GITHUB_SECRET, body, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": signature,
        **more,
    }


def slack_headers(body: bytes, at: float | None = None, content_type: str = "application/json") -> dict[str, str]:
    stamp = str(int(time.time() if at is None else at))
    base = f"v0:{stamp}:".encode() + body
    signature = "v0=" + hmac.new(SLACK_TEST_SECRET.encode(), base, hashlib.sha256).hexdigest()
    return {"Content-Type": content_type, "X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": signature}


def stored(lst: Listener, r: Response, status: int = 200) -> dict[str, Any]:
    assert r.status == status, (r.status, r.body[:300])
    seq = r.json["seq"]
    _subject, envelope = lst.stored(seq)
    return envelope


def refused(lst: Listener, r: Response, before: int, status: int, reason: str, fragment: str) -> None:
    assert r.status == status, (r.status, r.body[:300])
    assert fragment in r.error, r.error
    assert lst.last_seq() == before, "a refused request published an event"
    assert lst.ingress is not None and lst.ingress.errors[reason] >= 1


def test_github_signed_delivery_is_stored_once_under_its_delivery_id(listener: Listener) -> None:
    body = json.dumps({"action": "opened", "number": 7}).encode()
    r = post(listener, "github", body, github_headers(body, delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958"))
    env = stored(listener, r)
    assert env["subject"] == "github.pull_request"
    assert env["id"] == "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    assert env["source"] == "github"
    assert env["data"] == {"action": "opened", "number": 7}
    assert r.json["duplicate"] is False
    # GitHub's "Redeliver": the same delivery again is answered 2xx and stored once.
    before = listener.last_seq()
    again = post(listener, "github", body, github_headers(body, delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958"))
    assert again.status == 200 and again.json["duplicate"] is True
    assert listener.last_seq() == before
    assert route(listener, "github").health.duplicates >= 1


def test_github_documented_signature_passes_the_check_and_a_tampered_one_does_not(listener: Listener) -> None:
    before = listener.last_seq()
    documented = {"Content-Type": "application/json", "X-GitHub-Event": "ping", "X-Hub-Signature-256": GITHUB_SIGNATURE}
    # "Hello, World!" is GitHub's example payload, not a JSON object: past the signature, the body is refused.
    r = post(listener, "github", GITHUB_BODY, documented)
    refused(listener, r, before, 400, "json", "not valid JSON")
    r = post(listener, "github", b"Hello, World?", documented)
    refused(listener, r, before, 401, "signature", "X-Hub-Signature-256 does not match the body")
    body = json.dumps({"zen": "Keep it logically awesome."}).encode()
    tampered = github_headers(body, event="ping")
    r = post(listener, "github", body.replace(b"awesome", b"awesome!"), tampered)
    refused(listener, r, before, 401, "signature", "does not match")
    unsigned = {k: v for k, v in tampered.items() if k != "X-Hub-Signature-256"}
    refused(listener, post(listener, "github", body, unsigned), before, 401, "signature", "no X-Hub-Signature-256")
    assert route(listener, "github").health.rejections["signature"] >= 3


def test_github_form_encoded_delivery_reads_its_payload_field(listener: Listener) -> None:
    body = urlencode({"payload": json.dumps({"action": "closed", "number": 8})}).encode()
    headers = github_headers(body, delivery="form-1", **{"Content-Type": "application/x-www-form-urlencoded"})
    env = stored(listener, post(listener, "github", body, headers))
    assert env["data"] == {"action": "closed", "number": 8} and env["id"] == "form-1"


def test_refusals_of_size_type_json_and_templates_store_nothing(listener: Listener) -> None:
    before = listener.last_seq()
    big = json.dumps({"pad": "x" * 2000}).encode()
    r = post(listener, "ci", big, {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}, "?job=a")
    refused(listener, r, before, 413, "too_large", "over the 1024-byte limit")
    body = json.dumps({"action": "opened"}).encode()
    r = post(listener, "github", body, {**github_headers(body), "Content-Type": "text/plain"})
    refused(listener, r, before, 415, "content_type", "'text/plain' is not accepted here")
    r = post(listener, "github", b"[1, 2]", github_headers(b"[1, 2]"))
    refused(listener, r, before, 400, "json", "must be a JSON object")
    no_event = {k: v for k, v in github_headers(body).items() if k != "X-GitHub-Event"}
    r = post(listener, "github", body, no_event)
    refused(listener, r, before, 400, "template", "no X-GitHub-Event header, which {header:X-GitHub-Event} needs")
    r = post(listener, "github", body, github_headers(body, event="pull request"))
    refused(listener, r, before, 400, "subject", "bad subject 'github.pull request'")
    r = post(listener, "ci", b"{}", {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
    refused(listener, r, before, 400, "template", "no ?job= parameter")
    r = listener.request("GET", HOOKS["github"].path)
    refused(listener, r, before, 405, "method", "GET is not allowed on /hooks/github (allowed: POST)")
    assert r.headers["allow"] == "POST"
    ci = route(listener, "ci").health
    assert ci.rejections["too_large"] >= 1 and ci.rejections["template"] >= 1
    assert ci.last_error is not None and "?job=" in ci.last_error


def test_slack_documented_base_string_is_accepted_as_a_slash_command(listener: Listener) -> None:
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": str(SLACK_TIMESTAMP),
        "X-Slack-Signature": SLACK_SIGNATURE,
    }
    env = stored(listener, post(listener, "slackcmd", SLACK_BODY, headers))
    assert env["subject"] == "slack.command"
    assert env["data"]["command"] == "/webhook-collect" and env["data"]["user_name"] == "roadrunner"
    assert env["id"] == hashlib.sha256(SLACK_BODY).hexdigest()  # no event_id: the body's hash
    before = listener.last_seq()
    tampered = SLACK_BODY.replace(b"roadrunner", b"coyote")
    refused(listener, post(listener, "slackcmd", tampered, headers), before, 401, "signature", "does not match")


def test_slack_events_url_verification_staleness_and_redelivery(listener: Listener) -> None:
    before = listener.last_seq()
    challenge = json.dumps(
        {"type": "url_verification", "token": "t", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}
    )
    r = post(listener, "slack", challenge.encode(), slack_headers(challenge.encode()))
    assert r.status == 200 and r.json == {"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}
    assert listener.last_seq() == before
    callback = json.dumps(
        {"type": "event_callback", "event_id": "Ev08MFMKH6", "event": {"type": "app_mention", "text": "<@U1> deploy?"}}
    ).encode()
    env = stored(listener, post(listener, "slack", callback, slack_headers(callback)))
    assert env["id"] == "Ev08MFMKH6" and env["subject"] == "slack.app_mention"
    # Slack retries with the same event_id (and X-Slack-Retry-Num): stored once.
    before = listener.last_seq()
    again = post(listener, "slack", callback, {**slack_headers(callback), "X-Slack-Retry-Num": "1"})
    assert again.status == 200 and again.json["duplicate"] is True and listener.last_seq() == before
    # The same request captured and replayed six minutes later is stale.
    old = slack_headers(callback, at=time.time() - 360)
    refused(listener, post(listener, "slack", callback, old), before, 401, "stale", "over 300s")
    future = slack_headers(callback, at=time.time() + 360)
    refused(listener, post(listener, "slack", callback, future), before, 401, "stale", "clock")
    assert route(listener, "slack").health.rejections["stale"] >= 2


def test_slack_button_press_becomes_an_answer_event(listener: Listener) -> None:
    payload = {
        "type": "block_actions",
        "user": {"id": "U2CERLKJA", "username": "roadrunner"},
        "channel": {"id": "C0123", "name": "alerts"},
        "container": {"type": "message", "message_ts": "1700000000.000100", "channel_id": "C0123"},
        "trigger_id": "398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c",
        "actions": [{"action_id": "snooze", "type": "button", "value": "snooze:h_3f9a0c"}],
    }
    body = urlencode({"payload": json.dumps(payload)}).encode()
    r = post(listener, "slack", body, slack_headers(body, content_type="application/x-www-form-urlencoded"))
    assert r.status == 200 and r.body == b""
    _subject, env = listener.stored(listener.last_seq())
    assert env["subject"] == "chat.answer" and env["source"] == "slack"
    assert env["data"] == {
        "action": "snooze",
        "target": "h_3f9a0c",
        "duration": None,
        "by": "slack:U2CERLKJA",
        "chat": "C0123",
        "message": "1700000000.000100",
        "source": "slack",
    }


def test_hmac_and_token_routes(listener: Listener) -> None:
    body = json.dumps({"topic": "orders", "id": 5}).encode()
    sig = hmac.new(HMAC_SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json", "X-Shop-Hmac": sig, "X-Shop-Id": "991"}
    env = stored(listener, post(listener, "shop", body, headers))
    assert env["id"] == "shop-991" and env["subject"] == "shop.orders"
    before = listener.last_seq()
    refused(listener, post(listener, "shop", body, {**headers, "X-Shop-Hmac": "0" * 64}), before, 401, "signature", "")
    ok = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    assert stored(listener, post(listener, "ci", b'{"n": 1}', ok, "?job=build"))["subject"] == "ci.build"
    by_query = post(listener, "ci", b'{"n": 2}', {"Content-Type": "application/json"}, f"?job=test&token={TOKEN}")
    assert stored(listener, by_query)["subject"] == "ci.test"
    before = listener.last_seq()
    wrong = {"Content-Type": "application/json", "Authorization": "Bearer nope"}
    refused(listener, post(listener, "ci", b"{}", wrong, "?job=a"), before, 401, "token", "wrong token")


def test_unsigned_loopback_route_reads_only_json(listener: Listener) -> None:
    env = stored(listener, post(listener, "local", b'{"up": true}', {"Content-Type": "application/json"}))
    assert env["subject"] == "local.ping"
    before = listener.last_seq()
    form = {"Content-Type": "application/x-www-form-urlencoded"}  # a web page could post this cross-site
    refused(listener, post(listener, "local", b"up=1", form), before, 415, "content_type", "send application/json")
    page = {"Content-Type": "application/json", "Origin": "https://evil.example"}
    refused(listener, post(listener, "local", b"{}", page), before, 403, "origin", "cross-site")


def test_refusals_are_logged_without_secrets(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lst = start_listener(tmp_path)  # its own: the listener logs the first refusal of each reason
    try:
        post(lst, "ci", b"{}", {"Content-Type": "application/json", "Authorization": "Bearer guess-1"}, "?job=a")
        post(lst, "ci", b"{}", {"Content-Type": "application/json"}, "?job=a&token=guess-2")
        post(lst, "shop", b"{}", {"Content-Type": "application/json", "X-Shop-Hmac": "f" * 64})
        signed_wrong = github_headers(b"{}", **{"X-Hub-Signature-256": "sha256=" + "e" * 64})
        post(lst, "github", b"{}", signed_wrong)
        text = caplog.text
        assert "source 'ci': wrong token" in text and "source 'shop'" in text
        assert "source 'github': X-Hub-Signature-256 does not match" in text
        for secret in (TOKEN, HMAC_SECRET, "guess-1", "guess-2", "f" * 64, "e" * 64, GITHUB_SECRET.decode()):
            assert secret not in text
        for name in HOOKS:
            error = route(lst, name).health.last_error or ""
            assert "guess" not in error and TOKEN not in error and "e" * 64 not in error
    finally:
        lst.stop()


def test_unknown_path_lists_the_webhooks(listener: Listener, tmp_path: Path) -> None:
    r = listener.request("POST", "/hooks/nothing", b"{}", {"Content-Type": "application/json"})
    assert r.status == 404 and "POST /hooks/github" in r.error


def press(user: str, channel: str, value: str = "ack:h_77aa") -> bytes:
    payload = {
        "type": "block_actions",
        "user": {"id": user},
        "channel": {"id": channel},
        "container": {"type": "message", "message_ts": "1700000000.000200", "channel_id": channel},
        "actions": [{"type": "button", "value": value}],
    }
    return urlencode({"payload": json.dumps(payload)}).encode()


def test_slack_presses_only_from_the_allowed_users_and_channels(listener: Listener) -> None:
    form = "application/x-www-form-urlencoded"
    before = listener.last_seq()
    for body in (press("U0STRANGER", "C0123"), press("U2CERLKJA", "C0OTHER")):
        r = post(listener, "slackteam", body, slack_headers(body, content_type=form))
        assert r.status == 200 and r.body == b""  # Slack shows any other answer as a failure
    assert listener.last_seq() == before, "a press from outside the allow-lists was published"
    health = route(listener, "slackteam").health
    assert health.rejections == {"sender": 1, "channel": 1}
    assert health.last_error is not None and "'C0OTHER', not in `channels`" in health.last_error
    allowed = press("U2CERLKJA", "C0123")
    assert post(listener, "slackteam", allowed, slack_headers(allowed, content_type=form)).status == 200
    _subject, env = listener.stored(listener.last_seq())
    assert env["subject"] == "chat.answer" and env["data"]["by"] == "slack:U2CERLKJA"


def test_without_nats_a_delivery_is_refused_503_so_the_sender_redelivers(tmp_path: Path) -> None:
    lst = start_listener(tmp_path)
    try:
        assert lst.nats is not None
        nats = lst.nats
        lst.call(nats.stop())
        body = json.dumps({"action": "opened", "number": 9}).encode()
        r = post(lst, "github", body, github_headers(body, delivery="while-down"))
        assert r.status == 503 and "source 'github'" in r.error
        assert route(lst, "github").health.rejections["nats"] == 1
        lst.call(nats.start())
        again = post(lst, "github", body, github_headers(body, delivery="while-down"))  # GitHub's redelivery
        assert stored(lst, again)["id"] == "while-down"
        # The client may have sent the first one when it reconnected (then this is the duplicate):
        # either way the delivery is in the stream once.
        ids = [lst.stored(seq)[1]["id"] for seq in range(1, lst.last_seq() + 1)]
        assert ids.count("while-down") == 1
    finally:
        lst.stop()
