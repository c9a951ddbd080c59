"""The daemon as a real process (`DaemonProc`), for what only a process shows: signals, systemd
notifications, kill -9, the state-dir lock between processes, `watchd run` as a user starts it.
Everything else runs the daemon in the test's event loop (support/inprocess.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from support import project, secrets
from support.cli import CliResult, run_cli, run_process
from support.project import Project
from support.waiting import wait_until
from watchd.bus import PubAckInfo
from watchd.model import Event

PR_SET_CHILD_SUBREAPER = 36


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


class DaemonProc(Project):
    """`watchd run` as a real subprocess on a temp project; its stdout and stderr go to files."""

    def __init__(
        self,
        root: Path,
        watches: dict[str, str] | None = None,
        *,
        extra_config: str = "",
        nats_url: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(root, watches, extra_config=extra_config, nats_url=nats_url)
        self.stdout_path = root / "daemon.stdout"
        self.stderr_path = root / "daemon.stderr"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.env.pop("WATCHD_CONFIG", None)
        self.proc: subprocess.Popen[bytes] | None = None

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    # -- life cycle --

    def start(self, wait: bool = True, timeout_s: float = 60.0) -> DaemonProc:
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

    def wait_ready(self, timeout_s: float = 60.0) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            if not self.alive():
                code = self.proc and self.proc.returncode
                raise AssertionError(f"daemon exited with {code}:\n{self.stderr()[-3000:]}")
            h = self.health()
            return h if h and h.get("ok") and h.get("pid") == self.pid else None

        result: dict[str, Any] = wait_until(ready, timeout_s, "daemon /healthz ok")
        return result

    def kill9(self) -> None:
        """SIGKILL the daemon only, as a crash does; its nats-server then gets SIGTERM from the kernel
        (PR_SET_PDEATHSIG) and ends on its own."""
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
        # No configured secret, in any encoding, in what the process wrote (support/secrets.py).
        found = secrets.configured_secrets(self.config_path, self.env)
        leaked = secrets.leaks("stderr", self.stderr(), found) + secrets.leaks("stdout", self.stdout(), found)
        assert not leaked, "a configured secret reached the output:\n" + "\n".join(leaked)

    # -- the command line --

    def cli(self, *args: str) -> CliResult:
        """`watchd CMD --config <this config> ARGS…` in this process (it talks to the daemon process)."""
        return run_cli(args[0], "--config", str(self.config_path), *args[1:])

    def cli_process(self, *args: str, timeout_s: float = 30.0) -> CliResult:
        """The same as a child process from the project dir, as a user runs it."""
        config = ("--config", str(self.config_path))
        return run_process(args[0], *config, *args[1:], cwd=self.root, env=self.env, timeout_s=timeout_s)

    # -- publishing from a blocking test --

    def publish(self, *events: Event) -> list[PubAckInfo]:
        return asyncio.run(project.publish(self.nats_url, *events))

    def stream_last_seq(self) -> int:
        return asyncio.run(project.stream_last_seq(self.nats_url))
