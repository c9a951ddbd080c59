"""Hostile requests at the HTTP listener: a real aiohttp server on 127.0.0.1 and a real nats-server.
Nothing a request carries may close the NATS connection, forge watchd's own events, come from a web
page, or end in a 500; every refusal is JSON, counted per reason and logged at a rate limit."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.ingress_harness import Listener, Response

from watchd.ingress import LOG_EVERY_S, Ingress

TOKEN = "s3cret-ingress-token"
PROXY_NAME = "watch.example.org"


@pytest.fixture(scope="module")
def listener(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Listener]:
    lst = Listener(tmp_path_factory.mktemp("ingress"), allowed_hosts=(PROXY_NAME,)).start()
    try:
        yield lst
    finally:
        lst.stop()


@pytest.fixture(scope="module")
def with_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Listener]:
    lst = Listener(tmp_path_factory.mktemp("ingress-token"), token=TOKEN).start()
    try:
        yield lst
    finally:
        lst.stop()


@pytest.fixture(autouse=True)
def no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Whatever a request carries, the server logs no error and no traceback."""
    caplog.set_level(logging.INFO)
    yield
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


def refused(r: Response, status: int, fragment: str) -> None:
    assert r.status == status, (r.status, r.body[:300])
    assert r.headers["content-type"].startswith("application/json"), r.headers
    assert fragment in r.error, r.error


def nothing_stored(lst: Listener, before: int) -> None:
    assert lst.last_seq() == before, "a refused request published an event"


def accepted(lst: Listener, r: Response) -> dict[str, object]:
    """The envelope stored for a 202."""
    assert r.status == 202, (r.status, r.body[:300])
    subject, envelope = lst.stored(r.json["seq"])
    assert subject == "watchd.events." + envelope["subject"] and envelope["id"] == r.json["id"]
    envelope.setdefault("data", {})  # an empty data object is left out of the stored JSON
    return envelope


# ---- subjects can no longer close the NATS connection ---------------------------------------------------------------


@pytest.mark.parametrize("length", [256, 4100, 6000, 8100])
def test_an_overlong_subject_is_refused_and_nats_stays_connected(listener: Listener, length: int) -> None:
    before = listener.last_seq()
    refused(listener.post_json("a" * length, {}), 400, "over 255 characters")
    refused(listener.post_json(".".join(["tok"] * (length // 4 + 1)), {}), 400, "over 255 characters")
    nothing_stored(listener, before)
    assert listener.connected
    assert accepted(listener, listener.post_json("after.long.subject", {"ok": True}))["data"] == {"ok": True}


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ("/events/a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q", "over 16 dot-separated tokens"),
        ("/events/hook.x%0A", "bad subject 'hook.x\\n'"),  # `$` in a regex passes a trailing newline
        ("/events/hook.x%0D%0APUB%20x%201", "bad subject"),
        ("/events/hook.*", "bad subject"),
        ("/events/hook.%3E", "bad subject"),
        ("/events/h%C3%BCk.x", "bad subject"),
        ("/events/hook%00x", "bad subject"),
    ],
)
def test_subjects_that_could_break_the_nats_protocol_are_refused(
    listener: Listener, target: str, fragment: str
) -> None:
    before = listener.last_seq()
    refused(listener.request("POST", target, b"{}", {"Content-Type": "application/json"}), 400, fragment)
    nothing_stored(listener, before)
    assert listener.connected


def test_a_request_line_over_aiohttps_limit_is_a_json_400(listener: Listener) -> None:
    before = listener.last_seq()
    refused(listener.post_json("a" * 9000, {}), 400, "malformed HTTP request")
    nothing_stored(listener, before)
    assert listener.connected and listener.post_json("after.huge.line", {}).status == 202


# ---- watchd's own subjects are reserved ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "subject",
    [
        "watchd.job.canary.failed",
        "watchd.job.backup.done",
        "watchd.config.reloaded",
        "WATCHD.job.backup.done",
        "watchd",
    ],
)
def test_watchd_events_cannot_be_forged_over_http(listener: Listener, subject: str) -> None:
    before = listener.last_seq()
    refused(listener.post_json(subject, {"summary": "all good"}), 400, "watchd's own (reserved)")
    refused(listener.request("GET", f"/ping/{subject}"), 400, "reserved")
    nothing_stored(listener, before)
    assert accepted(listener, listener.post_json("mywatchd.job.done", {}))["subject"] == "mywatchd.job.done"


# ---- cross-site requests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        ({"Content-Type": "text/plain"}, "is not application/json"),  # what a page's <form>/fetch may send freely
        ({"Content-Type": "application/x-www-form-urlencoded"}, "is not application/json"),
        ({"Content-Type": "multipart/form-data; boundary=x"}, "is not application/json"),
        ({}, "needs Content-Type: application/json"),
        ({"Content-Type": "application/json; charset=latin-1"}, "charset 'latin-1'"),
        ({"Content-Type": "application/json", "Content-Encoding": "gzip"}, "compressed bodies"),
    ],
)
def test_a_body_must_be_declared_json_when_there_is_no_token(
    listener: Listener, headers: dict[str, str], fragment: str
) -> None:
    before = listener.last_seq()
    refused(listener.request("POST", "/events/hook.form", b'{"a": 1}', headers), 415, fragment)
    refused(listener.request("POST", "/ping/hook.form", b'{"a": 1}', headers), 415, fragment)
    nothing_stored(listener, before)


