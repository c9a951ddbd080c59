"""A systemd journal for journal-source tests, real or recorded, behind one interface.

`RealJournal` runs the machine's own `systemd-journald` in a private mount and PID namespace (root,
`unshare` and journald needed): its files land in `directory`, the machine's `journalctl -D` reads
them, and entries are written over journald's native socket by the namespace's PID 1 — so they carry
`_PID=1` exactly as systemd's own "Unit failed" messages do. `StandinJournal` is the recorded-output
`journalctl` of support/journalctl_standin.py, put first on PATH, reading `directory/entries.jsonl`.

Both take `write(MESSAGE=…, PRIORITY=…, …)` and `unit_failed(unit)`; `env` is what the process that
runs `journalctl` needs (PATH for the stand-in). `journal_backends()` lists those this machine has,
so a test parametrized over it says which ran (`[real]`, `[standin]`).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from support.waiting import wait_until

STANDIN = Path(__file__).with_name("journalctl_standin.py")
JOURNALD = next(
    (p for p in ("/lib/systemd/systemd-journald", "/usr/lib/systemd/systemd-journald") if Path(p).exists()), ""
)
# --mount-proc: journald reads a sender's _COMM (and more) from /proc, which must be this namespace's.
UNSHARE = ("unshare", "--mount", "--pid", "--fork", "--propagation", "private", "--mount-proc")
UNIT_FAILED_ID = "d9b373ed55a64feb8242e02dbe79a49c"  # systemd's catalog: "Unit failed"


def real_journal_missing() -> str | None:
    """Why RealJournal cannot run here, or None."""
    if not JOURNALD:
        return "no systemd-journald on this machine"
    if not shutil.which("journalctl"):
        return "no journalctl on this machine"
    if not shutil.which("unshare"):
        return "no unshare(1)"
    if os.geteuid() != 0:
        return "a private journald needs root (mount and PID namespaces)"
    return None


def journal_backends() -> list[str]:
    return ["standin"] + ([] if real_journal_missing() else ["real"])


class Journal:
    name = "journal"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.directory = root / "journal"
        self.env: dict[str, str] = {}

    def write(self, **fields: str) -> None:
        raise NotImplementedError

    def unit_failed(self, unit: str, result: str = "exit-code") -> None:
        """What PID 1 logs when a unit enters the failed state (systemd's unit_log_failure)."""
        self.write(
            MESSAGE=f"{unit}: Failed with result '{result}'.",
            MESSAGE_ID=UNIT_FAILED_ID,
            PRIORITY="4",
            SYSLOG_IDENTIFIER="systemd",
            UNIT=unit,
            UNIT_RESULT=result,
            INVOCATION_ID=uuid.uuid4().hex,
            as_pid1="1",
        )

    def user_unit_failed(self, unit: str, result: str = "exit-code") -> None:
        """What a user's service manager (`systemd --user`, not PID 1) logs when one of its units
        fails: the same catalog entry, about USER_UNIT, from a process named systemd."""
        self.write(
            MESSAGE=f"{unit}: Failed with result '{result}'.",
            MESSAGE_ID=UNIT_FAILED_ID,
            PRIORITY="4",
            SYSLOG_IDENTIFIER="systemd",
            USER_UNIT=unit,
            UNIT_RESULT=result,
            INVOCATION_ID=uuid.uuid4().hex,
            as_user_manager="1",
        )

    def cursors(self) -> list[str]:
        """Every entry's cursor, oldest first, as the machine's (or the stand-in's) journalctl says."""
        out = subprocess.run(
            ["journalctl", "-D", str(self.directory), "-m", "-o", "json", "--no-pager"],
            capture_output=True,
            env={**os.environ, **self.env},
            check=False,
        ).stdout
        return [json.loads(line)["__CURSOR"] for line in out.splitlines() if line.strip()]

    def start(self) -> Journal:
        return self

    def stop(self) -> None:
        pass


class StandinJournal(Journal):
    name = "standin"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.bin_dir = root / "bin"
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.entries = self.directory / "entries.jsonl"
        self.entries.touch()
        script = self.bin_dir / "journalctl"
        script.write_text(f"#!{sys.executable}\n" + STANDIN.read_text())
        script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        self.env = {"PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.seqnum = 0x100
        self.boot = uuid.uuid4().hex

    def write(self, **fields: str) -> None:
        self.seqnum += 1
        usec = int(time.time() * 1e6)
        pid = "1" if fields.pop("as_pid1", "") else "31337"
        user_manager = fields.pop("as_user_manager", "")
        entry: dict[str, Any] = {
            "__CURSOR": f"s=standin0seqnumid;i={self.seqnum:x};b={self.boot};m={usec:x};t={usec:x};x={self.seqnum:x}",
            "__REALTIME_TIMESTAMP": str(usec),
            "__MONOTONIC_TIMESTAMP": str(usec),
            "_BOOT_ID": self.boot,
            "_MACHINE_ID": "standin0machine0id",
            "_HOSTNAME": "standin",
            "_TRANSPORT": "journal",
            "_PID": pid,
            "_UID": "0",
            "PRIORITY": "6",
        }
        if pid == "1":
            entry["_SYSTEMD_UNIT"] = "init.scope"
            entry["_COMM"] = "systemd"
        if user_manager:
            entry["_SYSTEMD_UNIT"] = "user@0.service"
            entry["_COMM"] = "systemd"
        entry.update(fields)
        with self.entries.open("a") as f:
            f.write(json.dumps(entry, separators=(",", ":")) + "\n")

    def generate(
        self, rate: float, start: float | None = None, unit: str = "bench.service", total: int | None = None
    ) -> None:
        """Make it a synthetic journal of `rate` entries per second from `start` (endless, or `total`)."""
        spec = {"rate": rate, "start": time.time() if start is None else start, "unit": unit, "total": total or 0}
        (self.directory / "generate.json").write_text(json.dumps(spec))


# The namespace's PID 1: mounts a private /run, starts journald, then writes each JSON line it reads
# on stdin as one journal entry over the native protocol (as PID 1, or from a child with as_pid1=""),
# answering "ok" once journald has the datagram.
_INIT = r"""
import json, os, socket, subprocess, sys, time
run = sys.argv[1]
subprocess.run(["mount", "--bind", run, "/run"], check=True)
os.makedirs("/run/systemd/journal", exist_ok=True)
os.makedirs("/run/log/journal", exist_ok=True)
jd = subprocess.Popen([sys.argv[2]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
sock_path = "/run/systemd/journal/socket"
while not os.path.exists(sock_path):
    time.sleep(0.01)
def send(fields):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    body = b"".join(f"{k}={v}\n".encode() for k, v in fields.items())
    s.sendto(body, sock_path)
    s.close()
# A stand-in for a user's service manager: a process named systemd that lives as long as this one,
# since journald reads a sender's _COMM from /proc after the datagram came (a sender that exited
# at once would have none). It sends what arrives on its pipe and answers on another.
req_r, req_w = os.pipe()
ans_r, ans_w = os.pipe()
manager = os.fork()
if manager == 0:
    import ctypes
    ctypes.CDLL(None).prctl(15, b"systemd", 0, 0, 0)  # PR_SET_NAME
    os.close(req_w)
    os.close(ans_r)
    with os.fdopen(req_r) as requests, os.fdopen(ans_w, "w") as answers:
        for line in requests:
            send(json.loads(line))
            answers.write("ok\n")
            answers.flush()
    os._exit(0)
os.close(req_r)
os.close(ans_w)
manager_in, manager_out = os.fdopen(req_w, "w"), os.fdopen(ans_r)
print("ready", flush=True)
for line in sys.stdin:
    fields = json.loads(line)
    if fields.pop("as_pid1", ""):
        send(fields)
    elif fields.pop("as_user_manager", ""):
        manager_in.write(json.dumps(fields) + "\n")
        manager_in.flush()
        manager_out.readline()
    else:
        pid = os.fork()
        if pid == 0:
            send(fields)
            os._exit(0)
        os.waitpid(pid, 0)
    print("ok", flush=True)
manager_in.close()
os.waitpid(manager, 0)
jd.terminate()
jd.wait()
"""


class RealJournal(Journal):
    name = "real"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.run_dir = root / "run"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.directory = self.run_dir / "log" / "journal"
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> RealJournal:
        self.proc = subprocess.Popen(
            [*UNSHARE, sys.executable, "-c", _INIT, str(self.run_dir), JOURNALD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready", "private journald did not start"
        # journald's own first entries ("Runtime Journal is …") are in before a test writes.
        wait_until(lambda: self.cursors(), 10, "the private journald's first entries")
        return self

    def write(self, **fields: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        fields.setdefault("PRIORITY", "6")
        self.proc.stdin.write(json.dumps(fields) + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def make_journal(name: str, root: Path) -> Journal:
    return (RealJournal(root) if name == "real" else StandinJournal(root)).start()
