"""The real daemon: emit → fire → console handoff with status/check, as a user runs them; absent
overdue on restart; reload (invalid keeps the last good definitions, valid bumps the version, SIGHUP);
SIGTERM; the state-dir lock; malformed events on the stream. No mocks: embedded nats-server, real
SQLite, real HTTP. Signals, the lock between processes and the smoke test use real processes; the
rest runs the daemon in the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.cli import run_cli, run_process
from support.inprocess import InProcessDaemon
from support.processes import DaemonProc, pid_gone
from support.project import Project
from support.waiting import until, wait_until

from watchd import bus, config
from watchd.daemon import Daemon
from watchd.engine.base import STORED
from watchd.errors import WatchdError
from watchd.model import make_event

MATCH_JOBS = """
[[watch]]
id = "jobs"
kind = "match"
on = { subject = "job.*" }
then = ["notify.console"]
"""


def test_emit_fires_console_handoff_and_status_and_check(process_factory: Callable[..., DaemonProc]) -> None:
    watch = MATCH_JOBS.replace('"job.*"', '"job.*", where = \'data.host != ":fire:"\'')
    d = process_factory({"jobs.toml": watch}).start()
    assert d.cli_process("check").returncode == 0

    emitted = d.cli_process("emit", "job.done", "exit_code=0", "host=box")
    assert emitted.returncode == 0, emitted.stderr
    event_id = emitted.stdout.split()[0]

    # printed verbatim: no rich markup or emoji codes applied to a reason
    line = '[watchd: jobs fired] job.done matched where data.host != ":fire:" | watch jobs v1 · match | fired '
    wait_until(lambda: line in d.stdout(), what="console handoff on stdout")
    wait_until(lambda: [h for h in d.handoffs("jobs") if h["state"] == "delivered"], what="handoff delivered")
    rows = [h for h in json.loads(d.cli_process("handoffs", "--json").stdout) if h["state"] == "delivered"]
    assert len(rows) == 1
    h = rows[0]
    assert (h["watch"], h["watch_version"], h["kind"], h["target"]) == ("jobs", 1, "match", "notify.console")
    assert h["id"].startswith("h_") and h["id"] in d.stdout()
    assert [e["id"] for e in h["evidence"]] == [event_id]
    assert h["evidence"][0]["data"] == {"exit_code": 0, "host": "box"}

    status = json.loads(d.cli_process("status", "--json").stdout)
    assert status["daemon"]["ok"] is True and status["daemon"]["pid"] == d.pid
    (w,) = [w for w in status["watches"] if not w["file"].startswith("<built-in>")]  # the file's one watch
    assert (w["id"], w["kind"], w["mode"], w["state"]) == ("jobs", "match", "live", "ok")
    assert w["last_fired"] and w["last_fired"].endswith("Z")
    assert status["handoffs"] == {"delivered": 1}

    assert d.term() == 0
    stopped = d.cli_process("check")
    assert stopped.returncode == 1 and "Traceback" not in stopped.stderr
    assert "no watchd answering" in stopped.stderr
    # status still works from the state files alone
    offline = json.loads(d.cli_process("status", "--json").stdout)
    assert offline["daemon"]["ok"] is False and offline["watches"][0]["last_fired"] == w["last_fired"]


async def test_absent_overdue_fires_once_on_restart_saying_late(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = await daemon_factory(
        {
            "hb.toml": """
[[watch]]
id = "hb"
kind = "absent"
expect = { subject = "hb.*" }
for = "3s"
then = ["notify.console"]
"""
        }
    ).start()
    await d.publish(make_event("hb.laptop", {"n": 1}))
    await until(lambda: d.decisions("hb", "matched"), what="heartbeat seen")
    await d.stop()
    assert d.decisions("hb", "fired") == [], "fired before the silence was over"
    seen_at = d.decisions("hb", "matched")[0]["at"]

    await d.advance(3 + 1.5)  # the silence passes while watchd is down
    assert d.clock() > seen_at + 3 + 1.5
    await d.start()
    (fired,) = await until(lambda: d.decisions("hb", "fired"), what="the overdue absent fire")
    assert "late" in fired["reason"] and "watchd was not running" in fired["reason"], fired["reason"]
    (done,) = await until(lambda: [h for h in d.handoffs("hb") if h["state"] == "delivered"], what="delivered")
    # The heartbeat, read from the state database when the key fired (the restart left it there).
    assert [e["data"] for e in done["evidence"]] == [{"n": 1}]
    await d.stop()

    await d.start()
    for _ in range(10):  # a second start must not fire it again (several engine idle rounds, a second on)
        await d.advance(0.1)
    await d.stop()
    assert len(d.decisions("hb", "fired")) == 1
    assert len(d.handoffs("hb")) == 1


async def test_an_absent_keys_evidence_is_left_in_the_store_once_committed_and_shown_when_it_fires(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    """A waiting key holds no copy of its last event once the step is committed: the fire of its
    silence reads it from the state database, the same event."""
    d = await daemon_factory(
        {
            "hb.toml": """
