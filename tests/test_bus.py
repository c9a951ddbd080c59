"""bus.py against a real nats-server from the wheel: no mocks of the broker."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import time
from pathlib import Path

import pytest
from nats.aio.client import Client
from support.project import free_port
from support.waiting import until

from watchd.bus import (
    EVENTS_STREAM,
    HANDOFFS_STREAM,
    EmbeddedNats,
    EventConsumer,
    connect,
    ensure_streams,
    nats_server_binary,
    pending_after,
    publish_event,
    publish_raw,
    redact_url,
    seq_of,
    time_of,
    times_delivered,
)
from watchd.errors import NatsUnavailable
from watchd.model import HANDOFFS_PREFIX, decode_event, make_event
from watchd.upkeep import Upkeep


def test_binary_is_located() -> None:
    path = nats_server_binary()
    assert path.name == "nats-server"
    assert path.is_file() and os.access(path, os.X_OK)


async def test_start_writes_private_config_and_stop_frees_port(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats", listen="127.0.0.1:0")
    url = await server.start()
    assert url == server.url == f"nats://127.0.0.1:{server.port}"
    assert server.port != 0 and server.pid is not None
    conf = server.conf_path.read_text()
    assert 'sync_interval: "always"' in conf and "jetstream {" in conf
    assert stat.S_IMODE(server.conf_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(server.log_file.stat().st_mode) == 0o600
    await server.stop()
    assert not server.running
    assert server.returncode is not None
    await server.stop()  # idempotent
    with socket.socket() as s:  # the port is free again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", server.port))


async def test_sync_interval_is_a_parameter(tmp_path: Path) -> None:
    # "1m30s" is a watchd duration, not a Go one: nats-server gets "90s", and starts.
    server = EmbeddedNats(tmp_path / "nats", listen="127.0.0.1:0", sync="1m30s")
    await server.start()
    try:
        assert 'sync_interval: "90s"' in server.conf_path.read_text()
    finally:
        await server.stop()


async def test_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        server = EmbeddedNats(tmp_path / "nats", listen=f"127.0.0.1:{port}")
        t0 = time.monotonic()
        with pytest.raises(NatsUnavailable) as err:
            await server.start()
        assert time.monotonic() - t0 < 2
        assert err.value.message.startswith(f"127.0.0.1:{port} is already in use")
        assert err.value.hint is not None and "[nats] listen" in err.value.hint
        # The same error when only the server notices (port taken after our check): read from its log.
        server.store_dir.mkdir(parents=True, exist_ok=True)
        server._write_config()
        with pytest.raises(NatsUnavailable, match="is already in use"):
            await server._spawn(5)
        assert server.pid is None


async def test_left_over_server_from_a_killed_watchd_is_replaced(tmp_path: Path) -> None:
    first = EmbeddedNats(tmp_path / "nats", listen="127.0.0.1:0")
    await first.start()
    orphan = first.pid
    assert orphan is not None
    second = EmbeddedNats(tmp_path / "nats", listen=f"127.0.0.1:{first.port}")
    try:
        await second.start()  # same store and port: the orphan is stopped, not reported as "busy"
        assert second.pid != orphan
        await until(lambda: first.returncode is not None)
    finally:
        await second.stop()
        await first.stop()


async def test_ensure_streams_is_idempotent_and_applies_changes(nats_client: Client) -> None:
    js = nats_client.jetstream()
    await ensure_streams(js)
    await ensure_streams(js)
    info = await js.stream_info(EVENTS_STREAM)
    assert info.config.subjects == ["watchd.events.>"]
    assert info.config.storage == "file"
    assert info.config.duplicate_window == pytest.approx(2 * 86400)
    assert info.config.max_age == pytest.approx(30 * 86400)
    handoffs = await js.stream_info(HANDOFFS_STREAM)
    assert handoffs.config.subjects == ["watchd.handoffs.>", "watchd.replies.>"]
    await ensure_streams(js, events_max_age_s=86400, duplicate_window_s=3600)
    info = await js.stream_info(EVENTS_STREAM)
    assert info.config.max_age == pytest.approx(86400)
    assert info.config.duplicate_window == pytest.approx(3600)


async def test_publish_event_twice_is_stored_once(nats_client: Client) -> None:
    js = nats_client.jetstream()
    await ensure_streams(js)
    event = make_event("backup.done", {"exit_code": 0}, source="test")
    first = await publish_event(js, event)
    again = await publish_event(js, event)
    assert (first.stream, first.seq, first.duplicate) == (EVENTS_STREAM, 1, False)
    assert (again.seq, again.duplicate) == (1, True)
    other = await publish_event(js, make_event("backup.done"))
    assert (other.seq, other.duplicate) == (2, False)
    assert (await js.stream_info(EVENTS_STREAM)).state.messages == 2
    stored = await js.get_msg(EVENTS_STREAM, 1)
    assert stored.subject == "watchd.events.backup.done"
    assert stored.headers is not None and stored.headers["Nats-Msg-Id"] == event.id
    assert stored.data is not None and decode_event(stored.data) == event

    raw = await publish_raw(js, HANDOFFS_PREFIX + "agent.claw", b'{"id":"h_1"}', "h_1")
    raw2 = await publish_raw(js, HANDOFFS_PREFIX + "agent.claw", b'{"id":"h_1"}', "h_1")
    assert (raw.stream, raw.seq, raw2.duplicate) == (HANDOFFS_STREAM, 1, True)


async def test_publish_without_streams_is_nats_unavailable(nats_client: Client) -> None:
    with pytest.raises(NatsUnavailable, match="no JetStream stream"):
        await publish_event(nats_client.jetstream(), make_event("x.y"), timeout_s=1)


@pytest.mark.parametrize("own_pull", [False, True], ids=["nats-py fetch", "own pull requests"])
async def test_consumer_acks_all_and_redelivers_unacked_after_restart(nats_client: Client, own_pull: bool) -> None:
    js = nats_client.jetstream()
    await ensure_streams(js)
    events = [make_event("heartbeat.laptop", {"n": i}) for i in range(5)]
    for event in events:
        await publish_event(js, event)

    nc = nats_client if own_pull else None
    consumer = EventConsumer(js, ack_wait_s=0.5, nc=nc)
    await consumer.start()
    msgs = await consumer.fetch(batch=256, timeout_s=2)
    assert [seq_of(m) for m in msgs] == [1, 2, 3, 4, 5]
    assert [pending_after(m) for m in msgs] == [4, 3, 2, 1, 0]  # the engine's lag, as /metrics shows it
    assert [decode_event(m.data).id for m in msgs] == [e.id for e in events]
    assert abs(time_of(msgs[0]) - time.time()) < 5
    await consumer.ack_upto(msgs[2])  # AckPolicy.ALL: acks 1..3
    await consumer.stop()

    again = EventConsumer(js, ack_wait_s=0.5, nc=nc)  # a restarted engine binds the same durable
    await again.start()
    redelivered = await again.fetch(timeout_s=3)
    assert [seq_of(m) for m in redelivered] == [4, 5]
    assert all(times_delivered(m) == 2 for m in redelivered)
    await again.ack_upto(redelivered[-1])
    await nats_client.flush()
    t0 = time.monotonic()
    assert await again.fetch(timeout_s=0.8) == []  # nothing after ack_wait either: all acked
    assert time.monotonic() - t0 < 1.5
    info = await again.info()
    assert info.ack_floor is not None and info.ack_floor.stream_seq == 5
    await again.stop()


async def test_consumer_start_updates_an_existing_durable(nats_client: Client) -> None:
    js = nats_client.jetstream()
    await ensure_streams(js)
    first = EventConsumer(js, "engine-x", ack_wait_s=30)
    await first.start()
    await first.stop()
    second = EventConsumer(js, "engine-x", ack_wait_s=2, max_ack_pending=10)
    await second.start()
    info = await second.info()
    assert info.config.ack_wait == pytest.approx(2)
    assert info.config.max_ack_pending == 10
    assert info.config.ack_policy == "all"
    assert await second.fetch(timeout_s=0.2) == []
    await second.stop()


async def test_supervise_restarts_a_killed_server_and_data_survives(
    nats_server: EmbeddedNats, nats_client: Client
) -> None:
    js = nats_client.jetstream()
    await ensure_streams(js)
    for i in range(3):
        await publish_event(js, make_event("job.done", {"i": i}))
    consumer = EventConsumer(js)
    await consumer.start()
    msgs = await consumer.fetch(timeout_s=2)
    await consumer.ack_upto(msgs[-1])
    await nats_client.flush()
    nats_server.restart_delay_s = 0.05
    stop = asyncio.Event()
    upkeep = Upkeep(stop)
    task = asyncio.create_task(nats_server.supervise(upkeep))
    old_pid = nats_server.pid
    assert old_pid is not None
    os.kill(old_pid, signal.SIGKILL)
    await until(lambda: nats_server.restarts == 1)
    assert nats_server.pid not in (None, old_pid)

    # The same client reconnects by itself and sees the stored events; publishing goes on.
    await until(lambda: nats_client.is_connected)
    assert (await js.stream_info(EVENTS_STREAM)).state.messages == 3
    ack = await publish_event(js, make_event("job.done", {"i": 3}))
    assert ack.seq == 4
    # The consumer keeps fetching after the crash. An ack sent just before SIGKILL may not have
    # been persisted, so 1-3 may come again: the engine skips those by sequence.
    seen: list[int] = []
    for _ in range(5):
        seen += [seq_of(m) for m in await consumer.fetch(timeout_s=2)]
        if 4 in seen:
            break
    assert seen[-1] == 4 and set(seen) <= {1, 2, 3, 4}

    stats = upkeep.stats["nats-supervisor"]  # counted as every loop is, for /metrics
    assert (stats.failures, stats.restarts, stats.failing) == (1, 1, False)  # it runs again: not failing
    assert stats.last_error == "ServerExited: the embedded nats-server exited unexpectedly (code -9)"
    stop.set()
    await asyncio.wait_for(task, 2)
    assert nats_server.running  # supervise stops watching; it does not stop the server


async def test_restart_on_purpose_is_one_new_server_which_the_supervisor_then_watches(
    nats_server: EmbeddedNats, nats_client: Client
) -> None:
    js = nats_client.jetstream()
    await ensure_streams(js)
    await publish_event(js, make_event("job.done"))
    nats_server.restart_delay_s = 0.05
    stop = asyncio.Event()
    upkeep = Upkeep(stop)
    task = asyncio.create_task(nats_server.supervise(upkeep))
    first = nats_server.pid
    assert first is not None
    await nats_server.restart("a test")  # what the storage probe does after a full disk
    second = nats_server.pid
    assert second not in (None, first) and nats_server.restarts == 1
    await asyncio.sleep(0.3)  # several backoffs: a supervisor that took it for a crash would have spawned again
    assert nats_server.pid == second and nats_server.restarts == 1
    assert upkeep.stats["nats-supervisor"].failures == 0  # on purpose: not counted as a crash
    await until(lambda: nats_client.is_connected)
    assert (await js.stream_info(EVENTS_STREAM)).state.messages == 1  # the store came back with it
    os.kill(second, signal.SIGKILL)  # and the new one is watched: a crash of it is restarted
    await until(lambda: nats_server.restarts == 2)
    assert nats_server.pid not in (None, first, second)
    stop.set()
    await asyncio.wait_for(task, 2)


async def test_supervise_leaves_a_server_stopped_on_purpose_and_ends_at_stop(nats_server: EmbeddedNats) -> None:
    nats_server.restart_delay_s = 0.05
    stop = asyncio.Event()
    upkeep = Upkeep(stop)
    task = asyncio.create_task(nats_server.supervise(upkeep))
    await asyncio.sleep(0.05)
    await nats_server.stop()
    await asyncio.sleep(0.3)  # several backoffs' worth: a supervisor that restarted it would have by now
    assert not nats_server.running and nats_server.restarts == 0 and not task.done()
    assert upkeep.stats["nats-supervisor"].failures == 0
    stop.set()
    await asyncio.wait_for(task, 2)


async def test_connect_to_closed_port_fails_fast_without_credentials() -> None:
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(NatsUnavailable) as err:
        await connect(f"nats://alice:s3cret@127.0.0.1:{port}", timeout_s=0.5)
    assert time.monotonic() - t0 < 2
    assert err.value.message.startswith(f"cannot reach NATS at nats://***@127.0.0.1:{port}")
    assert "s3cret" not in err.value.message and "alice" not in err.value.message
    assert err.value.hint is not None and "watchd run" in err.value.hint


def test_redact_url() -> None:
    assert redact_url("nats://u:p@h:4222") == "nats://***@h:4222"
    assert redact_url("nats://h:4222") == "nats://h:4222"
    assert redact_url("tls://token@h") == "tls://***@h"


async def test_own_pull_requests_return_at_once_and_in_batches(nats_client: Client) -> None:
    """What is stored comes at once, in batches of at most `batch`, in stream order; with nothing
    stored a fetch waits for the first event to come (not for the timeout), and an empty one
    returns [] after its timeout."""
    js = nats_client.jetstream()
    await ensure_streams(js)
    # Stored concurrently (the setup, not what is tested): the fetches below see seqs 1..700 either way.
    await asyncio.gather(*(publish_event(js, make_event("load.test", {"i": i})) for i in range(700)))
    consumer = EventConsumer(js, nc=nats_client)
    await consumer.start()
    t0 = time.monotonic()
    first = await consumer.fetch(512, timeout_s=5)
    second = await consumer.fetch(512, timeout_s=5)
    assert time.monotonic() - t0 < 2
    assert [seq_of(m) for m in first + second] == list(range(1, 701))
    assert (len(first), len(second)) == (512, 188)
    await consumer.ack_upto(second[-1])

    t0 = time.monotonic()
    assert await consumer.fetch(512, timeout_s=0.3) == []
    assert 0.25 <= time.monotonic() - t0 < 1.5

    async def publish_later() -> None:
        await asyncio.sleep(0.3)
        await publish_event(js, make_event("load.test", {"i": "late"}))

    task = asyncio.create_task(publish_later())
    t0 = time.monotonic()
    late = await consumer.fetch(512, timeout_s=5)
    assert [seq_of(m) for m in late] == [701]
    assert time.monotonic() - t0 < 2  # woken by the event, not by the timeout
    await task
    await consumer.ack_upto(late[-1])
    await nats_client.flush()
    info = await consumer.info()
    assert info.ack_floor is not None and info.ack_floor.stream_seq == 701
    await consumer.stop()


@pytest.mark.parametrize(("set_to", "seen"), [(None, "32MiB"), ("off", "off")])
async def test_the_embedded_server_runs_with_a_soft_memory_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, set_to: str | None, seen: str
) -> None:
    """GOMEMLIMIT for the Go runtime of the embedded nats-server: 32MiB unless the environment
    says otherwise (it then holds ~40 MB instead of ~73 MB after 100,000 events)."""
    if set_to is None:
        monkeypatch.delenv("GOMEMLIMIT", raising=False)
    else:
        monkeypatch.setenv("GOMEMLIMIT", set_to)
    server = EmbeddedNats(tmp_path / "nats", listen="127.0.0.1:0")
    await server.start()
    try:
        assert server.pid is not None
        environ = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
        assert f"GOMEMLIMIT={seen}".encode() in environ
    finally:
        await server.stop()
