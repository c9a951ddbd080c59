"""Webhook signature checks and templates, against the providers' published examples."""

from __future__ import annotations

import re
from typing import Any

import pytest
from multidict import CIMultiDict
from support.webhooks import (
    GITHUB_BODY,
    GITHUB_SECRET,
    GITHUB_SIGNATURE,
    SLACK_BODY,
    SLACK_SECRET,
    SLACK_SIGNATURE,
    SLACK_TIMESTAMP,
)

from watchd.errors import EventRejected, RequestRefused, WatchdError
from watchd.limits import MAX_DATA_DEPTH
from watchd.model import parse_data
from watchd.sources.settings import WebhookSettings
from watchd.sources.template import RequestFields, TemplateError, TemplateMissing, compile_template
from watchd.sources.verify import Verifier
from watchd.sources.webhook import build_routes
from watchd.sources.webhook_check import parse_size, webhook_problems


def reason(verifier: Verifier, headers: dict[str, str], body: bytes, now_s: float = 0.0, **query: str) -> str | None:
    try:
        verifier.check(CIMultiDict(headers), query, body, now_s)
    except RequestRefused as exc:
        assert exc.status == 401
        return exc.reason
    return None


def test_github_documented_example_passes_and_any_change_fails() -> None:
    github = Verifier("github", GITHUB_SECRET)
    assert reason(github, {"X-Hub-Signature-256": GITHUB_SIGNATURE}, GITHUB_BODY) is None
    assert reason(github, {"x-hub-signature-256": GITHUB_SIGNATURE}, GITHUB_BODY) is None  # any case
    assert reason(github, {"X-Hub-Signature-256": GITHUB_SIGNATURE}, b"Hello, World?") == "signature"
    assert reason(github, {"X-Hub-Signature-256": GITHUB_SIGNATURE.upper()}, GITHUB_BODY) == "signature"
    assert reason(github, {"X-Hub-Signature-256": GITHUB_SIGNATURE[:-1]}, GITHUB_BODY) == "signature"
    assert reason(github, {}, GITHUB_BODY) == "signature"
    assert reason(Verifier("github", b"another secret"), {"X-Hub-Signature-256": GITHUB_SIGNATURE}, GITHUB_BODY)


def test_slack_documented_base_string_passes_within_five_minutes() -> None:
    slack = Verifier("slack", SLACK_SECRET)
    headers = {"X-Slack-Request-Timestamp": str(SLACK_TIMESTAMP), "X-Slack-Signature": SLACK_SIGNATURE}
    assert reason(slack, headers, SLACK_BODY, now_s=SLACK_TIMESTAMP + 299) is None
    assert reason(slack, headers, SLACK_BODY, now_s=SLACK_TIMESTAMP - 299) is None  # a clock a little behind
    assert reason(slack, headers, SLACK_BODY, now_s=SLACK_TIMESTAMP + 301) == "stale"
    assert reason(slack, headers, SLACK_BODY, now_s=SLACK_TIMESTAMP - 301) == "stale"
    assert reason(slack, headers, SLACK_BODY.replace(b"foobar", b"foobaz"), now_s=SLACK_TIMESTAMP) == "signature"
    # The timestamp is part of what is signed: a fresh one on an old signature does not pass.
    moved = {**headers, "X-Slack-Request-Timestamp": str(SLACK_TIMESTAMP + 1)}
    assert reason(slack, moved, SLACK_BODY, now_s=SLACK_TIMESTAMP) == "signature"
    assert reason(slack, {"X-Slack-Signature": SLACK_SIGNATURE}, SLACK_BODY, now_s=SLACK_TIMESTAMP) == "signature"
    bad_stamp = {**headers, "X-Slack-Request-Timestamp": "soon"}
    assert reason(slack, bad_stamp, SLACK_BODY, now_s=SLACK_TIMESTAMP) == "signature"


