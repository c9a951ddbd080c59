"""The HTTP listener of the real daemon: event ingress, idempotency, rejection at the edge (nothing
published), bearer token, /ping, /healthz, /metrics. One daemon (with a token) for the module, in the
module's event loop; the requests are blocking HTTP calls, so they go through a thread."""

from __future__ import annotations

import asyncio
import http.client
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from support.inprocess import InProcessDaemon
from support.project import Project
from support.waiting import until

pytestmark = pytest.mark.asyncio(loop_scope="module")

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


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def daemon(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcessDaemon]:
    root: Path = tmp_path_factory.mktemp("http")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WATCHD_TEST_HTTP_TOKEN", TOKEN)
        d = InProcessDaemon(root, WATCHES, extra_config='token = "env:WATCHD_TEST_HTTP_TOKEN"')
        try:
            yield await d.start()
        finally:
            await d.cleanup()


async def request(d: Project, method: str, path: str, body: bytes | None = None, **kw: Any) -> tuple[int, Any, str]:
    """(status, parsed JSON or text, content type), from a thread: the daemon answers in this loop."""
    return await asyncio.to_thread(blocking_request, d, method, path, body, **kw)


def blocking_request(
    d: Project,
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


async def test_post_event_is_published_and_fires(daemon: InProcessDaemon) -> None:
    status, body, _ = await request(daemon, "POST", "/events/hook.deploy", b'{"env": "prod", "n": 3}')
    assert status == 202, body
    assert body["duplicate"] is False and body["seq"] >= 1 and body["id"]
    (h,) = await until(
        lambda: [h for h in daemon.handoffs("hooks") if h["evidence"][0]["id"] == body["id"]],
        what="the posted event to fire",
    )
    ev = h["evidence"][0]
    assert ev["subject"] == "hook.deploy" and ev["data"] == {"env": "prod", "n": 3}


async def test_idempotency_key_stores_once(daemon: InProcessDaemon) -> None:
    first = await request(daemon, "POST", "/events/hook.idem", b'{"a": 1}', headers={"Idempotency-Key": "idem-1"})
    second = await request(daemon, "POST", "/events/hook.idem", b'{"a": 1}', headers={"Idempotency-Key": "idem-1"})
    via_query = await request(daemon, "POST", "/events/hook.idem?id=idem-1", b'{"a": 1}')
    assert first[0] == second[0] == via_query[0] == 202
    assert first[1] == {"id": "idem-1", "seq": first[1]["seq"], "duplicate": False}
    assert second[1] == via_query[1] == {"id": "idem-1", "seq": first[1]["seq"], "duplicate": True}
    await until(
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
async def test_bad_requests_are_refused_with_a_reason_and_publish_nothing(
    daemon: InProcessDaemon, path: str, body: bytes, status: int, message: str
) -> None:
    before = await daemon.stream_last_seq()
    got, payload, ctype = await request(daemon, "POST", path, body)
    assert got == status, payload
    assert ctype.startswith("application/json") and message in payload["error"], payload
    assert await daemon.stream_last_seq() == before


def post_chunked(d: Project, path: str, body: bytes) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", d.http_port, timeout=10)
    try:
        conn.putrequest("POST", path)
        conn.putheader("Authorization", f"Bearer {TOKEN}")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        for i in range(0, len(body), 32 * 1024):
            chunk = body[i : i + 32 * 1024]
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        conn.send(b"0\r\n\r\n")
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


async def test_chunked_oversize_body_is_refused(daemon: InProcessDaemon) -> None:
    before = await daemon.stream_last_seq()
    body = json.dumps({"x": "a" * (300 * 1024)}).encode()
    status, payload = await asyncio.to_thread(post_chunked, daemon, "/events/hook.chunked", body)
    assert status == 413 and "byte limit" in payload["error"], payload
    assert await daemon.stream_last_seq() == before


async def test_bearer_token_is_required(daemon: InProcessDaemon) -> None:
    before = await daemon.stream_last_seq()
    for token in (None, "wrong", TOKEN + "x", ""):
        status, payload, _ = await request(daemon, "POST", "/events/hook.auth", b"{}", token=token)
        assert status == 401 and "bearer token" in payload["error"]
        assert (await request(daemon, "GET", "/ping/hook.auth", token=token))[0] == 401
    status, payload, _ = await request(
        daemon, "POST", "/events/hook.auth", b"{}", headers={"Authorization": TOKEN}, token=None
    )
    assert status == 401  # the scheme is required
    assert await daemon.stream_last_seq() == before
    assert (await request(daemon, "POST", "/events/hook.auth", b"{}"))[0] == 202


async def test_ping_with_get_and_post(daemon: InProcessDaemon) -> None:
    status, got, _ = await request(daemon, "GET", "/ping/hook.ping.laptop")
    assert status == 202 and got["duplicate"] is False
    status, posted, _ = await request(daemon, "POST", "/ping/hook.ping.laptop", b'{"host": "x1"}')
    assert status == 202 and posted["seq"] > got["seq"]
    await until(
        lambda: {got["id"], posted["id"]} <= {h["evidence"][0]["id"] for h in daemon.handoffs("hooks")},
        what="both pings to fire",
    )
    data = {h["evidence"][0]["id"]: h["evidence"][0]["data"] for h in daemon.handoffs("hooks")}
    assert data[got["id"]] == {} and data[posted["id"]] == {"host": "x1"}


async def test_healthz_and_metrics(daemon: InProcessDaemon) -> None:
    status, health, ctype = await request(daemon, "GET", "/healthz", token=None)
    assert status == 200 and ctype.startswith("application/json")
    assert health["ok"] is True and health["engine"] is True and health["nats"] is True
    assert health["pid"] == daemon.pid and health["watches"] == 1
    assert {"uptime_s", "last_seq", "events"} <= set(health)

    status, text, ctype = await request(daemon, "GET", "/metrics", token=None)
    assert status == 200 and ctype.startswith("text/plain")
    metrics = dict(line.split(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert float(metrics["watchd_up"]) == 1 and float(metrics["watchd_watches"]) == 1
    assert float(metrics["watchd_last_seq"]) >= 0 and float(metrics["watchd_events_total"]) >= 0
    assert "# TYPE watchd_events_total counter" in text and "# HELP watchd_up " in text