[[watch]]
id = "hb"
kind = "absent"
expect = { subject = "hb.*", key = "data.host" }
for = "3s"
then = ["notify.console"]
"""
        }
    ).start()
    await d.publish(make_event("hb.a", {"host": "a", "n": 1}))
    await d.publish(make_event("hb.a", {"host": "a", "n": 2}))
    await until(lambda: len(d.decisions("hb", "matched")) == 2, what="both heartbeats seen")
    await until(lambda: d.running.engine.keys["hb"]["a"].evidence is STORED, what="the evidence left in the store")
    await d.advance_until(lambda: d.handoffs("hb"), step_s=1.0, limit_s=30, what="the silence fired")
    (fired,) = await until(lambda: [h for h in d.handoffs("hb") if h["state"] == "delivered"], what="delivered")
    assert [e["data"] for e in fired["evidence"]] == [{"host": "a", "n": 2}]
    await d.stop()


async def test_reload_invalid_keeps_old_then_valid_bumps_version(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = await daemon_factory(
        {
            "jobs.toml": MATCH_JOBS,
            "meta.toml": """
[[watch]]
id = "config-invalid"
kind = "match"
on = { subject = "watchd.config.invalid" }
then = ["notify.console"]
""",
        }
    ).start()

    # 1. an invalid change: the old definition keeps firing, the problem is logged as file:line and
    # watchd.config.invalid is emitted (and watched).
    d.write_watch("jobs.toml", MATCH_JOBS.replace('kind = "match"', 'kind = "match"\nwithin = "1h"'))
    (inv,) = await until(lambda: d.handoffs("config-invalid"), what="watchd.config.invalid handoff")
    problems = inv["evidence"][0]["data"]["problems"]
    assert any(re.search(r"jobs\.toml:5:\d+: `within` is not a key of", p) for p in problems), problems
    await until(lambda: re.search(r"reload rejected: \S*jobs\.toml:5:\d+: ", d.logged()), what="file:line in log")
    assert "keeping the last good definitions" in d.logged()

    await d.publish(make_event("job.a", {"n": 1}))
    (old,) = await until(lambda: d.handoffs("jobs"), what="the old definition to fire")
    assert old["watch_version"] == 1
    assert d.health()["ok"]

    # 2. a valid change takes effect and bumps the version
    d.write_watch("jobs.toml", MATCH_JOBS.replace('"job.*"', '"job.*", where = "data.n > 1"'))
    await until(lambda: "reloaded: 2 watches" in d.logged(), what="reload")
    low, high = make_event("job.b", {"n": 1}), make_event("job.c", {"n": 2})
    await d.publish(low, high)
    await until(lambda: len(d.handoffs("jobs")) == 2, what="the new definition to fire")
    new = d.handoffs("jobs")[1]
    assert new["watch_version"] == 2 and new["evidence"][0]["id"] == high.id
    assert [x["verdict"] for x in d.decisions("jobs") if x["event_id"] == low.id] == ["where_false"]
    await d.stop()


def test_sigterm_exits_zero_quickly_and_stops_nats_and_sighup_reloads(
    process_factory: Callable[..., DaemonProc],
) -> None:
    d = process_factory({"jobs.toml": MATCH_JOBS}).start()
    d.publish(make_event("job.x"))
    wait_until(lambda: d.handoffs("jobs"), what="a fire before stopping")
    # Stop while events pour in: a fetch is in flight and a batch may be in hand.
    flood = threading.Thread(target=_flood, args=(d,), daemon=True)
    flood.start()
    wait_until(lambda: int(d.meta("last_seq") or 0) > 2000, what="the flood to be consumed")
    nats_pid = d.nats_pid()
    assert nats_pid is not None and not pid_gone(nats_pid)
    started = time.monotonic()
    assert d.term(timeout_s=10) == 0
    assert time.monotonic() - started < 10
    assert pid_gone(nats_pid), "the embedded nats-server outlived the daemon"
    err = d.stderr()
    assert "watchd stopped" in err
    assert "Traceback" not in err and "ERROR" not in err, err
    assert not (d.state_dir / "watchd.pid").exists()
    flood.join(10)

    # What was committed is consistent: one fire per consumed event, and a restart finishes the rest.
    d.start()
    top = d.stream_last_seq()
    wait_until(lambda: int(d.meta("last_seq") or 0) >= top, what="the rest of the flood")
    fired = [f["event_id"] for f in d.decisions("jobs", "fired")]
    assert len(fired) == len(set(fired)) == top

    # SIGHUP reloads, even with nothing changed (the version stays)
    before = d.stderr().count("reloaded:")
    d.signal(signal.SIGHUP)
    wait_until(lambda: d.stderr().count("reloaded:") > before, timeout_s=5, what="SIGHUP reload")
    after = make_event("job.d", {"n": 5})
    d.publish(after)
    (h,) = wait_until(lambda: [h for h in d.handoffs("jobs") if h["evidence"][0]["id"] == after.id], what="a fire")
    assert h["watch_version"] == 1
    assert d.term() == 0


def _flood(d: DaemonProc) -> None:
    async def go() -> None:
        nc = await bus.connect(d.nats_url, name="flood")
        try:
            js = nc.jetstream()
            for n in range(20_000):
                try:
                    await bus.publish_event(js, make_event("job.flood", {"n": n}), timeout_s=2)
                except Exception:  # a slow ack on a busy machine: go on; the server gone: done
                    if not nc.is_connected:
                        return
        finally:
            await nc.close()

    with contextlib.suppress(Exception):  # ends when the server goes away
        asyncio.run(go())


def test_second_daemon_on_the_same_state_dir_refuses(process_factory: Callable[..., DaemonProc]) -> None:
    d = process_factory({"jobs.toml": MATCH_JOBS}).start()
    nats_pid = d.nats_pid()
    second = run_process("run", "--config", str(d.config_path), cwd=d.root, env=d.env)
    assert second.returncode == 1
    assert f"error: another watchd (pid {d.pid}) is already running" in second.stderr, second.stderr
    # the first one is untouched: same nats-server, still firing
    assert d.nats_pid() == nats_pid and nats_pid is not None and not pid_gone(nats_pid)
    assert (d.state_dir / "watchd.pid").read_text() == str(d.pid)
    d.publish(make_event("job.x"))
    wait_until(lambda: d.handoffs("jobs"), what="the first daemon to keep firing")
    assert d.term() == 0


async def test_in_process_the_daemon_leaves_signals_alone_and_holds_the_state_dir_until_shutdown(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    d = await daemon_factory({"jobs.toml": MATCH_JOBS}).start()
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers  # signals belong to the process
    assert (d.state_dir / "watchd.pid").read_text() == str(os.getpid())

    second = Daemon(config.load(d.config_path))
    with pytest.raises(WatchdError) as refused:
        await second.start()
    assert refused.value.message.startswith(f"another watchd (pid {os.getpid()}) is already running")
    await d.publish(make_event("job.x"))
    await until(lambda: d.handoffs("jobs"), what="the first daemon to keep firing")

    await d.stop()
    assert not (d.state_dir / "watchd.pid").exists()
    await d.start()  # the state dir is free again: a restart in the same process
    assert d.health()["ok"]
    await d.stop()


def test_busy_nats_port_is_a_clear_error(tmp_path: Path) -> None:
    p = Project(tmp_path / "busy", {"jobs.toml": MATCH_JOBS})
    with socket.socket() as s:
        s.bind(("127.0.0.1", p.nats_port))
        s.listen()
        r = run_cli("run", "--config", str(p.config_path))  # `watchd run` in this process: it fails at start
    assert r.returncode == 1
    assert f"error: 127.0.0.1:{p.nats_port} is already in use" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_non_loopback_listener_without_token_refuses_to_start(tmp_path: Path) -> None:
    p = Project(tmp_path / "open", {"jobs.toml": MATCH_JOBS})
    p.config_path.write_text(p.config_path.read_text().replace(f"127.0.0.1:{p.http_port}", f"0.0.0.0:{p.http_port}"))
    r = run_cli("run", "--config", str(p.config_path))  # `watchd run` in this process: it fails at start
    assert r.returncode != 0
    assert "is not loopback but no token is set" in r.stderr
    assert "Traceback" not in r.stderr


async def test_malformed_events_on_the_stream_are_rejected_not_fatal(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = await daemon_factory({"jobs.toml": MATCH_JOBS}).start()
    await d.publish_raw("watchd.events.job.x", b"not json", "bad-1")
    await d.publish_raw("watchd.events.job.x", b"[1, 2, 3]", "bad-2")
    envelope = {"id": "bad-3", "subject": "bad subject!", "time": "2026-01-01T00:00:00Z", "data": {}}
    await d.publish_raw("watchd.events.job.x", json.dumps(envelope).encode(), "bad-3")
    envelope = {"id": "bad-4", "subject": "job.x", "time": "2026-01-01T00:00:00Z", "data": [1]}
    await d.publish_raw("watchd.events.job.x", json.dumps(envelope).encode(), "bad-4")
    good = make_event("job.ok")
    await d.publish(good)

    (h,) = await until(lambda: d.handoffs("jobs"), what="the good event to fire")
    assert h["evidence"][0]["id"] == good.id
    rejected = d.decisions("", "rejected")
    assert [r["event_id"] for r in rejected] == ["bad-1", "bad-2", "bad-3", "bad-4"]
    reasons = [r["reason"] for r in rejected]
    assert "not valid JSON" in reasons[0]
    assert "malformed event" in reasons[1]
    assert "bad subject 'bad subject!'" in reasons[2]
    assert "malformed event" in reasons[3] and "data" in reasons[3]
    assert all(r["seq"] for r in rejected)
    health = d.health()
    assert health["ok"] and health["events"] == 1
    await d.stop()