def test_generic_hmac_uses_its_header_and_prefix() -> None:
    plain = Verifier("hmac-sha256", GITHUB_SECRET)
    hexdigest = GITHUB_SIGNATURE.removeprefix("sha256=")
    assert reason(plain, {"X-Signature": GITHUB_SIGNATURE}, GITHUB_BODY) is None
    assert reason(plain, {"X-Signature": hexdigest}, GITHUB_BODY) == "signature"
    custom = Verifier("hmac-sha256", GITHUB_SECRET, header="X-Shop-Hmac", prefix="")
    assert reason(custom, {"X-Shop-Hmac": hexdigest}, GITHUB_BODY) is None
    assert reason(custom, {"X-Signature": GITHUB_SIGNATURE}, GITHUB_BODY) == "signature"


def test_token_as_bearer_or_query() -> None:
    token = Verifier("token", b"s3cret")
    assert reason(token, {"Authorization": "Bearer s3cret"}, b"") is None
    assert reason(token, {}, b"", token="s3cret") is None
    assert reason(token, {"Authorization": "Bearer s3cre"}, b"") == "token"
    assert reason(token, {"Authorization": "Basic s3cret"}, b"") == "token"
    assert reason(token, {}, b"", token="S3CRET") == "token"
    assert reason(token, {}, b"") == "token"


def test_messages_never_carry_the_secret_or_the_signature() -> None:
    for verifier, headers in [
        (Verifier("github", GITHUB_SECRET), {"X-Hub-Signature-256": "sha256=" + "0" * 64}),
        (Verifier("token", b"s3cret"), {"Authorization": "Bearer s3cre"}),
    ]:
        with pytest.raises(RequestRefused) as caught:
            verifier.check(CIMultiDict(headers), {}, GITHUB_BODY, 0.0)
        assert "s3cre" not in caught.value.message and "0" * 16 not in caught.value.message
        assert "Secret" not in caught.value.message


def fields(headers: dict[str, str] | None = None, body: Any = None, **query: str) -> RequestFields:
    return RequestFields(CIMultiDict(headers or {}), query, body)


def test_template_fields_from_headers_json_and_query() -> None:
    t = compile_template("github.{header:X-GitHub-Event}.{json:pull_request.number}.{query:env}")
    got = t.render(fields({"x-github-event": "pull_request"}, {"pull_request": {"number": 7}}, env="prod"))
    assert got == "github.pull_request.7.prod"
    assert compile_template("a.{json:items.1.name}").render(fields(body={"items": [{}, {"name": "b"}]})) == "a.b"
    assert compile_template("flag.{json:on}").render(fields(body={"on": True})) == "flag.true"
    assert compile_template("plain.subject").render(fields()) == "plain.subject"


@pytest.mark.parametrize(
    ("template", "request_fields", "says"),
    [
        ("gh.{header:X-GitHub-Event}", fields(), "no X-GitHub-Event header"),
        ("gh.{query:env}", fields(), "no ?env= parameter"),
        ("gh.{json:a.b}", fields(body={"a": {}}), "no a.b"),
        ("gh.{json:a.b}", fields(body={"a": 1}), "no a.b"),
        ("gh.{json:a}", fields(body={"a": {"b": 1}}), "is an object"),
        ("gh.{json:a}", fields(body={"a": None}), "is null"),
        ("gh.{json:a}", fields(body=None), "not a JSON object"),
    ],
)
def test_a_missing_field_says_which(template: str, request_fields: RequestFields, says: str) -> None:
    with pytest.raises(TemplateMissing, match=re.escape(says)) as caught:
        compile_template(template).render(request_fields)
    assert template[template.index("{") :] in caught.value.message  # the field, as written


@pytest.mark.parametrize(
    ("template", "says"),
    [
        ("gh.{headers:X}", "unknown template field"),
        ("gh.{X-GitHub-Event}", "unknown template field"),
        ("gh.{header:}", "names nothing"),
        ("gh.{header:X GitHub}", "not a header name"),
        ("gh.{json:a..b}", "names joined by dots"),
        ("gh.{header:X", "unbalanced brace"),
        ("gh.}", "unbalanced brace"),
    ],
)
def test_bad_templates_are_refused_when_compiled(template: str, says: str) -> None:
    with pytest.raises(TemplateError, match=says):
        compile_template(template)


def problems(listen_host: str = "127.0.0.1", **settings: Any) -> dict[str, str]:
    table = {"path": "/hooks/github", "subject": "github.{header:X-GitHub-Event}", "verify": "github"}
    table["secret"] = "env:GITHUB_WEBHOOK_SECRET"
    return dict(webhook_problems("github", WebhookSettings(**{**table, **settings}), listen_host))


