"""A watchd project in a temp dir — config, watch files, state dir — and readers of its state.

The config runs NATS embedded (or, with `nats_url`, on a server the test started: several projects on
one NATS are instances of one deployment) and the HTTP listener on free loopback ports, with a
console notifier; `extra_config` adds TOML at the end. The state readers open the SQLite file read-only, as `watchd
status` does, so they read beside a running daemon.
"""

from __future__ import annotations

import json
import socket
import sqlite3
from pathlib import Path
from typing import Any

from watchd import bus, cluster, credentials, handoff_queue
from watchd.jspublish import JetStreamPublisher
from watchd.model import Event, encode

# For a whole burst (thousands of events on a busy machine), not for each event.
PUBLISH_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Project:
    def __init__(
        self, root: Path, watches: dict[str, str] | None = None, *, extra_config: str = "", nats_url: str | None = None
    ) -> None:
        self.root = root
        self.external_nats = nats_url
        root.mkdir(parents=True, exist_ok=True)
        self.nats_port = free_port()
        self.http_port = free_port()
        self.config_path = root / "config.toml"
        self.state_dir = root / "state"
        self.watches_dir = root / "watches"
        self.watches_dir.mkdir(exist_ok=True)
        self.write_config(extra_config)
        for name, text in (watches or {}).items():
            self.write_watch(name, text)

    # -- files --

    def write_config(self, extra: str = "") -> None:
        embedded = f'url = "embedded"\nlisten = "127.0.0.1:{self.nats_port}"'
        nats = f'url = "{self.external_nats}"' if self.external_nats else embedded
        self.config_path.write_text(
            f'watches = ["watches/"]\nstate_dir = "state"\ntimezone = "UTC"\n'
            f"[nats]\n{nats}\n"
            f'[http]\nlisten = "127.0.0.1:{self.http_port}"\n{extra}\n'
            '[notify.console]\ntype = "console"\n'
        )

    def write_watch(self, name: str, text: str) -> Path:
        path = self.watches_dir / name
        path.write_text(text)
        return path

    @property
    def nats_url(self) -> str:
        """The admin URL, with the credentials the daemon made in its state dir (none before its first start)."""
        if self.external_nats:
            return self.external_nats
        creds = credentials.load(self.state_dir)
        url = f"nats://127.0.0.1:{self.nats_port}"
        return creds.url(url, "admin") if creds is not None else url

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def db_path(self) -> Path:
        return self.state_dir / "watchd.db"

    @property
    def nats_pid_file(self) -> Path:
        return self.state_dir / "nats" / "nats-server.pid"

    def nats_pid(self) -> int | None:
        try:
            return int(self.nats_pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    # -- the state files --

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if not self.db_path.exists():
            return []
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
        finally:
            conn.close()

    def decisions(self, watch: str | None = None, verdict: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT at, watch, key, verdict, reason, event_id, seq FROM decisions WHERE 1=1"
        params: list[Any] = []
        if watch is not None:
            sql += " AND watch = ?"
            params.append(watch)
        if verdict is not None:
            sql += " AND verdict = ?"
            params.append(verdict)
        cols = ("at", "watch", "key", "verdict", "reason", "event_id", "seq")
        return [dict(zip(cols, r, strict=True)) for r in self.query(sql + " ORDER BY id", tuple(params))]

    def handoffs(self, watch: str | None = None) -> list[dict[str, Any]]:
        cols = ("id", "watch", "watch_version", "key", "target", "reason", "state", "evidence", "attempt", "last_error")
        sql = f"SELECT {', '.join(cols)} FROM handoffs"
        where, params = (" WHERE watch = ?", (watch,)) if watch else ("", ())
        rows = self.query(sql + where + " ORDER BY created_at", params)
        out = [dict(zip(cols, r, strict=True)) for r in rows]
        for h in out:
            h["evidence"] = json.loads(h["evidence"])
        return out

    def transitions(self, handoff_id: str) -> list[tuple[str, str | None]]:
        """(state, detail) of each step of a handoff's delivery, in order."""
        sql = "SELECT state, detail FROM transitions WHERE handoff_id = ? ORDER BY id"
        return [(state, detail) for state, detail in self.query(sql, (handoff_id,))]

    def states(self, handoff_id: str) -> list[str]:
        return [state for state, _ in self.transitions(handoff_id)]

    def meta(self, key: str) -> str | None:
        rows = self.query("SELECT v FROM meta WHERE k = ?", (key,))
        return rows[0][0] if rows else None

    def last_seq(self) -> int:
        """The last stream sequence the engine committed."""
        return int(self.meta("last_seq") or 0)


# ---- publishing straight to a project's NATS (a client of its own, as a source would be) ----------


async def publish(url: str, *events: Event) -> list[bus.PubAckInfo]:
    """Store the events as one burst, as a source sends them: all sent on one connection (so stored
    in the order given), then every ack awaited; the first one not stored raises, as one by one."""
    nc = await bus.connect(url, name="watchd-test")
    try:
        publisher = JetStreamPublisher(nc, timeout_s=PUBLISH_TIMEOUT_S)
        return await publisher.publish_events([(e, encode(e)) for e in events])
    finally:
        await nc.close()


async def publish_raw(url: str, subject: str, body: bytes, msg_id: str | None = None) -> bus.PubAckInfo:
    nc = await bus.connect(url, name="watchd-test")
    try:
        return await bus.publish_raw(nc.jetstream(), subject, body, msg_id)
    finally:
        await nc.close()


async def stream_last_seq(url: str) -> int:
    nc = await bus.connect(url, name="watchd-test")
    try:
        info = await nc.jetstream().stream_info(bus.EVENTS_STREAM)
        return int(info.state.last_seq)
    finally:
        await nc.close()


async def stream_event(url: str, seq: int) -> dict[str, Any]:
    """The envelope stored at `seq` in the event stream, as JSON."""
    nc = await bus.connect(url, name="watchd-test")
    try:
        msg = await nc.jetstream().get_msg(bus.EVENTS_STREAM, seq)
        found: dict[str, Any] = json.loads(msg.data or b"{}")
        return found
    finally:
        await nc.close()


async def stream_events(url: str) -> list[dict[str, Any]]:
    """Every envelope in the event stream, in order, as JSON."""
    nc = await bus.connect(url, name="watchd-test")
    try:
        js = nc.jetstream()
        last = (await js.stream_info(bus.EVENTS_STREAM)).state.last_seq
        found = []
        for seq in range(1, last + 1):
            msg = await js.get_msg(bus.EVENTS_STREAM, seq)
            found.append(json.loads(msg.data or b"{}"))
        return found
    finally:
        await nc.close()


async def deployment_settled(url: str, cluster_name: str = "watchd") -> bool:
    """Every event decided and every queued handoff delivered and acknowledged: the deployment's lag
    on its shared consumers is 0. A test that kills something after counting deliveries at the
    receiver waits for this first: a delivery whose ack is still on its way is made again by the
    next holder (the duplicate window README states)."""
    nc = await bus.connect(url, name="watchd-test")
    try:
        lag = await cluster.read_lag(nc.jetstream(), handoff_queue.durable_name(cluster_name))
        return lag == {"events": 0, "handoffs": 0}
    finally:
        await nc.close()
