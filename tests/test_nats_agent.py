"""The `nats` agent and `watchd worker`, against a real nats-server: the runner with a tiny in-test
worker, `watchd worker` as a real subprocess (including a kill after the work was done), and one
handoff through the real daemon (in the test's event loop) to such a worker and back."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner
from nats.aio.client import Client
from nats.aio.msg import Msg
from support.cli import run_cli
from support.handoffs import make_handoff
from support.inprocess import InProcessDaemon
from support.waiting import until

from watchd.agents.nats import NatsRunner, Reply, follow_replies, last_reply, reply_subject, send_reply
from watchd.bus import HANDOFFS_STREAM, EmbeddedNats, ensure_streams
from watchd.cli import cli
from watchd.config import NatsAgent
from watchd.dispatch import Dead, Delivered, Retry
from watchd.model import Handoff, encode, make_event
from watchd.notify.http_client import HttpClient
from watchd.store import Store
from watchd.store.outbox import read_handoffs
from watchd.store.worker_record import DoneRecord
from watchd.targets import build_targets

TARGET = "agent.claw"
SUBJECT = "watchd.handoffs.agent.claw"


def handoff(hid: str, key: str | None = None, target: str = TARGET) -> Handoff:
    return make_handoff(
        id=hid, watch="deploy", key=key, target=target, reason="deploy requested", fired_at="2026-11-22T02:00:00Z"
    )


def runner(nc: Client, ack_timeout_s: float = 5.0) -> NatsRunner:
    return NatsRunner(NatsAgent(), name=TARGET, js=nc.jetstream(), nc=nc, ack_timeout_s=ack_timeout_s)


async def stored_handoffs(nc: Client, subject: str = SUBJECT) -> int:
    info = await nc.jetstream().stream_info(HANDOFFS_STREAM, subjects_filter=subject)
    return int((info.state.subjects or {}).get(subject, 0))


class TinyWorker:
    """Answers each handoff as `modes[id]` says: accept, done, reject, noise (garbage, then done), silent."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.modes: dict[str, str] = {}
        self.seen: list[str] = []

    async def __aenter__(self) -> TinyWorker:
        self.sub = await self.nc.subscribe(SUBJECT, cb=self._on)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.sub.unsubscribe()

    async def _on(self, msg: Msg) -> None:
        h = msgspec.json.decode(msg.data, type=Handoff)
        self.seen.append(h.id)
        mode = self.modes.get(h.id, "silent")
        if mode == "noise":
            await self.nc.publish(reply_subject(h.id), b"not json")
            mode = "done"
        status = {"accept": "accepted", "done": "done", "reject": "rejected"}.get(mode)
        if status is not None:
            await self.nc.publish(reply_subject(h.id), encode(Reply(id=h.id, status=status, detail=f"{mode} by tiny")))


@pytest.fixture
async def js_ready(nats_client: Client) -> Client:
    await ensure_streams(nats_client.jetstream())
    return nats_client


async def test_runner_maps_each_reply_to_an_outcome(js_ready: Client) -> None:
    nc = js_ready
    async with TinyWorker(nc) as w:
        w.modes.update({"h_acc": "accept", "h_done": "done", "h_rej": "reject", "h_noise": "noise"})
        r = runner(nc, ack_timeout_s=0.3)
        started = time.monotonic()
        acc, done, rej, noise, silent = await asyncio.gather(
            *(r.deliver(handoff(h)) for h in ("h_acc", "h_done", "h_rej", "h_noise", "h_silent"))
        )
        assert time.monotonic() - started < 2
    assert acc == Delivered("accept by tiny", state="accepted")
    assert done == Delivered("done by tiny", state="done")
    assert rej == Dead("rejected by worker: reject by tiny")
    assert noise == Delivered("done by tiny", state="done")  # the malformed reply is skipped
    assert isinstance(silent, Retry) and silent.detail.startswith("no worker replied within 300ms")
    assert "watchd worker agent.claw" in silent.detail
    assert sorted(w.seen) == ["h_acc", "h_done", "h_noise", "h_rej", "h_silent"]
    # The handoff travelled as the handoff object, on the target's subject, with its id as Nats-Msg-Id.
    raw = await nc.jetstream().get_last_msg(HANDOFFS_STREAM, SUBJECT)
    assert raw.headers and raw.headers["Nats-Msg-Id"] == msgspec.json.decode(raw.data or b"")["id"]


