"""Health tells the truth about storing events, and storing recovers without a restart.

/healthz, `watchd check` and the systemd watchdog message are unhealthy while events cannot be
stored — the state database refuses writes (an injected write error), the
event stream does not answer (its server frozen), or the disk is really full (a small tmpfs, where
the machine allows one) — and healthy again, with every event decided once, when storing works.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from typing import Any

import aiohttp
from support.disks import fill, free, small_disk
from support.inprocess import InProcessDaemon
from support.project import stream_events
from support.waiting import until

from watchd import bus, storage
from watchd.model import make_event

MATCH = '[[watch]]\nid = "m"\nkind = "match"\non = { subject = "job.done" }\nthen = ["notify.console"]\n'
JSON = {"Content-Type": "application/json"}
# The scheduler's own writes are not what these tests are about.
NO_SCHEDULES = "".join(f"[schedule.{name}]\nenabled = false\n" for name in ("heartbeat", "backup", "canary"))


async def post(d: InProcessDaemon, subject: str, data: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        url = f"{d.http_url}/events/{subject}"
        async with session.post(url, json=data or {}, headers=JSON, timeout=aiohttp.ClientTimeout(total=30)) as resp:
            return resp.status, await resp.json()


async def healthz(d: InProcessDaemon) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(f"{d.http_url}/healthz") as resp:
        return resp.status, await resp.json()


def refuse_writes(d: InProcessDaemon, refuse: bool) -> Callable[[], None]:
    """The daemon's own connection refuses every write (an injected write error: SQLite raises as
    it does for a full disk, and rolls the transaction back), or accepts them again."""
    store = d.running.store
    assert store is not None
    return lambda: store.conn.execute(f"PRAGMA query_only = {int(refuse)}") and None


def short_publish_timeout(d: InProcessDaemon) -> Callable[[], None]:
    """A store that cannot store does not answer: each publish, the probe's too, fails only at its
    timeout. One second finds that as surely as the default five; the returned function puts the
    default back, so that storing again is checked with the daemon's own setting."""
    publisher = d.running.publisher
    assert publisher is not None
    default_s, publisher.timeout_s = publisher.timeout_s, 1.0

    def restore() -> None:
        publisher.timeout_s = default_s

    return restore


def fired_for(d: InProcessDaemon, n: int) -> bool:
    return any(e["data"].get("n") == n for h in d.handoffs("m") for e in h["evidence"])


