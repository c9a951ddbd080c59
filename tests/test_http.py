"""The HTTP listener of the real daemon: event ingress, idempotency, rejection at the edge (nothing
published), bearer token, /ping, /healthz, /metrics. One daemon (with a token) for the module."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import DaemonProc, wait_until

TOKEN = "s3cret-token"
WATCHES = {
    "http.toml": """
[[watch]]
id = "hooks"
kind = "match"
on = { subject = "hook.>" }
then = ["notify.console"]
"""
}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    root: Path = tmp_path_factory.mktemp("http")
    d = DaemonProc(
        root, WATCHES, extra_config='token = "env:WATCHD_TEST_HTTP_TOKEN"', env={"WATCHD_TEST_HTTP_TOKEN": TOKEN}
    )
    d.start()
    try:
        yield d
    finally:
        d.cleanup()


def request(
    d: DaemonProc,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    token: str | None = TOKEN,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, str]:
    """(status, parsed JSON or text, content type)."""
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(d.http_url + path, data=body, headers=hdrs, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status, raw, ctype = resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        status, raw, ctype = exc.code, exc.read(), exc.headers.get("Content-Type", "")
    payload = json.loads(raw) if ctype.startswith("application/json") else raw.decode()
    return status, payload, ctype


def test_post_event_is_published_and_fires(daemon: DaemonProc) -> None:
    status, body, _ = request(daemon, "POST", "/events/hook.deploy", b'{"env": "prod", "n": 3}')
    assert status == 202, body
    assert body["duplicate"] is False and body["seq"] >= 1 and body["id"]
    (h,) = wait_until(
        lambda: [h for h in daemon.handoffs("hooks") if h["evidence"][0]["id"] == body["id"]],
        what="the posted event to fire",
    )
    ev = h["evidence"][0]
    assert ev["subject"] == "hook.deploy" and ev["data"] == {"env": "prod", "n": 3}


def test_idempotency_key_stores_once(daemon: DaemonProc) -> None:
    first = request(daemon, "POST", "/events/hook.idem", b'{"a": 1}', headers={"Idempotency-Key": "idem-1"})
    second = request(daemon, "POST", "/events/hook.idem", b'{"a": 1}', headers={"Idempotency-Key": "idem-1"})
    via_query = request(daemon, "POST", "/events/hook.idem?id=idem-1", b'{"a": 1}')
    assert first[0] == second[0] == via_query[0] == 202
    assert first[1] == {"id": "idem-1", "seq": first[1]["seq"], "duplicate": False}
    assert second[1] == via_query[1] == {"id": "idem-1", "seq": first[1]["seq"], "duplicate": True}
    wait_until(
        lambda: daemon.decisions("hooks", "fired") and int(daemon.meta("last_seq") or 0) >= first[1]["seq"],
        what="the event to be consumed",
    )
    assert [d["event_id"] for d in daemon.decisions("hooks", "fired")].count("idem-1") == 1
    assert len([h for h in daemon.handoffs("hooks") if h["evidence"][0]["id"] == "idem-1"]) == 1


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/events/hook.x", b"[1, 2]", 400, "body must be a JSON object"),
        ("/events/hook.x", b'"text"', 400, "body must be a JSON object"),
        ("/events/hook.x", b"{not json", 400, "body is not valid JSON"),
        ("/events/bad..subject", b"{}", 400, "bad subject 'bad..subject'"),
        ("/events/bad%20subject", b"{}", 400, "bad subject 'bad subject'"),
        ("/events/watchd.events.x", b"{}", 400, "reserved"),
        # under the body limit, but the envelope around it would be over the event limit
        ("/events/hook.x", json.dumps({"x": "a" * (256 * 1024 - 30)}).encode(), 413, "event limit"),
        ("/events/hook.x", json.dumps({"x": "a" * (256 * 1024 + 10)}).encode(), 413, "byte limit"),
        ("/events/hook.x", json.dumps({"x": "a" * (2 * 1024 * 1024)}).encode(), 413, "byte limit"),
    ],
    ids=["array", "string", "not-json", "empty-token", "space", "reserved", "envelope-too-big", "too-big", "huge"],
)
def test_bad_requests_are_refused_with_a_reason_and_publish_nothing(
    daemon: DaemonProc, path: str, body: bytes, status: int, message: str
) -> None:
    before = daemon.stream_last_seq()
    got, payload, ctype = request(daemon, "POST", path, body)
    assert got == status, payload
    assert ctype.startswith("application/json") and message in payload["error"], payload
    assert daemon.stream_last_seq() == before


def test_chunked_oversize_body_is_refused(daemon: DaemonProc) -> None:
    before = daemon.stream_last_seq()
    conn = http.client.HTTPConnection("127.0.0.1", daemon.http_port, timeout=10)
    try:
        conn.putrequest("POST", "/events/hook.chunked")
        conn.putheader("Authorization", f"Bearer {TOKEN}")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        body = json.dumps({"x": "a" * (300 * 1024)}).encode()
        for i in range(0, len(body), 32 * 1024):
            chunk = body[i : i + 32 * 1024]
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        conn.send(b"0\r\n\r\n")
        resp = conn.getresponse()
        status, payload = resp.status, json.loads(resp.read())
    finally:
        conn.close()
    assert status == 413 and "byte limit" in payload["error"], payload
    assert daemon.stream_last_seq() == before


def test_bearer_token_is_required(daemon: DaemonProc) -> None:
    before = daemon.stream_last_seq()
    for token in (None, "wrong", TOKEN + "x", ""):
        status, payload, _ = request(daemon, "POST", "/events/hook.auth", b"{}", token=token)
        assert status == 401 and "bearer token" in payload["error"]
        assert request(daemon, "GET", "/ping/hook.auth", token=token)[0] == 401
    status, payload, _ = request(
        daemon, "POST", "/events/hook.auth", b"{}", headers={"Authorization": TOKEN}, token=None
    )
    assert status == 401  # the scheme is required
    assert daemon.stream_last_seq() == before
    assert request(daemon, "POST", "/events/hook.auth", b"{}")[0] == 202


def test_ping_with_get_and_post(daemon: DaemonProc) -> None:
    status, got, _ = request(daemon, "GET", "/ping/hook.ping.laptop")
    assert status == 202 and got["duplicate"] is False
    status, posted, _ = request(daemon, "POST", "/ping/hook.ping.laptop", b'{"host": "x1"}')
    assert status == 202 and posted["seq"] > got["seq"]
    wait_until(
        lambda: {got["id"], posted["id"]} <= {h["evidence"][0]["id"] for h in daemon.handoffs("hooks")},
        what="both pings to fire",
    )
    data = {h["evidence"][0]["id"]: h["evidence"][0]["data"] for h in daemon.handoffs("hooks")}
    assert data[got["id"]] == {} and data[posted["id"]] == {"host": "x1"}


def test_healthz_and_metrics(daemon: DaemonProc) -> None:
    status, health, ctype = request(daemon, "GET", "/healthz", token=None)
    assert status == 200 and ctype.startswith("application/json")
    assert health["ok"] is True and health["engine"] is True and health["nats"] is True
    assert health["pid"] == daemon.pid and health["watches"] == 1
    assert {"uptime_s", "last_seq", "events"} <= set(health)

    status, text, ctype = request(daemon, "GET", "/metrics", token=None)
    assert status == 200 and ctype.startswith("text/plain")
    metrics = dict(line.split(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert metrics["watchd_up"] == "1" and metrics["watchd_watches"] == "1"
    assert int(metrics["watchd_last_seq"]) >= 0 and int(metrics["watchd_events_total"]) >= 0
    assert "# TYPE watchd_events_total counter" in text


def test_non_loopback_listener_without_token_refuses_to_start(tmp_path: Path) -> None:
    d = DaemonProc(tmp_path / "open", WATCHES)
    d.config_path.write_text(d.config_path.read_text().replace(f"127.0.0.1:{d.http_port}", f"0.0.0.0:{d.http_port}"))
    try:
        d.start(wait=False)
        assert d.proc is not None
        code = d.proc.wait(20)
    finally:
        d.cleanup()
    assert code != 0
    assert "is not loopback but no token is set" in d.stderr()
    assert "Traceback" not in d.stderr()