async def test_a_retry_is_stored_once_a_done_handoff_is_not_sent_again_and_a_replay_is(js_ready: Client) -> None:
    nc, js = js_ready, js_ready.jetstream()
    async with TinyWorker(nc) as w:
        r = runner(nc, ack_timeout_s=0.2)
        first, second = [await r.deliver(handoff("h_1")) for _ in range(2)]
        assert isinstance(first, Retry) and isinstance(second, Retry)
        assert await stored_handoffs(nc) == 1  # the retry was a duplicate: one message in the stream
        # A worker that turns up late takes it from the stream and finishes it ...
        await send_reply(js, "h_1", "done", "exit 0: late but done", 1)
        # ... so the next retry finds that and does not send it again.
        assert await r.deliver(handoff("h_1")) == Delivered("exit 0: late but done", state="done")
        assert await stored_handoffs(nc) == 1

        # A rejection dead-letters; delivering it again (`watchd dlq replay`) is a new message for
        # the workers, and the replay's own retry is again stored once.
        w.modes["h_2"] = "reject"
        assert await r.deliver(handoff("h_2")) == Dead("rejected by worker: reject by tiny")
        w.modes["h_2"] = "silent"
        assert isinstance(await r.deliver(handoff("h_2")), Retry)
        w.modes["h_2"] = "done"
        assert await r.deliver(handoff("h_2")) == Delivered("done by tiny", state="done")
    assert w.seen == ["h_1", "h_1", "h_2", "h_2", "h_2"]  # core subscribers see the duplicates too
    assert await stored_handoffs(nc) == 3  # h_1 once, h_2 once and once more for the replay


async def test_build_targets_makes_a_nats_runner_with_the_connection(
    js_ready: Client, tmp_path: Path, http: HttpClient
) -> None:
    from watchd.config import load

    cfg = tmp_path / "watchd.toml"
    cfg.write_text('[agent.claw]\ntype = "nats"\nack_timeout = "45s"\n')
    target = build_targets(load(cfg), http=http, nc=js_ready, js=js_ready.jetstream())["agent.claw"]
    assert isinstance(target, NatsRunner) and target.ack_timeout_s == 45 and target.subject == SUBJECT
    ok, detail = await target.probe()
    assert not ok and "watchd worker agent.claw" in detail
    bad = tmp_path / "bad.toml"
    bad.write_text('[agent.claw]\ntype = "nats"\nack_timeout = "soon"\n')
    from watchd.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load(bad)
    assert "bad.toml:3:" in info.value.problems[0] and "soon" in info.value.problems[0]


async def test_late_replies_are_recorded_in_the_outbox(js_ready: Client, tmp_path: Path) -> None:
    js = js_ready.jetstream()
    store = Store(tmp_path / "w.db")
    states = {
        "h_acc": "accepted",
        "h_retry": "retrying",
        "h_dead": "dead",
        "h_dropped": "dropped",
        "h_twice": "accepted",
        "h_busy": "delivering",
    }
    hs = [handoff(h) for h in states]
    store.commit_step(last_seq=1, clock=1.0, changes=([], [], set()), decisions=[], handoffs=hs, subjects={}, now=1.0)
    for hid, state in states.items():
        store.finish(hid, state, 2.0, None)
    for hid, status in [
        ("h_acc", "done"),
        ("h_retry", "accepted"),
        ("h_dead", "done"),
        ("h_dropped", "done"),
        ("h_twice", "rejected"),
        ("h_twice", "done"),
        ("h_busy", "done"),
    ]:
        await send_reply(js, hid, status, f"{status} later", 1)
    stop = asyncio.Event()
    task = asyncio.create_task(follow_replies(js, store, stop, clock=lambda: 3.0, fetch_wait_s=0.2))

    async def now() -> dict[str, str]:  # through the store's own thread, which the follower writes on
        return {h.id: h.state for h in await store.call(read_handoffs)}

    expected = {
        "h_acc": "done",
        "h_retry": "accepted",
        "h_dead": "done",
        "h_dropped": "dropped",
        "h_twice": "done",
        "h_busy": "delivering",
    }
    await until(lambda: _equal(now(), expected), 5, "late replies recorded")
    await store.run(store.finish, "h_busy", "accepted", 4.0, "accepted by a worker")  # the delivery ends ...
    await until(lambda: _equal(now(), {**expected, "h_busy": "done"}), 5, "... and the reply held back lands")
    stop.set()
    await task
    # h_twice: its rejection is superseded by the later done, and is never applied on its own.
    twice = [s for (s,) in store.conn.execute("SELECT state FROM transitions WHERE handoff_id = 'h_twice'")]
    assert twice == ["pending", "accepted", "done"]
    store.close()


