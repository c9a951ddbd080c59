"""The systemd units, and where `watchd service install` puts them.

The unit texts live here, as the one source: systemd/*.service in the repository are these templates
rendered with the paths of a typical install (a test keeps them in sync). `watchd service install`
renders them with the absolute path of the running `watchd` and of its config.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

UNIT_NAME = "watchd.service"
EXEC_START = "@EXEC_START@"

_COMMON_SERVICE = """\
Type=notify
NotifyAccess=main
ExecStart=@EXEC_START@
ExecReload=/bin/kill -HUP $MAINPID
WatchdogSec=60
Restart=on-failure
RestartSec=5
TimeoutStopSec=20
KillMode=mixed
# Each NATS connection, webhook and job pipe is a file descriptor; the default soft limit is 1024.
LimitNOFILE=65536
UMask=0077
"""

USER_UNIT = f"""\
[Unit]
Description=watchd: wake agents only when a watched condition matches
After=network-online.target

[Service]
{_COMMON_SERVICE}
# Hardening, as far as a user unit allows. Jobs and command agents run with it too: they cannot
# gain privileges (no sudo or setuid helpers), create namespaces (no rootless containers) or
# switch to realtime scheduling. The mount options (PrivateTmp=, ProtectSystem=, ProtectProc=, …)
# take effect where the user manager can use a user namespace, and are skipped where it cannot.
# Not here: PrivateDevices= and an empty CapabilityBoundingSet= stop a user unit from starting on
# some systems, and MemoryDenyWriteExecute=yes crashes agents that run a JIT (Node.js, Java).
NoNewPrivileges=true
PrivateTmp=true
PrivateMounts=true
ProtectSystem=full
ProtectKernelTunables=true
ProtectKernelModules=true
ProtectKernelLogs=true
ProtectControlGroups=true
ProtectHostname=true
ProtectProc=invisible
KeyringMode=private
RestrictNamespaces=true
RestrictRealtime=true
RestrictSUIDSGID=true
LockPersonality=true
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged
SystemCallErrorNumber=EPERM

[Install]
WantedBy=default.target
"""

SYSTEM_UNIT = f"""\
[Unit]
Description=watchd: wake agents only when a watched condition matches
Wants=network-online.target
After=network-online.target

[Service]
{_COMMON_SERVICE}User=watchd
Group=watchd
# State (SQLite + JetStream store) lives in /var/lib/watchd, created with the right owner; files
# are 0600. A config without state_dir puts it there too ($XDG_STATE_HOME/watchd).
StateDirectory=watchd
StateDirectoryMode=0700
Environment=XDG_STATE_HOME=%S
# Secrets: LoadCredential=telegram-token:/etc/watchd/telegram-token, then token = "cred:telegram-token"

# Hardening: watchd needs its state directory, loopback sockets and outbound HTTPS. Jobs and
# command agents run with it too: /home is readable (restic backup /home works) but nothing outside
# /var/lib/watchd is writable; list what a job must write to, e.g. a local restic repository:
#ReadWritePaths=/srv/restic
# A command agent or job that runs a JIT (Node.js, Java) needs MemoryDenyWriteExecute=false
# (systemctl edit watchd). A denied system call fails with EPERM instead of killing the process,
# and nice/ionice work (@resources is allowed).
ProtectSystem=strict
ProtectHome=read-only
PrivateTmp=true
PrivateMounts=true
PrivateDevices=true
ProtectKernelTunables=true
ProtectKernelModules=true
ProtectKernelLogs=true
ProtectControlGroups=true
ProtectClock=true
ProtectHostname=true
ProtectProc=invisible
NoNewPrivileges=true
RestrictSUIDSGID=true
RestrictRealtime=true
RestrictNamespaces=true
LockPersonality=true
MemoryDenyWriteExecute=true
RemoveIPC=true
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged
SystemCallErrorNumber=EPERM
CapabilityBoundingSet=
AmbientCapabilities=

[Install]
WantedBy=multi-user.target
"""

# What the repository's systemd/*.service show: a `pip install --user` (or pipx) for the user
# unit, a venv in /opt/watchd for the system one.
EXAMPLE_USER_EXEC = "%h/.local/bin/watchd run --config %h/.config/watchd/config.toml"
EXAMPLE_SYSTEM_EXEC = "/opt/watchd/bin/watchd run --config /etc/watchd/config.toml"


def render(template: str, exec_start: str) -> str:
    return template.replace(EXEC_START, exec_start)


def systemd_quote(arg: str) -> str:
    """One ExecStart= word: `%` and `$` escaped (systemd expands them), quoted when it has spaces."""
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if re.search(r"[\s\"'\\;]", escaped):
        escaped = '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return escaped


def exec_start(program: list[str], config: Path) -> str:
    return " ".join(systemd_quote(a) for a in [*program, "run", "--config", str(config)])


def watchd_program() -> list[str]:
    """How systemd should start this installation of watchd, as absolute paths.

    The `watchd` script that is running (its absolute path, symlinks kept: a pipx link survives an
    upgrade); else the script beside this interpreter (a venv's bin/); else the one on $PATH; else
    this interpreter with `-m watchd`.
    """
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name == "watchd" and argv0.is_file():
        return [os.path.abspath(argv0)]
    beside = Path(sysconfig.get_path("scripts")) / "watchd"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("watchd")
    if found:
        return [os.path.abspath(found)]
    return [os.path.abspath(sys.executable), "-m", "watchd"]


@dataclass(frozen=True)
class Target:
    """Where a user or system unit goes, and how to talk to its systemd."""

    system: bool
    unit_path: Path
    default_config: Path

    @property
    def systemctl(self) -> list[str]:
        return ["systemctl"] if self.system else ["systemctl", "--user"]

    @property
    def template(self) -> str:
        return SYSTEM_UNIT if self.system else USER_UNIT


def target(system: bool, root: Path | None = None) -> Target:
    """The unit's place: /etc/systemd/system (under `root` if given) for a system unit,
    $XDG_CONFIG_HOME/systemd/user for a user unit."""
    if system:
        base = root or Path("/")
        return Target(True, base / "etc/systemd/system" / UNIT_NAME, Path("/etc/watchd/config.toml"))
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return Target(False, config_home / "systemd/user" / UNIT_NAME, config_home / "watchd/config.toml")
