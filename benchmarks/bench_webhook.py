"""Webhook ingress with GitHub verification against a bare aiohttp handler, in the same run.

A server process holds both: watchd's HTTP listener with one `verify = "github"` webhook route
(signature check, JSON parse, subject template, JetStream publish with the delivery id as
Nats-Msg-Id, waiting for the ack; nats-server with `sync = always`, as the daemon runs it) and a
bare aiohttp application whose handler answers 204. This process is the load generator: `--conns`
keep-alive connections, each sending its next request when the last was answered, first to the
bare handler, then to the webhook, for `--seconds` each after a short warm-up. Every webhook
request is a distinct signed delivery, so each is stored (checked against the stream afterwards).

Prints requests/s and p50/p99 latency of each, and the ratio (target: webhook ≥ 0.5 × bare and
≥ 2,000 requests/s).

Usage: python benchmarks/bench_webhook.py [--seconds 8] [--conns 32] [--small] [--sync 2m] [--no-store] [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import hashlib
import hmac
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench_pipeline import proc_cpu_s

SECRET = b"bench-webhook-secret"
WARMUP_S = 1.0


# ---- the server process ----


async def serve(root: Path, sync: str, store: bool, profile: Path | None) -> None:
    from aiohttp import web

    from watchd import bus
    from watchd.ingress import Ingress
    from watchd.ingress import serve as serve_ingress
    from watchd.jspublish import JetStreamPublisher
    from watchd.listener import ConnectionLimits
    from watchd.model import Event
    from watchd.sources.settings import WebhookSettings
    from watchd.sources.webhook import compile_route

    nats = bus.EmbeddedNats(root / "nats", listen="127.0.0.1:0", sync=sync)
    await nats.start()
    nc = await bus.connect(nats.url, name="bench-webhook")
    js = nc.jetstream()
    await bus.ensure_streams(js)

    publisher = JetStreamPublisher(nc)  # as the daemon publishes

    async def publish(event: Event, body: bytes | None = None) -> bus.PubAckInfo:
        if not store:  # --no-store: what the listener costs without the JetStream round trip
            return bus.PubAckInfo(bus.EVENTS_STREAM, 0, False)
        return await publisher.publish_event(event, body)

    ingress = Ingress(
        publish=publish,
        health=lambda: {"ok": True},
        max_body=256 * 1024,
        max_event_bytes=lambda: 256 * 1024,
    )
    settings = WebhookSettings(
        path="/hooks/github", subject="github.{header:X-GitHub-Event}", verify="github", secret=SECRET.decode()
    )
    route = compile_route("github", settings, secret=SECRET.decode())
    ingress.webhooks = {route.path: route}
    runner, hook_port = await serve_ingress(ingress, "127.0.0.1", 0, ConnectionLimits(max_connections=256))

    async def bare_handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=204)

    bare = web.Application()
    bare.router.add_post("/hook", bare_handler)
    bare_runner = web.AppRunner(bare, access_log=None)
    await bare_runner.setup()
    site = web.TCPSite(bare_runner, "127.0.0.1", 0)
    await site.start()
    assert site._server is not None and site._server.sockets
    bare_port = site._server.sockets[0].getsockname()[1]
    ports = {"hook": hook_port, "bare": bare_port, "nats": nats.url, "pid": os.getpid(), "nats_pid": nats.pid}
    print(json.dumps(ports), flush=True)
    # The parent writes a line when the webhook phase starts (the profile covers it alone), then
    # closes stdin when it is done.
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    profiler = cProfile.Profile(time.process_time) if profile else None  # CPU, not wall time
    if profiler is not None:
        profiler.enable()
    await loop.run_in_executor(None, sys.stdin.read)
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(str(profile))
    await runner.cleanup()
    await bare_runner.cleanup()
    await nc.close()
    await nats.stop()


# ---- the load generator ----


def _user(i: int) -> dict[str, Any]:
    base = f"https://api.github.com/users/octo{i}"
    return {
        "login": f"octo{i}",
        "id": 1000 + i,
        "node_id": "MDQ6VXNlcjE=",
        "avatar_url": "https://avatars.githubusercontent.com/u/1?v=4",
        "url": base,
        "html_url": f"https://github.com/octo{i}",
        **{f"{k}_url": f"{base}/{k}" for k in ("followers", "following", "gists", "starred", "repos", "events")},
        "type": "User",
        "site_admin": False,
    }


def _repo() -> dict[str, Any]:
    base = "https://api.github.com/repos/octo0/hello"
    kinds = ("archive", "assignees", "blobs", "branches", "collaborators", "comments", "commits", "compare")
    kinds += ("contents", "contributors", "deployments", "events", "forks", "git_refs", "hooks", "issues")
    kinds += ("keys", "labels", "languages", "merges", "milestones", "pulls", "releases", "tags", "trees")
    return {
        "id": 1296269,
        "name": "hello",
        "full_name": "octo0/hello",
        "owner": _user(0),
        "private": False,
        "description": "A repository",
        "url": base,
        **{f"{k}_url": f"{base}/{k}" for k in kinds},
        "created_at": "2011-01-26T19:01:12Z",
        "stargazers_count": 80,
        "forks_count": 9,
        "default_branch": "main",
        "topics": ["octocat", "api"],
    }


def pull_request_body(n: int, small: bool = False) -> bytes:
    """A `pull_request` delivery shaped like GitHub's (about 12 KB; real ones are 10–30 KB), or
    only its first fields (`small`, about 60 bytes)."""
    if small:
        return json.dumps({"action": "opened", "number": n, "sender": f"octo{n}"}).encode()
    pr = {
        "url": f"https://api.github.com/repos/octo0/hello/pulls/{n}",
        "id": 279147437 + n,
        "number": n,
        "state": "open",
        "title": f"Change {n}",
        "user": _user(1),
        "body": "This is a pretty simple change. " * 8,
        "labels": [{"id": 208045946, "name": "bug", "color": "f29513"}],
        "requested_reviewers": [_user(2), _user(3)],
        "head": {"ref": "feature", "sha": "ec26c3e57ca3a959ca5aad62de7", "user": _user(0), "repo": _repo()},
        "base": {"ref": "main", "sha": "f95f852bd8fca8fcc58a9a2d6c84", "user": _user(0), "repo": _repo()},
        "created_at": "2019-05-15T15:20:33Z",
        "draft": False,
        "merged": False,
        "commits": 1,
        "additions": 1,
        "deletions": 1,
    }
    payload = {"action": "opened", "number": n, "pull_request": pr, "repository": _repo(), "sender": _user(1)}
    return json.dumps(payload).encode()


BODIES = 64  # distinct bodies, signed before the clock runs: signing is the sender's cost, not watchd's


class Requests:
    """Request bytes: one of BODIES pre-signed bodies, with a delivery id of its own each time."""

    def __init__(self, github: bool, small: bool) -> None:
        self.github = github
        self.bodies = [pull_request_body(n, small) for n in range(BODIES)]
        self.signatures = ["sha256=" + hmac.new(SECRET, b, hashlib.sha256).hexdigest() for b in self.bodies]

    def __call__(self, port: int, n: int, worker: int) -> bytes:
        i = n % BODIES
        body = self.bodies[i]
        if not self.github:
            head = f"POST /hook HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        else:
            head = (
                f"POST /hooks/github HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                f"X-GitHub-Event: pull_request\r\nX-GitHub-Delivery: bench-{worker}-{n}\r\n"
                f"X-Hub-Signature-256: {self.signatures[i]}\r\n"
            )
        return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def one_connection(
    port: int, make: Any, worker: int, until: float, record_from: float, latencies: list[float], statuses: Counter[int]
) -> None:
    """Keep-alive requests one after another on one connection; a minimal HTTP/1.1 reader, so the
    generator spends little of the CPU the servers need."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    n = 0
    while True:
        start = time.perf_counter()
        if start >= until:
            break
        writer.write(make(port, n, worker))
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await reader.readexactly(length)
        end = time.perf_counter()
        if start >= record_from:
            latencies.append(end - start)
            statuses[status] += 1
        n += 1
    writer.close()
    await writer.wait_closed()