async def _equal(got: Any, want: dict[str, str]) -> bool:
    return bool(await got == want)


# ---- `watchd worker` as a real subprocess --------------------------------------------------------------

AGENT = """
import json, os, signal, sys
h = json.load(sys.stdin)
with open(sys.argv[1], "a") as f:
    f.write(f"{h['id']} {h['key']} {os.environ['WATCHD_HANDOFF_ID']} {os.environ['WATCHD_ATTEMPT']}\\n")
if h["key"] == "no":
    print("not mine")
    sys.exit(75)
if h["key"] == "freeze":  # freeze NATS: the worker finishes and then hangs on the `done` reply
    os.kill(int(sys.argv[2]), signal.SIGSTOP)
attempt = int(os.environ["WATCHD_ATTEMPT"])
if h["key"] == "broken" or (h["key"] == "flaky" and attempt == 1):
    print("boom", attempt)
    sys.exit(3)
if h["key"] == "slow" and attempt == 1:
    import time
    time.sleep(30)
print("handled", h["id"])
"""


class WorkerProc:
    def __init__(self, root: Path, config_path: Path, target: str, *args: str) -> None:
        self.root, self.config_path, self.target, self.args = root, config_path, target, args
        self.state_dir = root / "worker-state"
        self.log = root / "agent.log"
        self.script = root / "agent.py"
        self.script.write_text(AGENT)
        self.stderr_path = root / "worker.stderr"
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *extra: str) -> subprocess.Popen[bytes]:
        cmd = [
            sys.executable,
            "-m",
            "watchd",
            "worker",
            self.target,
            "--config",
            str(self.config_path),
            "--state-dir",
            str(self.state_dir),
            "--ack-wait",
            "1s",
            *extra,
            "--",
            sys.executable,
            str(self.script),
            str(self.log),
            *self.args,
        ]
        with open(self.stderr_path, "ab") as err:
            p = subprocess.Popen(cmd, cwd=self.root, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        self.procs.append(p)
        return p

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def runs(self) -> list[list[str]]:
        return [line.split() for line in self.log.read_text().splitlines()] if self.log.exists() else []

    def done_ids(self) -> set[str]:
        db = self.state_dir / "worker-agent-claw.db"
        if not db.exists():
            return set()
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return {r[0] for r in conn.execute("SELECT id FROM done")}
        except sqlite3.OperationalError:
            return set()
        finally:
            conn.close()

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


@pytest.fixture
async def remote(js_ready: Client, nats_server: EmbeddedNats, tmp_path: Path) -> AsyncIterator[WorkerProc]:
    cfg = tmp_path / "worker.toml"
    cfg.write_text(f'state_dir = "state"\n[nats]\nurl = "{nats_server.url}"\n[agent.claw]\ntype = "nats"\n')
    w = WorkerProc(tmp_path, cfg, TARGET, str(nats_server.pid))
    try:
        yield w
    finally:
        w.cleanup()


async def reply_of(nc: Client, hid: str) -> Reply | None:
    stored = await last_reply(nc.jetstream(), hid)
    return None if stored is None else stored.reply


async def test_worker_runs_each_handoff_once_and_replies_done_or_rejected(js_ready: Client, remote: WorkerProc) -> None:
    nc = js_ready
    r = runner(nc, ack_timeout_s=15)
    proc = remote.start()
    yes, no = handoff("h_yes", key="yes"), handoff("h_no", key="no")
    accepted = await r.deliver(yes)  # waits in the stream until the worker is up
    assert isinstance(accepted, Delivered) and accepted.state == "accepted"
    assert accepted.detail.startswith("accepted by ") and f"pid {proc.pid}" in accepted.detail
    done = await until(lambda: _status(nc, "h_yes", "done"), what="h_yes done")
    assert done.detail == "exit 0: handled h_yes"
    assert isinstance(await r.deliver(no), Delivered)
    rejected = await until(lambda: _status(nc, "h_no", "rejected"), what="h_no rejected")
    assert rejected.detail == "not mine"
    # Delivered again (a retry after a daemon restart): answered from the stored reply, not re-run.
    assert await r.deliver(yes) == Delivered("exit 0: handled h_yes", state="done")
    assert remote.runs() == [["h_yes", "yes", "h_yes", "1"], ["h_no", "no", "h_no", "1"]]
    assert remote.done_ids() == {"h_yes"}
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 10) == 0
    assert time.monotonic() - started < 3
    assert "worker stopped after 2 handoff(s)" in remote.stderr()


