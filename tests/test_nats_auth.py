"""The embedded NATS admits only watchd's users, one per role, each limited to its own subjects.

Against a real nats-server with the generated config: what each role may do works, and what it may
not is refused by the server (a permissions violation, and no effect on the streams or the daemon's
consumers). Through the real daemon: the credentials are made once, kept 0600 and stable across a
restart; `watchd nats url` gives URLs that plain nats-py clients use; `emit`, `test --since` and
`worker` connect as their roles; a forged handoff is refused and never run; no password leaks."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import tarfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig
from support.cli import run_cli
from support.inprocess import InProcessDaemon
from support.waiting import until

from watchd import config, credentials
from watchd.agents.nats import REPLIES_DURABLE, last_reply, send_reply
from watchd.bus import (
    EVENTS_STREAM,
    HANDOFFS_STREAM,
    EmbeddedNats,
    EventConsumer,
    connect,
    ensure_streams,
    publish_event,
    publish_raw,
)
from watchd.credentials import ADMIN_INBOX, ROLES, Credentials
from watchd.errors import NatsUnavailable, WatchdError
from watchd.explain.backtest import replay_stream
from watchd.model import encode, make_event

HANDOFF = "watchd.handoffs.agent.remote"
FORGED = {
    "id": "h_forged",
    "watch": "deploy",
    "watch_version": 1,
    "kind": "match",
    "key": "evil",
    "target": "agent.remote",
    "trigger": "watch",
    "reason": "forged",
    "fired_at": "2026-11-22T02:00:00Z",
}


@dataclass
class Secured:
    server: EmbeddedNats
    creds: Credentials
    admin: Client

    def url(self, role: credentials.Role) -> str:
        return self.creds.url(self.server.url, role)


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[Secured]:
    """A server with the daemon's users, its streams, and its two consumers, as the daemon leaves them."""
    creds = credentials.load_or_create(tmp_path / "state")
    server = EmbeddedNats(tmp_path / "state" / "nats", listen="127.0.0.1:0", credentials=creds)
    await server.start()
    admin = await connect(creds.url(server.url, "admin"), name="admin", inbox_prefix=ADMIN_INBOX)
    try:
        js = admin.jetstream()
        await ensure_streams(js)
        await EventConsumer(js).start()
        replies = ConsumerConfig(name=REPLIES_DURABLE, durable_name=REPLIES_DURABLE, filter_subject="watchd.replies.>")
        await js.add_consumer(HANDOFFS_STREAM, replies)
        yield Secured(server, creds, admin)
    finally:
        await admin.close()
        await server.stop()


async def violation(nc: Client, what: str, subject: str, timeout_s: float = 2.0) -> bool:
    """Whether the server answered with a permissions violation for `subject` (it comes as an
    asynchronous -ERR, not always before the flush's PONG, so it is waited for)."""
    expected = f'permissions violation for {what} to "{subject.lower()}"'
    deadline = asyncio.get_running_loop().time() + timeout_s
    while expected not in str(nc.last_error or "").lower():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def refused(nc: Client, subject: str, body: bytes = b"{}") -> bool:
    """Publish (with a reply inbox, as an API request has): does the server refuse it?"""
    await nc.publish(subject, body, reply=nc.new_inbox())
    await nc.flush(timeout=2)
    return await violation(nc, "publish", subject)


async def sub_refused(nc: Client, subject: str) -> bool:
    await nc.subscribe(subject)
    await nc.flush(timeout=2)
    return await violation(nc, "subscription", subject)


async def daemon_state_intact(s: Secured, handoffs: int = 0) -> None:
    """The daemon's consumers exist as it made them, and no handoff was stored but its own."""
    js = s.admin.jetstream()
    engine = await js.consumer_info(EVENTS_STREAM, "watchd-engine")
    assert engine.config.filter_subject is None and engine.config.ack_policy == AckPolicy.ALL
    replies = await js.consumer_info(HANDOFFS_STREAM, REPLIES_DURABLE)
    assert replies.config.filter_subject == "watchd.replies.>"
    stored = await js.stream_info(HANDOFFS_STREAM, subjects_filter="watchd.handoffs.>")
    assert sum((stored.state.subjects or {}).values()) == handoffs


