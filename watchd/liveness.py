"""What the daemon says of its own health: to systemd's watchdog (WATCHDOG=1 and STATUS=, and the
loop that sends them), on /healthz (and so `watchd status`), and the deployment's backlog."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from watchd import cluster, sdnotify, storage

if TYPE_CHECKING:
    from watchd.daemon import Daemon

# The engine loop waits at most this long for events between two rounds (the daemon's idle wait, so
# that a reload or stop is seen promptly): three of them without a round, and it is stalled.
MAX_IDLE_WAIT_S = 5.0


def engine_alive(d: Daemon, now: float) -> bool:
    """The engine loop ran recently, or it is retrying a commit the disk refused: waiting for
    storage (which health reports as such), not wedged."""
    return now - d.last_loop_at < MAX_IDLE_WAIT_S * 3 or d.storage.health.failing(storage.STATE)


def watchdog_message(d: Daemon) -> str:
    """What to tell systemd now: WATCHDOG=1 only while the engine loop is alive and events can
    be stored (after a grace for watchd's own recovery), so that systemd restarts a daemon that
    is wedged or cannot store; STATUS= says which, when it changes."""
    engine_ok = engine_alive(d, d.clock())
    status = d.storage.health.summary() or ("watching" if engine_ok else "engine loop stalled")
    lines = [] if status == d.status_sent else [f"STATUS={status}"]
    d.status_sent = status
    if engine_ok and d.storage.health.failing_for_s() < d.storage_grace_s:
        lines.insert(0, "WATCHDOG=1")
    return "\n".join(lines)


def cluster_view(d: Daemon) -> dict[str, Any] | None:
    if d.lease is None:
        return None
    holders = d.holders()
    view = {
        **d.lease.view(),
        "lag": d.cluster_lag,
        # [cluster] shards: who steps each, and which this instance steps (one shard: the lease's holder)
        "shards": [{"shard": k, "holder": holder} for k, holder in sorted(holders.items())],
        "holding": [s.names.index for s in d.shards if s.active],
    }
    if d.queue is not None:
        view["duplicates"] = d.queue.duplicates
    return view


def health(d: Daemon) -> dict[str, Any]:
    """/healthz and `watchd status`: ok only while the engine runs, NATS is connected, events can be
    stored and no core task is down."""
    now = d.clock()
    engine_ok = engine_alive(d, now) or not (d.active or any(s.active for s in d.shards))  # a standby runs none
    nats_ok = d.nc is not None and d.nc.is_connected
    down = d.upkeep.core_down()  # a side task's failure is counted in /metrics, not here
    storage_ok = d.storage.health.ok
    return {
        "ok": engine_ok and nats_ok and storage_ok and not down,
        "engine": engine_ok,
        "nats": nats_ok,
        "storage": storage_ok,
        "storage_problems": d.storage.health.report(),
        "pid": os.getpid(),
        "uptime_s": round(now - d.started_at, 1),
        "watches": len(d.loaded.watches),
        "last_seq": d.last_seq,
        "behind": d.behind,
        "events": d.events_seen,
        "cluster": cluster_view(d),
        "sources": d.sources.view() if d.sources is not None else [],
        **({"failing": down} if down else {}),
    }


async def watchdog_loop(d: Daemon, interval_s: float) -> None:
    """Tell systemd's watchdog every `interval_s` what watchdog_message says."""

    async def step() -> None:
        message = watchdog_message(d)
        if message:
            sdnotify.notify(message)

    await d.upkeep.every("watchdog", step, interval_s=interval_s)


async def cluster_lag_loop(d: Daemon) -> None:
    """The deployment's backlog, read from its shared consumers (status and /metrics)."""
    assert d.js is not None and d.lease is not None
    js, delivery = d.js, d.queue.durable if d.queue is not None else None

    async def step() -> None:
        d.cluster_lag = await cluster.read_lag(js, delivery, [s.names.durable for s in d.shards])

    await d.upkeep.every("cluster-lag", step, interval_s=d.lease.takeover_s * cluster.RENEW_SHARE)