async def _status(nc: Client, hid: str, status: str) -> Reply | None:
    reply = await reply_of(nc, hid)
    return reply if reply is not None and reply.status == status else None


async def test_a_handoff_done_before_the_worker_was_killed_is_not_run_again(
    js_ready: Client, remote: WorkerProc, nats_server: EmbeddedNats
) -> None:
    nc = js_ready
    assert nats_server.pid is not None
    first = remote.start()
    try:
        outcome = await runner(nc, ack_timeout_s=15).deliver(handoff("h_frz", key="freeze"))
        assert isinstance(outcome, Delivered) and outcome.state == "accepted"
        # The command ran and froze NATS; the worker records `done`, then hangs on the reply: kill it
        # there, before it could ack, as a crash or a lost connection would.
        await until(lambda: "h_frz" in remote.done_ids(), what="the worker to record h_frz as done")
        first.kill()
        await asyncio.to_thread(first.wait, 10)
    finally:
        os.kill(nats_server.pid, signal.SIGCONT)
    second = remote.start()
    await until(lambda: "h_frz was already done here" in remote.stderr(), 15, "the redelivery to the new worker")
    await until(lambda: _settled_consumer(nc), 5, "the redelivered handoff acked")
    assert [run[0] for run in remote.runs()] == ["h_frz"]  # run once, across the kill
    assert await reply_of(nc, "h_frz") == Reply(id="h_frz", status="done", detail="exit 0: handled h_frz")
    second.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(second.wait, 10) == 0


async def test_a_failed_run_is_retried_by_redelivery_and_given_up_after_max_attempts(
    js_ready: Client, remote: WorkerProc
) -> None:
    nc = js_ready
    r = runner(nc, ack_timeout_s=15)
    remote.start("--max-attempts", "2")
    outcomes = await asyncio.gather(r.deliver(handoff("h_flaky", "flaky")), r.deliver(handoff("h_broken", "broken")))
    assert all(isinstance(o, Delivered) and o.state == "accepted" for o in outcomes)
    done = await until(lambda: _status(nc, "h_flaky", "done"), 15, "h_flaky done on its second delivery")
    assert done.detail == "exit 0: handled h_flaky"
    gave_up = await until(lambda: _status(nc, "h_broken", "rejected"), 15, "h_broken given up")
    assert gave_up.detail == "gave up after 2 attempts: exit 3: boom 2"
    assert sorted(remote.runs()) == [[h, h[2:], h, n] for h in ("h_broken", "h_flaky") for n in ("1", "2")]
    assert remote.done_ids() == {"h_flaky"}
    assert "h_flaky failed (exit 3: boom 1); retrying in" in remote.stderr()