def test_json_bodies_and_empty_bodies_are_accepted(listener: Listener) -> None:
    r = listener.request("POST", "/events/hook.ok", b'{"a": 1}', {"Content-Type": "application/json; charset=UTF-8"})
    assert accepted(listener, r)["data"] == {"a": 1}
    assert accepted(listener, listener.request("POST", "/events/hook.empty"))["data"] == {}


def test_a_verified_bearer_token_lets_any_content_type_through(with_token: Listener) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = with_token.request("POST", "/events/hook.curl", b'{"a": 1}', {"Content-Type": "text/plain", **auth})
    assert accepted(with_token, r)["data"] == {"a": 1}
    refused(with_token.request("POST", "/events/hook.curl", b'{"a": 1}', {"Content-Type": "text/plain"}), 401, "token")


@pytest.mark.parametrize("header", ["Bearer \udcff\udcfe", "Bearer t\u00f6ken", "\udc80", "Bearer " + "x" * 8000])
def test_a_token_that_is_not_ascii_or_not_utf8_is_a_401(with_token: Listener, header: str) -> None:
    before = with_token.last_seq()
    r = with_token.request("POST", "/events/hook.auth", b"{}", {"Authorization": header})  # raw bytes \xff\xfe
    refused(r, 401, "missing or wrong bearer token")
    nothing_stored(with_token, before)


@pytest.mark.parametrize(
    "host",
    ["evil.example", "evil.example:{port}", "127.0.0.1.nip.io:{port}", "attacker@127.0.0.1:{port}", "", "[::1"],
)
def test_a_host_that_does_not_name_the_listener_is_refused(listener: Listener, host: str) -> None:
    """DNS rebinding: a page at evil.example whose name now resolves to 127.0.0.1."""
    before = listener.last_seq()
    host = host.format(port=listener.port)
    r = listener.request("POST", "/events/hook.rebind", b"{}", {"Content-Type": "application/json"}, host=host)
    refused(r, 403, "does not name this listener")
    refused(listener.request("GET", "/ping/hook.rebind", host=host), 403, "allowed_hosts")
    refused(listener.request("GET", "/healthz", host=host), 403, "does not name this listener")
    nothing_stored(listener, before)


@pytest.mark.parametrize(
    "host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST.:{port}", "[::1]:{port}", "127.0.0.1", PROXY_NAME]
)
def test_loopback_names_and_allowed_hosts_are_accepted(listener: Listener, host: str) -> None:
    host = host.format(port=listener.port)
    r = listener.request("POST", "/events/hook.host", b"{}", {"Content-Type": "application/json"}, host=host)
    assert accepted(listener, r)["subject"] == "hook.host"


@pytest.mark.parametrize(
    "origin", ["http://evil.example", "null", "http://127.0.0.1:1", "https://127.0.0.1:{port}.evil.example", "file://"]
)
def test_an_origin_other_than_the_listeners_own_is_refused(listener: Listener, origin: str) -> None:
    before = listener.last_seq()
    headers = {"Content-Type": "application/json", "Origin": origin.format(port=listener.port)}
    refused(listener.request("POST", "/events/hook.cors", b"{}", headers), 403, "cross-site requests are refused")
    nothing_stored(listener, before)
    same = {"Content-Type": "application/json", "Origin": f"http://127.0.0.1:{listener.port}"}
    assert accepted(listener, listener.request("POST", "/events/hook.cors", b"{}", same))["subject"] == "hook.cors"