class CpuMeter:
    """CPU seconds each process used since the last lap (this one, the load generator, included)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.last = self._now()

    def _now(self) -> dict[str, float]:
        return {**{name: proc_cpu_s(pid) for name, pid in self.pids.items()}, "load generator": time.process_time()}

    def lap(self) -> dict[str, float]:
        now = self._now()
        spent = {name: now[name] - self.last[name] for name in now}
        self.last = now
        return spent


async def load(port: int, make: Any, conns: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    now = time.perf_counter()
    record_from, until = now + WARMUP_S, now + WARMUP_S + seconds
    await asyncio.gather(
        *(one_connection(port, make, w, until, record_from, latencies, statuses) for w in range(conns))
    )
    latencies.sort()
    return {
        "requests_per_s": len(latencies) / seconds,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "statuses": statuses,
        "requests": sum(statuses.values()),
    }


async def main(seconds: float, conns: int, small: bool, sync: str, store: bool, profile: Path | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, __file__, "--serve", tmp, "--sync", sync, *([] if store else ["--no-store"])]
        command += ["--profile", str(profile.resolve())] if profile else []
        server = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            ports = json.loads(server.stdout.readline())
            cpu = CpuMeter({"listener": ports["pid"], "nats-server": ports["nats_pid"]})
            bare = await load(ports["bare"], Requests(github=False, small=small), conns, seconds)
            bare_cpu = cpu.lap()
            assert server.stdin is not None
            server.stdin.write("webhook\n")
            server.stdin.flush()
            hook = await load(ports["hook"], Requests(github=True, small=small), conns, seconds)
            hook_cpu = cpu.lap()
            from watchd import bus

            nc = await bus.connect(ports["nats"], name="bench-check")
            info = await nc.jetstream().stream_info(bus.EVENTS_STREAM)
            await nc.close()
        finally:
            if server.stdin is not None:
                server.stdin.close()
            server.wait(30)
    stored = int(info.state.messages)
    body = "small bodies (~60 B)" if small else "pull_request bodies (~12 KB)"
    stored_how = f"nats-server sync={sync}" if store else "NOT published (--no-store)"
    print(f"{conns} connections, {body}, {stored_how}, {seconds:g}s each after {WARMUP_S:g}s warm-up")
    for name, r in (("bare aiohttp 204", bare), ("webhook, github, stored", hook)):
        print(f"{name:24s} {r['requests_per_s']:7,.0f} req/s   p50 {r['p50_ms']:6.2f} ms   p99 {r['p99_ms']:6.2f} ms")
    ratio = hook["requests_per_s"] / bare["requests_per_s"]
    print(f"ratio webhook/bare: {ratio:.2f}   (target: ≥ 0.5, and ≥ 2,000 req/s)")
    print(f"webhook answers: {dict(hook['statuses'])}; in the stream: {stored} (warm-up included)")
    for name in bare_cpu:
        per_bare = bare_cpu[name] / bare["requests"] * 1e6
        per_hook = hook_cpu[name] / hook["requests"] * 1e6
        print(f"CPU per request, {name:15s} bare {per_bare:6.0f} µs   webhook {per_hook:6.0f} µs")
    if set(hook["statuses"]) != {200} or set(bare["statuses"]) != {204}:
        raise SystemExit("some requests were not answered 200/204")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--conns", type=int, default=32)
    parser.add_argument("--small", action="store_true", help="60-byte bodies instead of 12 KB pull requests")
    parser.add_argument("--sync", default="always", help="nats-server JetStream sync (watchd's default: always)")
    parser.add_argument("--no-store", action="store_true", help="verify and build events, publish nothing")
    parser.add_argument("--profile", type=Path, help="write a cProfile of the listener's webhook phase here")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.sync, not args.no_store, args.profile))
    else:
        asyncio.run(main(args.seconds, args.conns, args.small, args.sync, not args.no_store, args.profile))