async def test_sigterm_lets_the_grace_run_out_then_stops_the_command_and_hands_it_back(
    js_ready: Client, remote: WorkerProc
) -> None:
    nc = js_ready
    first = remote.start("--grace", "300ms")
    assert isinstance(await runner(nc, ack_timeout_s=15).deliver(handoff("h_slow", key="slow")), Delivered)
    await until(lambda: remote.runs(), 10, "the slow command to start")
    started = time.monotonic()
    first.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(first.wait, 10) == 0
    assert time.monotonic() - started < 4  # grace, then the group is stopped: not the command's 30 s
    assert "waiting up to 300ms for 1 running handoff(s)" in remote.stderr()
    remote.start()  # nak'd at once: the next worker takes it (delivery 2) and finishes it
    await until(lambda: _status(nc, "h_slow", "done"), 15, "h_slow done by the next worker")
    assert [run[3] for run in remote.runs()] == ["1", "2"]


async def _settled_consumer(nc: Client) -> Any:
    info = await nc.jetstream().consumer_info(HANDOFFS_STREAM, "worker-agent-claw")
    return info if info.num_ack_pending == 0 and info.num_pending == 0 else None


async def test_the_done_record_runs_its_sqlite_off_the_event_loop(tmp_path: Path) -> None:
    """Each write waits for the disk (synchronous=FULL): on the event loop it would hold up every
    other handoff's replies, acks and in-progress pings."""
    record = await DoneRecord.open(tmp_path / "w" / "worker-agent-claw.db")
    threads: set[int] = set()
    await record.call(lambda conn: conn.set_trace_callback(lambda _sql: threads.add(threading.get_ident())))
    await record.put("h_1", "exit 0", 100.0)
    await record.put("h_2", "exit 0", 300.0)
    assert await record.get("h_1") == "exit 0" and await record.get("h_3") is None
    assert await record.prune(200.0) == 1
    assert await record.get("h_1") is None and await record.get("h_2") == "exit 0"
    await asyncio.to_thread(record.close)
    assert threads and threading.get_ident() not in threads  # every statement ran, none on the loop's thread


def test_worker_help_has_an_example_and_bad_input_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "w.toml"
    cfg.write_text('[nats]\nurl = "nats://127.0.0.1:1"\n')
    result = CliRunner().invoke(cli, ["worker", "--help"])
    assert result.exit_code == 0 and "watchd worker agent.claw -- my-agent handle --stdin" in result.output
    cases = [
        (["bad target!", "--", "true"], "error: bad target 'bad target!'"),
        (["agent.claw", "--", "no-such-program-xyz"], "error: command not found: no-such-program-xyz"),
    ]
    for args, message in cases:
        p = run_cli("worker", "--config", str(cfg), *args)
        assert p.returncode == 1 and message in p.stderr and "Traceback" not in p.stderr, p.stderr


# ---- through the real daemon -------------------------------------------------------------------------------

WATCH = """
[[watch]]
id = "deploy"
kind = "match"
on = { subject = "deploy.requested", key = "data.app" }
then = ["agent.remote"]
"""


async def test_a_handoff_reaches_a_remote_worker_and_is_done_exactly_once(
    daemon_factory: Callable[..., InProcessDaemon], tmp_path: Path
) -> None:
    d = daemon_factory({"deploy.toml": WATCH}, extra_config='[agent.remote]\ntype = "nats"\nack_timeout = "15s"\n')
    await d.start()
    w = WorkerProc(tmp_path, d.config_path, "agent.remote", "0")
    try:
        w.start()
        await d.publish(make_event("deploy.requested", {"app": "shop"}, id="ev-1"))
        await d.publish(make_event("deploy.requested", {"app": "shop"}, id="ev-1"))  # a re-sent event: stored once

        def done() -> dict[str, Any] | None:
            hs = d.handoffs("deploy")
            return hs[0] if hs and hs[0]["state"] == "done" else None

        h = await until(done, 20, "the handoff to be done by the remote worker")
        assert d.states(h["id"]) == ["pending", "delivering", "accepted", "done"]
        assert len(d.handoffs("deploy")) == 1 and h["attempt"] == 1
        assert w.runs() == [[h["id"], "shop", h["id"], "1"]]
        listed = json.loads((await d.cli("handoffs", "--json")).stdout)
        assert [(x["id"], x["state"]) for x in listed] == [(h["id"], "done")]
        await d.stop()  # the replies consumer stops with the daemon
    finally:
        w.cleanup()