def test_a_cross_site_ping_from_a_page_is_refused(listener: Listener) -> None:
    """An <img src="http://127.0.0.1:8787/ping/…"> sends no Origin, but a browser says where it comes from."""
    before = listener.last_seq()
    for site in ("cross-site", "same-site"):
        refused(
            listener.request("GET", "/ping/heartbeat.laptop", headers={"Sec-Fetch-Site": site}), 403, "another site"
        )
    nothing_stored(listener, before)
    for site in ("same-origin", "none"):  # the listener's own page, or a URL typed in the address bar
        r = listener.request("GET", "/ping/heartbeat.laptop", headers={"Sec-Fetch-Site": site})
        assert accepted(listener, r)["subject"] == "heartbeat.laptop"


def test_ping_is_the_one_body_less_exception_and_head_stores_nothing(listener: Listener) -> None:
    got = accepted(listener, listener.request("GET", "/ping/heartbeat.nas"))
    posted = accepted(listener, listener.request("POST", "/ping/heartbeat.nas"))
    assert got["data"] == posted["data"] == {} and got["source"] == "http"
    before = listener.last_seq()
    assert listener.request("HEAD", "/ping/heartbeat.nas").status == 405  # (a HEAD answer has no body)
    nothing_stored(listener, before)


# ---- bodies are parsed strictly -------------------------------------------------------------------------------------


def nested(depth: int) -> bytes:
    return b'{"a": ' * (depth - 1) + b"{}" + b"}" * (depth - 1)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (nested(65), "nested deeper than 64 levels"),
        (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested deeper than 64 levels"),  # was a RecursionError
        (b'{"a": "\\ud800"}', "not valid JSON"),  # a lone surrogate: was a UnicodeEncodeError and a 500
        (b'{"a": "x\\udc00"}', "not valid JSON"),
        (b'{"a": NaN}', "not valid JSON"),  # was stored as null
        (b'{"a": Infinity}', "not valid JSON"),
        (b'{"a": -Infinity}', "not valid JSON"),
        (b'{"a": 1e400}', "not valid JSON"),  # was stored as null (inf)
        (b'{"a": 1' + b"0" * 5000 + b"}", "not valid JSON"),
        (b'{"a": "\xff\xfe"}', "not valid JSON"),  # invalid UTF-8
        (b'\xef\xbb\xbf{"a": 1}', "not valid JSON"),
        (b'{"a": 1} {"b": 2}', "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"null", "must be a JSON object"),
    ],
    ids=[
        "depth-65",
        "depth-100000",
        "lone-high-surrogate",
        "lone-low-surrogate",
        "nan",
        "infinity",
        "minus-infinity",
        "overflowing-float",
        "huge-int",
        "invalid-utf8",
        "bom",
        "trailing-data",
        "array",
        "null",
    ],
)
def test_bad_json_bodies_are_400_never_500(listener: Listener, body: bytes, fragment: str) -> None:
    before = listener.last_seq()
    refused(listener.request("POST", "/events/hook.json", body, {"Content-Type": "application/json"}), 400, fragment)
    nothing_stored(listener, before)


def test_data_at_the_depth_limit_and_unicode_are_stored_unchanged(listener: Listener) -> None:
    data = json.loads(nested(64))
    assert accepted(listener, listener.post_json("hook.deep", data))["data"] == data
    text = {"emoji": "\U0001f600", "escaped": "\u00fc", "big": 2**70, "small": -(2**63), "float": 1.5e300}
    assert accepted(listener, listener.post_json("hook.text", text))["data"] == text


# ---- event ids --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("k" * 129, "over 128 characters"),
        ("k" * 5000, "over 128 characters"),
        ("has space", "outside printable ASCII, or a space"),
        ("tab\there", "outside printable ASCII"),
        ("caf\u00e9", "outside printable ASCII"),
        ("seq-12", "watchd keeps for the ids it assigns"),
        (" ", "bad event id"),  # HTTP strips it to an empty value: refused, not replaced by a new id
    ],
)
def test_bad_idempotency_keys_are_refused(listener: Listener, key: str, fragment: str) -> None:
    before = listener.last_seq()
    refused(listener.post_json("hook.id", {}, {"Idempotency-Key": key}), 400, fragment)
    nothing_stored(listener, before)
    assert listener.connected


