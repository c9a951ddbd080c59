"""Fuzzing the real HTTP listener (aiohttp on 127.0.0.1, a real nats-server behind it) with random
subjects, ids, bodies, headers and content types. Whatever arrives: never a 5xx (NATS is up, so not
even a 503), never an error or traceback in the log, the NATS connection stays up, every refusal is
a JSON error, and every 202 is really stored, as sent.

The CI run is a few hundred examples; for a long run:
    WATCHD_FUZZ_EXAMPLES=20000 pytest tests/test_ingress_fuzz.py
"""

from __future__ import annotations

import json
import logging
import os
import string
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, unquote

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.ingress_harness import Listener, Response, build_request, exchange

from watchd.model import id_problem

EXAMPLES = int(os.environ.get("WATCHD_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

ERROR_STATUSES = {400, 401, 403, 404, 405, 408, 413, 415}


class Errors(logging.Handler):
    """Every error (or traceback) any logger emits while the listener runs."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


TOKEN = "fuzz-token"


@pytest.fixture(scope="module")
def listeners(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Listener, Listener, Errors]]:
    """One listener without a token (loopback default) and one with: both rule sets are fuzzed."""
    errors = Errors()
    root = logging.getLogger()
    root.addHandler(errors)
    open_ = Listener(tmp_path_factory.mktemp("fuzz")).start()
    with_token = Listener(tmp_path_factory.mktemp("fuzz-token"), token=TOKEN).start()
    try:
        yield open_, with_token, errors
    finally:
        open_.stop()
        with_token.stop()
        root.removeHandler(errors)


# ---- strategies ------------------------------------------------------------------------------------------------

TOKEN_CHARS = string.ascii_letters + string.digits + "_-"
token = st.text(TOKEN_CHARS, min_size=1, max_size=12)
good_subject = st.lists(token, min_size=1, max_size=20).map(".".join)
subject = st.one_of(
    good_subject,
    st.lists(st.one_of(token, st.sampled_from(["*", ">", "", "watchd", "WATCHD", "é", "\n", " "])), max_size=20).map(
        ".".join
    ),
    st.text(max_size=40),
    st.integers(200, 9000).map(lambda n: "a" * n),
    st.integers(10, 2000).map(lambda n: ".".join(["t"] * n)),
)
# Header bytes that are not UTF-8: aiohttp hands them on as surrogate escapes.
raw_header_text = st.binary(max_size=20).map(lambda b: b.decode("utf-8", "surrogateescape"))


event_id = st.one_of(
    st.none(),
    st.text(string.printable, max_size=40),
    st.text(max_size=20),
    st.integers(100, 6000).map(lambda n: "k" * n),
    raw_header_text,
    st.sampled_from(["", "seq-1", "a b", "ok-id-1", "\x00", "x\r\nX-Injected: 1"]),
)

json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20,
)


def nest(depth: int) -> bytes:
    return b'{"a": ' * depth + b"1" + b"}" * depth


body = st.one_of(
    st.just(b""),
    st.dictionaries(st.text(max_size=8), json_value, max_size=5).map(lambda d: json.dumps(d).encode()),  # NaN too
    json_value.map(lambda v: json.dumps(v).encode()),
    st.integers(1, 3000).map(nest),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
    st.binary(max_size=64),
    st.sampled_from(
        [b'{"a": "\\ud800"}', b'{"a": "\\udfff x"}', b'{"a": 1e400}', b'{"a": 1' + b"0" * 400 + b"}", b'{"a": "\xff"}']
    ),
    st.text(max_size=30).map(lambda t: t.encode("utf-8", "surrogatepass")),
)
content_type = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "application/json; charset=latin-1",
            "APPLICATION/JSON",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/json\x00",
        ]
    ),
    st.text(max_size=20),
)
extra_headers = st.dictionaries(
    st.sampled_from(["Host", "Origin", "Sec-Fetch-Site", "Content-Encoding", "Authorization", "X-Anything"]),
    st.one_of(
        st.sampled_from(
            ["evil.example", "null", "http://evil.example", "cross-site", "gzip", "Bearer x", "localhost", "[::1]"]
        ),
        st.text(string.printable, max_size=30),
        raw_header_text,
    ),
    max_size=3,
)
authorization = st.one_of(
    st.none(),
    st.just(f"Bearer {TOKEN}"),
    st.sampled_from([f"Bearer {TOKEN}x", "Bearer", "bearer " + TOKEN, f"Bearer  {TOKEN}"]),
    raw_header_text.map(lambda t: "Bearer " + t),
    st.text(max_size=20),
)


@st.composite
def well_formed(draw: st.DrawFn) -> tuple[str, str, bytes, dict[str, str]]:
    """A request a real client would send, with random subject, id and data: the 202 path."""
    data = draw(st.dictionaries(st.text(max_size=8), json_value, max_size=5))
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    ident = draw(st.none() | st.text(string.ascii_letters + string.digits + "-_:.", min_size=1, max_size=40))
    if ident is not None:
        headers["Idempotency-Key"] = ident
    return "POST", f"/events/{draw(good_subject)}", json.dumps(data).encode(), headers


@st.composite
def anything(draw: st.DrawFn) -> tuple[str, str, bytes, dict[str, str]]:
    method = draw(st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "HEAD"]))
    route = draw(st.sampled_from(["events", "events", "ping"]))
    subj = draw(subject)
    path = f"/{route}/{quote(subj, safe='.') if draw(st.booleans()) else subj}"
    ident = draw(event_id)
    headers: dict[str, str] = {}
    ctype = draw(content_type)
    if ctype is not None:
        headers["Content-Type"] = ctype
    if ident is not None:
        if draw(st.booleans()):
            headers["Idempotency-Key"] = ident
        else:
            path += "?id=" + quote(ident.encode("utf-8", "surrogateescape"), safe="")
    headers.update(draw(extra_headers))
    auth = draw(authorization)
    if auth is not None:
        headers["Authorization"] = auth
    return method, path, draw(body), headers


requests = well_formed() | anything()


def _stored_as_sent(lst: Listener, r: Response, path: str, sent: bytes, headers: dict[str, str]) -> None:
    reply = r.json
    nats_subject, envelope = lst.stored(reply["seq"])
    assert nats_subject == "watchd.events." + envelope["subject"]
    assert envelope["id"] == reply["id"] and id_problem(envelope["id"]) is None
    if headers.get("Idempotency-Key"):
        assert envelope["id"] == headers["Idempotency-Key"]
    if not reply["duplicate"]:  # a re-sent id is stored once: what is stored is the first request's
        assert envelope["subject"] == unquote(path.split("?")[0].split("/", 2)[2])
        assert envelope.get("data", {}) == (msgspec.json.decode(sent) if sent.strip() else {})


@FUZZ
@given(req=requests, use_token=st.booleans())
def test_no_request_makes_the_listener_fail_or_lie(
    listeners: tuple[Listener, Listener, Errors], req: Any, use_token: bool
) -> None:
    open_, with_token, errors = listeners
    lst = with_token if use_token else open_
    method, path, sent, headers = req
    host = headers.pop("Host", lst.host)
    # A CR or LF in a header value ends the header early: the bytes then say something else than
    # the request drawn here, so only the invariants that hold for any bytes are checked.
    framed = not any(c in v for v in (*headers.values(), host) for c in "\r\n")
    try:
        data = build_request(method, path, sent, headers, host=host)
    except UnicodeEncodeError:
        data, framed = build_request(method, path.encode("utf-8", "replace"), sent, headers, host=host), False
    try:
        r = exchange(lst.port, data)
    except ConnectionResetError:
        r = None  # aiohttp may close on a request it cannot parse before reading it all
    if r is not None:
        assert r.status < 500, (r.status, r.body[:300])
        if r.status == 202:
            if framed:
                _stored_as_sent(lst, r, path, sent, headers)
        else:
            assert r.status in ERROR_STATUSES, (r.status, r.body[:300])
            if method != "HEAD":
                assert isinstance(r.json.get("error"), str) and r.json["error"]
    assert lst.connected, "the NATS connection was closed"
    assert not errors.records, [rec.getMessage() for rec in errors.records]


def test_the_fuzzing_reached_the_stream_and_the_refusals(listeners: tuple[Listener, Listener, Errors]) -> None:
    """Runs after the fuzz: both accepted and refused requests were exercised, none internally."""
    *both, errors = listeners
    for lst in both:
        assert lst.ingress is not None
        assert lst.last_seq() > 0, "no fuzzed request was ever accepted"
        assert sum(lst.ingress.errors.values()) > 0 and lst.ingress.errors["internal"] == 0
    assert not errors.records