async def test_a_state_database_that_refuses_writes_is_unhealthy_and_recovers_without_a_restart(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = await daemon_factory({"w.toml": MATCH}, extra_config=NO_SCHEDULES).start()
    store = d.running.store
    assert store is not None
    await store.run(refuse_writes(d, True))
    await d.publish(make_event("job.done", {"n": 1}))
    await until(lambda: not d.health()["storage"], what="the failed commit to show in health")
    await d.advance(60)  # long past the engine loop's stall limit: it is waiting for the disk, not wedged
    status, health = await healthz(d)
    assert status == 503 and health["storage"] is False and health["engine"] is True
    assert "readonly" in health["storage_problems"]["state"]["reason"]
    code, _, err = await d.cli("check")
    assert code == 1 and "storage not ok" in err and "readonly" in err
    first = d.running.watchdog_message()  # within the grace for its own recovery: still alive
    assert first.startswith("WATCHDOG=1\nSTATUS=cannot write the state database: "), first
    d.running.storage_grace_s = 0  # past it: systemd should restart what cannot store
    assert d.running.watchdog_message() == ""  # no ping, and the status already said why
    d.running.storage_grace_s = 120

    await store.run(refuse_writes(d, False))
    await until(lambda: d.health()["ok"], what="health to recover")
    assert d.running.watchdog_message() == "WATCHDOG=1\nSTATUS=watching"
    await until(lambda: len(d.handoffs("m")) == 1, what="the event to be decided")
    assert d.running.failure is None
    assert (await d.cli("check")).returncode == 0
    assert len(d.handoffs("m")) == 1  # decided once, though its commit was tried many times


async def test_a_stream_that_cannot_store_is_unhealthy_and_recovers_without_a_restart(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = await daemon_factory({"w.toml": MATCH}).start()
    pid = d.nats_pid()
    assert pid is not None
    d.running.storage.restart_after_s = 3600  # this test is about the probe, not the server restart
    restore = short_publish_timeout(d)
    os.kill(pid, signal.SIGSTOP)  # the server keeps its connections but stores nothing
    try:
        status, body = await post(d, "job.done", {"n": 1})
        assert status == 503, body
        assert d.health()["nats"] is True  # connected: before, health was "ok" here
        status, health = await healthz(d)
        assert status == 503 and health["storage"] is False and "stream" in health["storage_problems"]
        async with aiohttp.ClientSession() as session, session.get(f"{d.http_url}/metrics") as resp:
            text = await resp.text()
        assert "watchd_storage_ok 0.0" in text and "watchd_up 0.0" in text
        code, _, err = await d.cli("check")
        assert code == 1 and "storage not ok" in err
    finally:
        os.kill(pid, signal.SIGCONT)
        restore()
    await until(lambda: d.health()["ok"], what="the probe to find the stream storing again")
    status, body = await post(d, "job.done", {"n": 2})
    assert status == 202, body
    # The refused event may still have been stored once the server ran again (the client was told
    # 503, and would re-send with the same id): what counts is that the new one fires.
    await until(lambda: fired_for(d, 2), what="the event after recovery to fire")
    assert len(d.handoffs("m")) in (1, 2)
    assert d.nats_pid() == pid  # recovered without restarting anything


async def test_watchd_starts_on_a_small_disk_with_a_stream_sized_to_it(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = daemon_factory({"w.toml": MATCH})
    with small_disk(d.state_dir, 64):
        await d.start()  # the EVENTS stream asked for 1 GiB and failed below ~1.4 GB free
        nc = await bus.connect(d.nats_url)
        try:
            info = await nc.jetstream().stream_info(bus.EVENTS_STREAM)
        finally:
            await nc.close()
        assert 8 << 20 < info.config.max_bytes <= 16 << 20  # a quarter of what was free
        await d.stop()


async def test_a_stream_larger_than_the_disk_fails_start_with_the_true_reason(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = daemon_factory({"w.toml": MATCH}, extra_config="")
    d.config_path.write_text(d.config_path.read_text().replace("[http]", "events_max_bytes = 562949953421312\n[http]"))
    try:
        await d.start()
    except bus.NatsUnavailable as exc:
        assert "EVENTS" in exc.message
        assert exc.hint is not None
        assert f"the disk holding {d.state_dir / 'nats'} has" in exc.hint and "free" in exc.hint
        assert "512.0 TiB" in exc.hint or "asks for" in exc.hint
        assert "another stream" not in exc.hint
    else:
        raise AssertionError("a 512 TiB stream started")


async def test_a_full_disk_is_unhealthy_and_recovers_once_space_returns_without_a_restart(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = daemon_factory({"w.toml": MATCH})
    with small_disk(d.state_dir, 64) as disk:
        await d.start()  # with the default restart_after_s (30 s): a full disk is not waited for
        status, _ = await post(d, "job.done", {"n": 0})
        assert status == 202
        await until(lambda: len(d.handoffs("m")) == 1, what="the first event to fire")
        # A store on a full disk does not answer either; short timeouts let probes run in the pause.
        restore = short_publish_timeout(d)
        fill(disk)
        statuses = []
        for n in range(1, 6):  # the last page a file already holds may take an event or two
            status, body = await post(d, "job.done", {"n": n, "pad": "x" * 8192})  # a page or two each
            statuses.append(status)
            if status == 503:
                break
        assert statuses[-1] == 503, statuses
        await until(lambda: not d.health()["storage"], what="health to show the full disk")
        assert (await d.cli("check")).returncode == 1
        await asyncio.sleep(1.5)  # probes meanwhile: still full, so no restart can help
        assert d.health()["storage"] is False and d.running.storage.server_restarts == 0
        assert free(disk) > storage.MIN_FREE_TO_RESTART
        restore()
        await until(lambda: d.health()["ok"], timeout_s=20, what="storing to work again once space is back")
        assert d.running.storage.recovered_total >= 1
        status, body = await post(d, "job.done", {"n": 9})
        assert status == 202, body
        await until(lambda: fired_for(d, 9), what="the event after recovery to fire")
        ns = [e["data"]["n"] for h in d.handoffs("m") for e in h["evidence"]]
        assert len(ns) == len(set(ns))  # none twice
        assert (await d.cli("check")).returncode == 0
        assert d.running.failure is None
        await d.stop()


async def test_a_source_that_cannot_store_its_event_makes_the_daemon_unhealthy_until_it_can(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    source = '[source.inbox]\ntype = "file"\npaths = ["inbox/*.pdf"]\nsubject = "files.scans"\ndebounce = "100ms"\n'
    d = daemon_factory(extra_config=source)
    inbox = d.root / "inbox"
    inbox.mkdir()
    await d.start()
    await until(lambda: (d.state_dir / "sources" / "inbox.json").exists(), what="the first scan")
    d.running.storage.restart_after_s = 3600  # the probe's recovery, not the server restart
    pid = d.nats_pid()
    assert pid is not None
    restore = short_publish_timeout(d)
    os.kill(pid, signal.SIGSTOP)
    try:
        (inbox / "scan.pdf").write_bytes(b"%PDF-1")
        await until(lambda: not d.health()["storage"], what="the source's failed publish to show in health")
    finally:
        os.kill(pid, signal.SIGCONT)
        restore()
    await until(lambda: d.health()["ok"], what="health to recover")
    stored = await until(lambda: stored_from(d, "inbox"), what="the file's event, stored once the source retried")
    assert [e["data"]["event"] for e in stored] == ["created"]  # stored once, whatever was re-sent


async def stored_from(d: InProcessDaemon, source: str) -> list[dict[str, Any]]:
    return [e for e in await stream_events(d.nats_url) if e["source"] == source]