@pytest.mark.parametrize("query", ["%00", "a%0Db", "%01x", "x" * 200])
def test_bad_ids_in_the_query_are_refused(listener: Listener, query: str) -> None:
    before = listener.last_seq()
    r = listener.request("POST", f"/events/hook.id?id={query}", b"{}", {"Content-Type": "application/json"})
    refused(r, 400, "bad event id")
    nothing_stored(listener, before)


def test_a_good_id_is_the_events_id_and_stored_once(listener: Listener) -> None:
    key = "delivery-6f1c:2026/11/22_01"
    first = accepted(listener, listener.post_json("hook.idem", {"n": 1}, {"Idempotency-Key": key}))
    again = listener.post_json("hook.idem", {"n": 1}, {"Idempotency-Key": key})
    assert first["id"] == key and again.status == 202 and again.json["duplicate"] is True


# ---- every refusal is JSON, counted, and logged at a rate limit ----------------------------------------------------


def test_every_error_is_json_with_its_status_and_counted(with_token: Listener) -> None:
    ingress = with_token.ingress
    assert ingress is not None
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    before = dict(ingress.errors)
    cases = [
        (with_token.request("GET", "/nope", headers=auth), 404, "no endpoint at /nope", "not_found"),
        (with_token.request("PUT", "/events/x", b"{}", auth), 405, "PUT is not allowed", "method"),
        (with_token.request("DELETE", "/healthz", headers=auth), 405, "DELETE is not allowed", "method"),
        (with_token.request("POST", "/events/x", b"{}"), 401, "bearer token", "auth"),
        (with_token.request("POST", "/events/x", b"{}", auth, host="evil.example"), 403, "Host", "host"),
        (with_token.request("POST", "/events/bad..subject", b"{}", auth), 400, "bad subject", "subject"),
        (with_token.request("POST", "/events/watchd.job.x", b"{}", auth), 400, "reserved", "reserved"),
        (with_token.request("POST", "/events/x", b"{", auth), 400, "not valid JSON", "json"),
        (with_token.request("POST", "/events/x", b"{}", {**auth, "Idempotency-Key": "a b"}), 400, "bad event id", "id"),
        (with_token.request("POST", "/events/x", b"x" * 300_000, auth), 413, "byte limit", "too_large"),
        (
            with_token.request("POST", "/events/x", b"{}", {**auth, "Content-Encoding": "br"}),
            415,
            "compressed",
            "content_type",
        ),
        (with_token.request("GET\x00", "/healthz"), 400, "malformed HTTP request", "http"),
    ]
    for response, status, fragment, _reason in cases:
        refused(response, status, fragment)
    expected = {reason: sum(1 for c in cases if c[3] == reason) for _, _, _, reason in cases}
    assert {r: ingress.errors[r] - before.get(r, 0) for r in expected} == expected


def test_refusals_are_logged_once_a_minute_per_reason_without_the_token(
    with_token: Listener, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="watchd.http")
    wrong = [f"Bearer {TOKEN}-{n}" for n in range(20)]
    for header in wrong:
        refused(with_token.request("POST", "/events/x", b"{}", {"Authorization": header}), 401, "bearer token")
    text = caplog.text
    assert TOKEN not in text and "Bearer" not in text
    assert all("\n" not in r.getMessage() and r.exc_info is None for r in caplog.records)


def test_the_log_rate_limit_reports_what_it_held_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]

    async def no_publish(event: object) -> object:
        raise AssertionError("nothing is published here")

    ingress = Ingress(
        publish=no_publish,  # type: ignore[arg-type]
        health=dict,
        max_body=1024,
        max_event_bytes=lambda: 1024,
        clock=lambda: now[0],
    )
    caplog.set_level(logging.WARNING, logger="watchd.http")
    for _ in range(5):
        ingress.refused("auth", "401 missing or wrong bearer token")
    ingress.refused("host", "403 Host 'x' does not name this listener")
    now[0] += LOG_EVERY_S
    ingress.refused("auth", "401 missing or wrong bearer token")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "HTTP refused (auth): 401 missing or wrong bearer token",
        "HTTP refused (host): 403 Host 'x' does not name this listener",
        "HTTP refused (auth): 401 missing or wrong bearer token (and 4 more like it since the last report)",
    ]
    assert ingress.errors == {"auth": 6, "host": 1}