def test_settings_that_can_run_have_no_problems() -> None:
    assert problems() == {}
    assert problems(verify="none", secret=None, path="/hooks/local") == {}
    assert problems(verify="hmac-sha256", header="X-Shop-Hmac", prefix="", max_body="1MiB") == {}
    assert problems(listen_host="0.0.0.0", verify="token") == {}


@pytest.mark.parametrize(
    ("settings", "key", "says"),
    [
        ({"path": "hooks/github"}, "path", "starts with /"),
        ({"path": "/events/github"}, "path", "the listener's own"),
        ({"path": "/healthz"}, "path", "the listener's own"),
        ({"subject": "github.{headers:X}"}, "subject", "unknown template field"),
        ({"subject": "github..{header:X}"}, "subject", "cannot make a subject"),
        ({"subject": "watchd.{header:X}"}, "subject", "watchd's own"),
        ({"id": "{json:}"}, "id", "names nothing"),
        ({"secret": None}, "secret", 'verify = "github" needs a secret'),
        ({"header": "X-Sig"}, "header", 'hmac-sha256" only'),
        ({"senders": ["U1"]}, "senders", 'for verify = "slack" only'),
        ({"verify": "hmac-sha256", "header": "X Sig"}, "header", "not a header name"),
        ({"max_body": "1GB"}, "max_body", "bad size"),
        ({"max_body": "5MB"}, "max_body", "from 1 byte"),
    ],
)
def test_each_bad_setting_is_named(settings: dict[str, Any], key: str, says: str) -> None:
    found = problems(**settings)
    assert key in found and says in found[key], found


def test_unsigned_webhook_is_refused_on_a_listener_others_can_reach() -> None:
    for host in ("0.0.0.0", "192.168.1.20", "::"):
        assert "not loopback" in problems(listen_host=host, verify="none", secret=None)["verify"]
    assert problems(listen_host="::1", verify="none", secret=None) == {}


def test_sizes() -> None:
    assert [parse_size(v) for v in (512, "512", "2KiB", "1MiB", "500kB", "1 MB")] == [
        512,
        512,
        2048,
        1048576,
        500_000,
        1_000_000,
    ]


def test_parsed_bodies_are_held_to_the_depth_limit_exactly() -> None:
    """A body is walked only when its brackets could pass the limit: then exactly to it, on any branch."""

    def nested(levels: int) -> str:  # the object itself is level 1; the deep branch comes last
        inner = "1"
        for i in range(levels - 1):
            inner = f"[{inner}]" if i % 2 else f'{{"k": {inner}}}'
        return '{"wide": [' + ", ".join(["{}"] * 80) + '], "deep": ' + inner + "}"

    assert parse_data(nested(MAX_DATA_DEPTH).encode())
    assert parse_data(nested(MAX_DATA_DEPTH))
    for text in (nested(MAX_DATA_DEPTH + 1), nested(MAX_DATA_DEPTH + 1).encode()):
        with pytest.raises(EventRejected, match="nested deeper than 64 levels"):
            parse_data(text)


def test_building_routes_refuses_what_validate_refuses() -> None:
    unsigned = {"site": WebhookSettings(path="/hooks/site", subject="site.hit")}
    routes = build_routes(unsigned, listen_host="127.0.0.1", default_max_body=1024, clock=lambda: 0.0)
    assert list(routes) == ["/hooks/site"] and routes["/hooks/site"].max_body == 1024
    with pytest.raises(
        WatchdError, match=r'\[source.site\] verify: verify = "none" on a listener that is not loopback'
    ):
        build_routes(unsigned, listen_host="0.0.0.0", default_max_body=1024, clock=lambda: 0.0)
    unset = {"gh": WebhookSettings(path="/hooks/gh", subject="gh.x", verify="github", secret="env:WATCHD_TEST_UNSET_9")}
    with pytest.raises(WatchdError, match=r"\[source.gh\] secret: env:WATCHD_TEST_UNSET_9 is not set"):
        build_routes(unset, listen_host="127.0.0.1", default_max_body=1024, clock=lambda: 0.0)
