"""Sockets at the HTTP listener: slow or idle clients cannot hold file descriptors, the listener keeps
under its connection cap, and normal requests keep working during and after a flood. Real sockets
against the in-process listener, and once against the real daemon under a low `ulimit -n`."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.ingress_harness import Listener, build_request, exchange, parse_response
from support.processes import DaemonProc
from support.waiting import wait_until

from watchd.listener import ConnectionLimits

HALF_HEADERS = b"POST /events/slow.client HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


def open_slow(port: int, n: int, payload: bytes = HALF_HEADERS) -> list[socket.socket]:
    """n connections that each send the start of a request and then nothing."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        with contextlib.suppress(OSError):  # the listener may already have closed it to make room
            s.sendall(payload)
        socks.append(s)
    return socks


def closed_by_server(s: socket.socket, within_s: float) -> bool:
    s.settimeout(within_s)
    try:
        return s.recv(65536) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


@pytest.fixture
def make_listener(tmp_path: Path) -> Iterator[Callable[..., Listener]]:
    made: list[Listener] = []

    def make(**kw: object) -> Listener:
        lst = Listener(tmp_path / f"l{len(made)}", **kw).start()  # type: ignore[arg-type]
        made.append(lst)
        return lst

    try:
        yield make
    finally:
        for lst in made:
            lst.stop()


def test_300_slow_connections_stay_under_the_cap_and_normal_requests_still_succeed(
    make_listener: Callable[..., Listener],
) -> None:
    lst = make_listener(limits=ConnectionLimits(max_connections=50, header_timeout_s=30, keepalive_timeout_s=30))
    slow = open_slow(lst.port, 300)
    try:
        assert lst.open_connections() <= 50
        for n in range(20):  # during the flood
            r = lst.post_json("during.flood", {"n": n})
            assert r.status == 202, r.body
            assert lst.open_connections() <= 50
        evicted = sum(closed_by_server(s, 0.01) for s in slow)
        assert evicted >= 250, f"only {evicted} of 300 idle connections were closed to make room"
        assert lst.ingress is not None and lst.ingress.errors["connections"] >= 250
    finally:
        close_all(slow)
    r = lst.post_json("after.flood", {"ok": True})  # after
    assert r.status == 202 and lst.stored(r.json["seq"])[1]["data"] == {"ok": True}
    assert lst.connected


def test_a_client_that_never_finishes_its_headers_is_cut_off(make_listener: Callable[..., Listener]) -> None:
    lst = make_listener(limits=ConnectionLimits(max_connections=10, header_timeout_s=0.5, keepalive_timeout_s=30))
    (s,) = open_slow(lst.port, 1)
    started = time.monotonic()
    try:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # cut off already: a busy machine
            for _ in range(3):  # a byte now and then does not buy more time (slowloris)
                time.sleep(0.1)
                s.sendall(b"X-Slow: 1\r\n")
        assert closed_by_server(s, 5)
    finally:
        s.close()
    assert 0.4 < time.monotonic() - started < 3
    assert lst.ingress is not None and lst.ingress.errors["slow_client"] == 1


def test_a_client_that_never_sends_anything_is_cut_off(make_listener: Callable[..., Listener]) -> None:
    lst = make_listener(limits=ConnectionLimits(max_connections=10, header_timeout_s=0.5, keepalive_timeout_s=30))
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", lst.port), timeout=10) as s:
        assert closed_by_server(s, 5)
    assert 0.4 < time.monotonic() - started < 3


def test_an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout(
    make_listener: Callable[..., Listener],
) -> None:
    lst = make_listener(limits=ConnectionLimits(max_connections=10, header_timeout_s=30, keepalive_timeout_s=0.5))
    with socket.create_connection(("127.0.0.1", lst.port), timeout=10) as s:
        s.sendall(build_request("GET", "/healthz", host=lst.host, headers={"Connection": "keep-alive"}))
        head = s.recv(65536)
        assert head.startswith(b"HTTP/1.1 200"), head
        started = time.monotonic()
        assert closed_by_server(s, 5)
    assert 0.4 < time.monotonic() - started < 3


