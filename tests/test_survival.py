"""The daemon outlives what used to stop it: its nats-server killed and restarted, its NATS
connection closed for good by nats-py (a protocol error), a commit that fails unexpectedly. Events keep
flowing, each is handed off once, and /healthz says unhealthy only while the core is affected. A
reload builds the notifiers and agents anew and swaps them in."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import pytest
from support.fakes import FakeWebhook
from support.inprocess import InProcessDaemon
from support.waiting import until

from watchd.link import Connection
from watchd.model import Event, make_event

JOBS = """
[[watch]]
id = "jobs"
kind = "match"
on = { subject = "job.*" }
then = ["notify.console"]
"""


def handed_off(d: InProcessDaemon) -> list[str]:
    return sorted(h["evidence"][0]["id"] for h in d.handoffs("jobs"))


async def publish_until_stored(d: InProcessDaemon, *events: Event) -> None:
    """Publish (with its own client) until NATS stores them: the server may still be starting."""

    async def stored() -> bool:
        try:
            await d.publish(*events)
        except Exception:  # the server is not back yet
            return False
        return True

    await until(stored, timeout_s=30, what="NATS to store the events")


async def test_events_flow_again_after_the_embedded_nats_server_is_killed(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = await daemon_factory({"jobs.toml": JOBS}).start()
    daemon = d.running
    assert daemon.embedded is not None and daemon.embedded.pid is not None
    await d.publish(make_event("job.a", id="before"))
    await until(lambda: handed_off(d) == ["before"], what="the first handoff")

    old = daemon.embedded.pid
    os.kill(old, signal.SIGKILL)
    await until(lambda: daemon.embedded and daemon.embedded.pid not in (None, old), what="a new nats-server")
    await publish_until_stored(d, make_event("job.b", id="after"))
    await until(lambda: handed_off(d) == ["after", "before"], what="the handoff after the restart")
    await until(lambda: d.health()["ok"], what="healthy again")
    await d.stop()


async def test_a_connection_nats_py_closed_for_good_is_opened_again_and_the_engine_binds_again(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = await daemon_factory({"jobs.toml": JOBS}).start()
    nc = d.running.nc
    assert isinstance(nc, Connection)
    await d.publish(make_event("job.a", id="before"))
    await until(lambda: handed_off(d) == ["before"], what="the first handoff")

    # A subject longer than the server's control line: the server answers -ERR and nats-py closes
    # the connection for good (what one oversized request did to the daemon before).
    await nc.publish("watchd.events." + "x" * 9000, b"{}")
    await until(lambda: nc.reopens == 1, what="the connection to be opened again")
    assert nc.is_connected
    await publish_until_stored(d, make_event("job.b", id="after"))
    await until(lambda: handed_off(d) == ["after", "before"], what="a handoff on the reopened connection")
    await until(lambda: d.health()["ok"], what="healthy again")
    assert "NATS closed the connection" in d.logged()
    assert "opening it again" in d.logged()
    await d.stop()


async def test_a_failed_commit_is_retried_from_the_committed_state_and_hands_off_once(
    daemon_factory: Callable[..., InProcessDaemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    d = await daemon_factory({"jobs.toml": JOBS}).start()
    daemon = d.running
    store = daemon.store
    assert store is not None
    real = store.commit_step
    fail = {"left": 2}

    def flaky_commit(**kw: object) -> object:
        if kw.get("last_seq") is not None and fail["left"] > 0:
            fail["left"] -= 1
            # Not a disk error (those the storage layer retries in place): a fault nobody planned for.
            raise RuntimeError("commit failed")
        return real(**kw)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "commit_step", flaky_commit)
    await d.publish(*(make_event("job.x", id=f"ev-{n}") for n in range(5)))
    await until(lambda: len(handed_off(d)) == 5, what="every event handed off")
    assert handed_off(d) == [f"ev-{n}" for n in range(5)]
    stats = daemon.upkeep.stats["engine"]
    # The handoffs are visible as soon as the round commits them; the round is counted as it ends.
    await until(lambda: not stats.failing, what="the engine's round to end well")
    assert stats.failures == 2 and stats.last_error == "RuntimeError: commit failed"
    assert d.health()["ok"]
    metrics = daemon.metrics.exposition().decode()
    assert 'watchd_task_failures_total{task="engine"} 2.0' in metrics
    assert 'watchd_task_failing{task="engine"} 0.0' in metrics
    assert 'watchd_task_restarts_total{task="dispatcher"} 0.0' in metrics
    await d.stop()


async def test_a_reload_builds_the_notifiers_it_adds_and_swaps_them_in(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    async with FakeWebhook() as hook:
        d = await daemon_factory({"jobs.toml": JOBS}).start()
        old = d.running.targets
        # A notifier added by a reload, and a watch that hands off to it: the handoff must reach it,
        # not die with "no target named notify.hook".
        d.write_config(f'[notify.hook]\ntype = "webhook"\nurl = "{hook.hook_url}"\n')
        d.write_watch("hook.toml", JOBS.replace('"jobs"', '"to-hook"').replace("notify.console", "notify.hook"))
        d.running.request_reload()
        await until(lambda: "notify.hook" in d.running.targets, what="the reload to build notify.hook")
        assert d.running.targets is not old and d.running.dispatcher is not None
        assert d.running.dispatcher.targets is d.running.targets
        assert d.running.targets["notify.console"] is not old["notify.console"]
        await d.publish(make_event("job.x", id="to-the-new-notifier"))
        await until(lambda: hook.handoff_ids, what="the handoff at the notifier the reload added")
        await until(lambda: [h["state"] for h in d.handoffs("to-hook")] == ["delivered"], what="it delivered")
        await d.stop()