# ---- the credentials file --------------------------------------------------------------------------------


def test_credentials_are_made_once_kept_0600_and_url_safe(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert credentials.load(state) is None
    made = credentials.load_or_create(state)
    path = credentials.credentials_path(state)
    assert path.stat().st_mode & 0o777 == 0o600 and state.stat().st_mode & 0o777 == 0o700
    passwords = [made.password(role) for role in ROLES]
    assert len(set(passwords)) == 4 and all(re.fullmatch(r"[A-Za-z0-9_-]{43}", p) for p in passwords)
    again = credentials.load_or_create(state)
    assert [again.password(role) for role in ROLES] == passwords  # stable: never made twice
    for role in ROLES:
        parts = urllib.parse.urlsplit(made.url("nats://127.0.0.1:4222", role))
        assert (parts.username, parts.password, parts.port) == (role, made.password(role), 4222)
    assert made.url("nats://old:x@h:1", "read") == f"nats://read:{made.password('read')}@h:1"
    assert not any(p in repr(made) for p in passwords)
    assert [p.name for p in state.iterdir()] == [credentials.FILE_NAME]  # no temporary file left


def test_a_damaged_credentials_file_is_one_clear_error(tmp_path: Path) -> None:
    path = credentials.credentials_path(tmp_path)
    path.write_text("{not json")
    with pytest.raises(WatchdError, match=r"cannot read the NATS credentials in .*: it is not JSON"):
        credentials.load(tmp_path)
    path.write_text('{"admin": "x"}')
    with pytest.raises(WatchdError, match="a role is missing"):
        credentials.load(tmp_path)
    path.unlink()
    path.mkdir()
    with pytest.raises(WatchdError) as err:
        credentials.load(tmp_path)
    assert err.value.hint is not None and "watchd nats url --role" in err.value.hint


def test_protected_names_are_the_daemons_consumers() -> None:
    assert EventConsumer.__init__.__defaults__ is not None
    assert EventConsumer.__init__.__defaults__[0] == "watchd-engine"
    denied = credentials.PERMISSIONS["worker"]["publish"]["deny"]
    assert f"$JS.API.CONSUMER.CREATE.{HANDOFFS_STREAM}.{REPLIES_DURABLE}.>" in denied
    assert f"$JS.API.CONSUMER.DELETE.{EVENTS_STREAM}.watchd-engine" in denied


def test_an_external_url_may_be_a_secret_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[nats]\nurl = "env:WATCHD_TEST_NATS_URL"\n')
    loaded = config.load(cfg)
    monkeypatch.setenv("WATCHD_TEST_NATS_URL", "nats://w:pw@nats.example:4222")
    assert credentials.client_url(loaded, "worker") == "nats://w:pw@nats.example:4222"
    monkeypatch.delenv("WATCHD_TEST_NATS_URL")
    with pytest.raises(WatchdError, match="env:WATCHD_TEST_NATS_URL is not set"):
        credentials.client_url(loaded, "worker")
    cfg.write_text('[nats]\nurl = ["nats://a:4222", "nats://b:4222"]\n')
    assert credentials.client_url(config.load(cfg), "admin") == ["nats://a:4222", "nats://b:4222"]


# ---- each role against the server --------------------------------------------------------------------------


async def test_anonymous_and_wrong_password_clients_are_refused(secured: Secured) -> None:
    with pytest.raises(NatsUnavailable) as err:
        await connect(secured.server.url, timeout_s=2)
    assert "refused the credentials" in err.value.message
    assert err.value.hint is not None and "watchd nats url --role" in err.value.hint
    with pytest.raises(NatsUnavailable) as err:
        await connect(f"nats://publish:wrong-password-123@127.0.0.1:{secured.server.port}", timeout_s=2)
    assert "refused the credentials" in err.value.message and "wrong-password-123" not in err.value.message
    conf = secured.server.conf_path
    assert conf.stat().st_mode & 0o777 == 0o600 and "no_auth_user" not in conf.read_text()


async def test_publish_role_stores_events_and_nothing_else(secured: Secured) -> None:
    nc = await connect(secured.url("publish"), name="publisher")
    try:
        ack = await publish_event(nc.jetstream(), make_event("backup.done", {"exit_code": 0}))
        assert ack.stream == EVENTS_STREAM and ack.seq == 1
        assert await refused(nc, HANDOFF, encode(FORGED))
        assert await refused(nc, "watchd.replies.h_forged", b'{"id": "h_forged", "status": "done"}')
        assert await refused(nc, "watchd.canary.pong.abc")
        assert await refused(nc, "$JS.API.CONSUMER.DELETE.EVENTS.watchd-engine")
        assert await refused(nc, "$JS.API.STREAM.PURGE.EVENTS")
        assert await refused(nc, "$JS.API.STREAM.INFO.EVENTS")
        assert await sub_refused(nc, "watchd.>")
        assert await sub_refused(nc, ADMIN_INBOX + ".>")  # the daemon's replies are not for it
    finally:
        await nc.close()
    await daemon_state_intact(secured)
    info = await secured.admin.jetstream().stream_info(EVENTS_STREAM)
    assert info.state.messages == 1


async def test_worker_role_takes_handoffs_and_replies_but_cannot_forge_or_steal(secured: Secured) -> None:
    ajs = secured.admin.jetstream()
    await publish_raw(ajs, HANDOFF, encode({**FORGED, "id": "h_real"}), "h_real")
    nc = await connect(secured.url("worker"), name="worker")
    try:
        js = nc.jetstream()
        durable = ConsumerConfig(name="worker-agent-remote", durable_name="worker-agent-remote", filter_subject=HANDOFF)
        await js.add_consumer(HANDOFFS_STREAM, durable)
        sub = await js.pull_subscribe_bind(durable="worker-agent-remote", stream=HANDOFFS_STREAM)
        [msg] = await sub.fetch(1, timeout=5)
        assert json.loads(msg.data)["id"] == "h_real"
        await msg.in_progress()
        await send_reply(js, "h_real", "done", "ok", int(msg.metadata.sequence.stream))
        await msg.ack()
        stored = await last_reply(js, "h_real")
        assert stored is not None and stored.reply.status == "done"

        assert await refused(nc, HANDOFF, encode(FORGED))
        assert await refused(nc, "watchd.events.deploy.requested")
        assert await refused(nc, "$JS.API.CONSUMER.DELETE.EVENTS.watchd-engine")
        assert await refused(nc, "$JS.API.CONSUMER.DELETE.HANDOFFS.watchd-replies")
        # Rewriting the daemon's replies consumer to a handoff filter, or taking its messages.
        assert await refused(nc, f"$JS.API.CONSUMER.CREATE.HANDOFFS.{REPLIES_DURABLE}.{HANDOFF}")
        assert await refused(nc, f"$JS.API.CONSUMER.MSG.NEXT.HANDOFFS.{REPLIES_DURABLE}")
        assert await refused(nc, "$JS.API.CONSUMER.CREATE.EVENTS.mine.watchd.events.>")
        assert await sub_refused(nc, ADMIN_INBOX + ".>")
    finally:
        await nc.close()
    await daemon_state_intact(secured, handoffs=1)


async def test_read_role_replays_the_stream_but_cannot_touch_the_engine(secured: Secured) -> None:
    pub = await connect(secured.url("publish"))
    try:
        for n in range(3):
            await publish_event(pub.jetstream(), make_event("backup.done", {"n": n}))
    finally:
        await pub.close()
    await publish_raw(secured.admin.jetstream(), "watchd.replies.h_x", b'{"id": "h_x", "status": "done"}', None)
    url = secured.url("read")
    report = await replay_stream("w.toml", [], "UTC", url, 3600, time.time(), "1h")
    assert report.events == 3 and not report.notes[1:]
    nc = await connect(url, name="reader")
    try:
        js = nc.jetstream()
        assert (await js.stream_info(HANDOFFS_STREAM)).state.messages == 1
        assert (await js.get_msg(EVENTS_STREAM, seq=2)).seq == 2
        stored = await last_reply(js, "h_x")  # a direct get on HANDOFFS
        assert stored is not None and stored.reply.status == "done"
        assert await refused(nc, "watchd.events.x")
        assert await refused(nc, HANDOFF, encode(FORGED))
        # The nameless create takes the consumer's name from the body: with "watchd-engine" there it
        # would rewrite the engine's consumer, so it is not allowed at all.
        hijack = {"stream_name": "EVENTS", "config": {"name": "watchd-engine", "filter_subject": "watchd.events.none"}}
        assert await refused(nc, "$JS.API.CONSUMER.CREATE.EVENTS", json.dumps(hijack).encode())
        assert await refused(nc, "$JS.API.CONSUMER.CREATE.EVENTS.watchd-engine.watchd.events.none")
        assert await refused(nc, "$JS.API.CONSUMER.MSG.NEXT.EVENTS.watchd-engine")
        assert await refused(nc, "$JS.API.CONSUMER.DELETE.EVENTS.watchd-engine")
        assert await refused(nc, "$JS.API.CONSUMER.CREATE.HANDOFFS.x.watchd.handoffs.>")
    finally:
        await nc.close()
    await daemon_state_intact(secured)


async def test_a_listener_beyond_loopback_warns_that_traffic_is_plaintext(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    creds = credentials.load_or_create(tmp_path)
    server = EmbeddedNats(tmp_path / "nats", listen="0.0.0.0:0", credentials=creds)
    with caplog.at_level(logging.WARNING, logger="watchd.bus"):
        await server.start()
    try:
        assert any("plaintext" in r.getMessage() and "0.0.0.0:0" in r.getMessage() for r in caplog.records)
        with pytest.raises(NatsUnavailable, match="refused the credentials"):
            await connect(server.url, timeout_s=2)
    finally:
        await server.stop()


# ---- through the real daemon ----------------------------------------------------------------------------------

MATCH = """
[[watch]]
id = "backups"
kind = "match"
on = { subject = "backup.done" }
then = ["notify.console"]
"""

DEPLOY = """
[[watch]]
id = "deploy"
kind = "match"
on = { subject = "deploy.requested", key = "data.app" }
then = ["agent.remote"]
"""

AGENT = """
import json, sys
h = json.load(sys.stdin)
with open(sys.argv[1], "a") as f:
    f.write(h["id"] + "\\n")
"""


async def nats_url(d: InProcessDaemon, role: str) -> str:
    r = await d.cli("nats", "url", "--role", role)
    assert r.returncode == 0 and r.stdout.count("\n") == 1, r.stderr
    return r.stdout.strip()


async def publish_with(url: str, *subjects: str) -> None:
    nc = await connect(url, name="outside-tool")
    try:
        for subject in subjects:
            await publish_event(nc.jetstream(), make_event(subject))
    finally:
        await nc.close()


async def test_the_daemon_admits_only_its_roles_with_stable_credentials(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = await daemon_factory({"backups.toml": MATCH}).start()
    path = credentials.credentials_path(d.state_dir)
    assert path.stat().st_mode & 0o777 == 0o600
    before = path.read_bytes()
    with pytest.raises(NatsUnavailable, match="refused the credentials"):
        await connect(f"nats://127.0.0.1:{d.nats_port}", timeout_s=2)
    publish = await nats_url(d, "publish")
    assert publish.startswith("nats://publish:") and publish.endswith(f"@127.0.0.1:{d.nats_port}")
    await publish_with(publish, "backup.done")  # a plain nats-py client with the URL
    await until(lambda: len(d.handoffs("backups")) == 1, what="the event published with the URL to fire")

    await d.stop()
    await d.start()
    assert path.read_bytes() == before  # the same credentials after a restart: old URLs keep working
    await publish_with(publish, "backup.done")
    r = await d.cli("emit", "backup.done")  # the CLI as the publish role
    assert r.returncode == 0, r.stderr
    await until(lambda: len(d.handoffs("backups")) == 3, what="three fires")

    r = await d.cli("test", str(d.watches_dir / "backups.toml"), "--since", "1h", "--json")  # as the read role
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["totals"]["backups"]["fires"] == 3

    r = await d.cli("backup", "--json")
    assert r.returncode == 0, r.stderr
    with tarfile.open(json.loads(r.stdout)["data"]["path"], "r:gz") as tar:
        archived = b"".join(tar.extractfile(m).read() for m in tar if m.isfile())  # type: ignore[union-attr]
    status = (await d.cli("status", "--json")).stdout
    creds = credentials.load(d.state_dir)
    assert creds is not None
    for role in ROLES:
        secret = creds.password(role)
        assert secret.encode() not in archived
        assert secret not in d.logged() and secret not in d.printed() and secret not in status
        assert secret not in (d.state_dir / "nats" / "nats-server.log").read_text()
    await d.stop()


async def test_a_forged_handoff_is_refused_and_never_run(
    daemon_factory: Callable[..., InProcessDaemon], tmp_path: Path
) -> None:
    d = daemon_factory({"deploy.toml": DEPLOY}, extra_config='[agent.remote]\ntype = "nats"\nack_timeout = "15s"\n')
    await d.start()
    # The worker as on another machine: its own config, NATS from --nats env:NAME.
    (tmp_path / "agent.py").write_text(AGENT)
    worker_config = tmp_path / "worker.toml"
    worker_config.write_text('state_dir = "worker-state"\n[agent.remote]\ntype = "nats"\n')
    ran = tmp_path / "ran.log"
    env = {**os.environ, "WATCHD_TEST_NATS_URL": await nats_url(d, "worker")}
    cmd = [sys.executable, "-m", "watchd", "worker", "agent.remote", "--config", str(worker_config)]
    cmd += ["--nats", "env:WATCHD_TEST_NATS_URL", "--state-dir", str(tmp_path / "ws"), "--"]
    cmd += [sys.executable, str(tmp_path / "agent.py"), str(ran)]
    with open(tmp_path / "worker.stderr", "wb") as err:
        worker = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    try:
        verdicts = []
        for role in ("publish", "worker", "read"):
            nc = await connect(await nats_url(d, role), name=f"forger-{role}")
            try:
                verdicts.append(await refused(nc, HANDOFF, encode(FORGED)))
                js = nc.jetstream()
                with pytest.raises(NatsUnavailable):  # and through JetStream: never stored
                    await publish_raw(js, HANDOFF, encode(FORGED), "h_forged", timeout_s=0.5)
            finally:
                await nc.close()
        assert verdicts == [True, True, True]
        r = await d.cli("emit", "deploy.requested", "app=shop")
        assert r.returncode == 0, r.stderr

        def done() -> str | None:
            hs = d.handoffs("deploy")
            return hs[0]["id"] if hs and hs[0]["state"] == "done" else None

        real = await until(done, 30, "the real handoff to be done by the worker")
        # The worker takes handoffs in stream order: a stored forgery would have run first.
        assert ran.read_text().split() == [real]
        assert d.health()["ok"]
    finally:
        worker.terminate()
        await asyncio.to_thread(worker.wait, 10)
    await d.stop()


def test_nats_url_serves_the_embedded_server_only(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('state_dir = "state"\n[nats]\nurl = "nats://elsewhere:4222"\n')
    run = ("nats", "url", "--config", str(cfg))
    r = run_cli(*run, "--role", "publish")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("error: [nats] url names an external NATS server") and "Traceback" not in r.stderr
    r = run_cli(*run, "--role", "root")
    assert r.returncode == 2 and "'root' is not one of" in r.stderr
