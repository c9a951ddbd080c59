"""Webhook signature checks and templates, against the providers' published examples."""

from __future__ import annotations

import re
from typing import Any

import pytest
from multidict import CIMultiDict

from watchd.errors import RequestRefused
from watchd.sources.template import RequestFields, TemplateError, TemplateMissing, compile_template
from watchd.sources.verify import Verifier

# GitHub, "Validating webhook deliveries": this secret and payload give this signature.
GITHUB_SECRET = b"It's a Secret to Everybody"
GITHUB_BODY = b"Hello, World!"
GITHUB_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"

# Slack, "Verifying requests from Slack": the v0 base string example.
SLACK_SECRET = b"8f742231b10e8888abcd99yyyzzz85a5"
SLACK_TIMESTAMP = 1531420618
SLACK_BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
    b"&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
    b"&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
    b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
SLACK_SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"


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