def test_each_request_moves_the_idle_deadline_on(make_listener: Callable[..., Listener]) -> None:
    # Requests 0.3 s apart on one connection outlive the 0.5 s idle limit many times over; the
    # deadline set after the first request fires while the connection is busy or freshly used, and
    # must wait again for the rest, not close it.
    lst = make_listener(limits=ConnectionLimits(max_connections=10, header_timeout_s=0.4, keepalive_timeout_s=0.5))
    with socket.create_connection(("127.0.0.1", lst.port), timeout=10) as s:
        for _ in range(6):
            s.sendall(build_request("GET", "/healthz", host=lst.host, headers={"Connection": "keep-alive"}))
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
            time.sleep(0.3)
        started = time.monotonic()
        assert closed_by_server(s, 5)  # and once it stays idle, it is closed
    assert time.monotonic() - started < 3
    assert lst.ingress is not None and lst.ingress.errors["slow_client"] <= 1


def test_a_body_that_trickles_in_gets_a_408_and_publishes_nothing(make_listener: Callable[..., Listener]) -> None:
    lst = make_listener(body_timeout_s=0.5)
    before = lst.last_seq()
    with socket.create_connection(("127.0.0.1", lst.port), timeout=10) as s:
        headers = {"Content-Type": "application/json", "Content-Length": "100"}
        s.sendall(build_request("POST", "/events/slow.body", b'{"a": ', headers, host=lst.host))
        started = time.monotonic()
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    r = parse_response(b"".join(chunks))
    assert r.status == 408 and "did not arrive within 0.5s" in r.error
    assert 0.4 < time.monotonic() - started < 5
    assert lst.last_seq() == before


def test_when_every_connection_is_in_a_request_a_newcomer_gets_a_json_503(
    make_listener: Callable[..., Listener],
) -> None:
    lst = make_listener(limits=ConnectionLimits(max_connections=5), body_timeout_s=1.0)
    headers = {"Content-Type": "application/json", "Content-Length": "100"}
    busy = open_slow(lst.port, 5, build_request("POST", "/events/busy", b"{", headers, host=lst.host))
    try:
        wait_until(lambda: lst.open_connections() == 5, what="5 connections in a request")
        time.sleep(0.1)  # their headers are parsed: each is inside the handler, reading its body
        # The answer comes before the request is read; a client that waits for it reads it whole
        # (one that sends first may see the connection reset instead: either way it is refused).
        with socket.create_connection(("127.0.0.1", lst.port), timeout=10) as s:
            r = parse_response(b"".join(iter(lambda: s.recv(65536), b"")))
        assert r.status == 503 and json.loads(r.body) == {"error": "too many connections: try again shortly"}
        for s in busy:  # the body deadline frees them
            r = parse_response(s.recv(65536))
            assert r.status == 408
    finally:
        close_all(busy)
    assert lst.post_json("after.busy", {}).status == 202


def test_the_daemon_keeps_serving_through_1000_slow_connections_at_ulimit_256(tmp_path: Path) -> None:
    """The real daemon under `ulimit -n 256`: before the cap, 1,000 slow connections took every
    descriptor and the daemon stopped. Its default cap is a quarter of the limit (64)."""
    d = DaemonProc(tmp_path / "d")
    with open(d.stdout_path, "ab") as out, open(d.stderr_path, "ab") as err:
        d.proc = subprocess.Popen(
            ["prlimit", "--nofile=256:256", sys.executable, "-m", "watchd", "run", "--config", str(d.config_path)],
            cwd=d.root,
            env=d.env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
    slow: list[socket.socket] = []
    try:
        d.wait_ready()
        slow = open_slow(d.http_port, 1000, HALF_HEADERS.replace(b"127.0.0.1", f"127.0.0.1:{d.http_port}".encode()))
        assert d.alive()
        fds = len(os.listdir(f"/proc/{d.pid}/fd"))
        assert fds < 200, f"the daemon holds {fds} descriptors"
        health = d.health()
        assert health is not None and health["ok"] is True
        r = exchange(
            d.http_port,
            build_request(
                "POST",
                "/events/during.flood",
                b'{"n": 1}',
                {"Content-Type": "application/json"},
                host=f"127.0.0.1:{d.http_port}",
            ),
        )
        assert r.status == 202, r.body
        seq = r.json["seq"]
        wait_until(lambda: int(d.meta("last_seq") or 0) >= seq, what="the engine to consume the event")
        assert d.alive()
    finally:
        close_all(slow)
        d.cleanup()
    assert "Too many open files" not in d.stderr() and "Traceback" not in d.stderr()
