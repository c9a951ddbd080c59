"""`watchd service install|uninstall` as a user runs it: a real subprocess, units written into a
temporary XDG_CONFIG_HOME or --root, and a `systemctl` script on PATH that records its arguments."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from watchd import service

ROOT = Path(__file__).resolve().parent.parent


class Env:
    def __init__(self, tmp_path: Path, *, systemctl: bool = True) -> None:
        self.root = tmp_path
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        if systemctl:
            fake = self.bin / "systemctl"
            fake.write_text(f'#!/bin/sh\necho "$@" >> "{self.bin}/systemctl.log"\n')  # only builtins: PATH is bare
            fake.chmod(0o755)
        self.xdg = tmp_path / "xdg"
        self.unit = self.xdg / "systemd/user/watchd.service"

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "WATCHD_CONFIG"}
        env.update(XDG_CONFIG_HOME=str(self.xdg), PATH=str(self.bin))  # only the fake systemctl, or none
        return subprocess.run(
            [sys.executable, "-m", "watchd", "service", *args],
            cwd=self.root,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def systemctl_calls(self) -> list[str]:
        log = self.bin / "systemctl.log"
        return log.read_text().splitlines() if log.exists() else []


def this_watchd() -> str:
    """The script of the interpreter running the tests: what the unit must start."""
    return str(Path(sysconfig.get_path("scripts")) / "watchd")


def test_the_repository_units_are_the_templates() -> None:
    assert (ROOT / "systemd/watchd.service").read_text() == service.render(
        service.SYSTEM_UNIT, service.EXAMPLE_SYSTEM_EXEC
    )
    assert (ROOT / "systemd/watchd.user.service").read_text() == service.render(
        service.USER_UNIT, service.EXAMPLE_USER_EXEC
    )


def test_install_and_uninstall_a_user_unit(tmp_path: Path) -> None:
    env = Env(tmp_path)
    cfg = tmp_path / "my config.toml"
    cfg.write_text('watches = []\nstate_dir = "state"\n')
    r = env.run("install", "--user", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    text = env.unit.read_text()
    assert text == service.render(service.USER_UNIT, f'{this_watchd()} run --config "{cfg}"')
    assert Path(this_watchd()).is_absolute() and os.access(this_watchd(), os.X_OK)
    assert env.systemctl_calls() == ["--user daemon-reload"]
    assert f"wrote {env.unit}" in r.stdout
    assert "systemctl --user enable --now watchd" in r.stdout
    assert re.search(r"loginctl enable-linger \S+ .*logged out", r.stdout)

    again = env.run("install", "--user", "--config", str(cfg))
    assert again.returncode == 0 and f"{env.unit} is up to date" in again.stdout

    gone = env.run("uninstall", "--user")
    assert gone.returncode == 0, gone.stderr
    assert not env.unit.exists()
    assert env.systemctl_calls() == [
        "--user daemon-reload",
        "--user daemon-reload",
        "--user disable --now watchd.service",
        "--user daemon-reload",
    ]
    assert "nothing to remove" in env.run("uninstall", "--user").stdout


def test_a_user_unit_without_config_uses_the_one_watchd_would_find(tmp_path: Path) -> None:
    env = Env(tmp_path)
    r = env.run("install", "--user")
    assert r.returncode == 0, r.stderr
    default = env.xdg / "watchd/config.toml"
    assert f"ExecStart={this_watchd()} run --config {default}\n" in env.unit.read_text()
    assert f"create {default}" in r.stdout  # it does not exist yet
    (tmp_path / "watchd.toml").write_text('watches = []\nstate_dir = "state"\n')
    env.run("install", "--user")
    assert f"--config {tmp_path / 'watchd.toml'}\n" in env.unit.read_text()


def test_dry_run_prints_the_unit_and_changes_nothing(tmp_path: Path) -> None:
    env = Env(tmp_path)
    r = env.run("install", "--user", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"# {env.unit}\n[Unit]\n") and "ExecStart=" in r.stdout
    assert not env.unit.exists() and env.systemctl_calls() == []
    r = env.run("install", "--system", "--root", str(tmp_path / "image"), "--print")
    assert r.returncode == 0 and "User=watchd" in r.stdout and not (tmp_path / "image").exists()


def test_install_the_system_unit_under_a_root(tmp_path: Path) -> None:
    env = Env(tmp_path)
    image = tmp_path / "image"
    r = env.run("install", "--system", "--root", str(image), "--config", "/etc/watchd/config.toml")
    assert r.returncode == 0, r.stderr
    unit = image / "etc/systemd/system/watchd.service"
    expected = service.render(service.SYSTEM_UNIT, f"{this_watchd()} run --config /etc/watchd/config.toml")
    assert unit.read_text() == expected
    assert env.systemctl_calls() == []  # not this machine's systemd
    assert "not reloading systemd" in r.stdout and "systemctl enable --now watchd" in r.stdout
    bad = env.run("install", "--user", "--root", str(image))
    assert bad.returncode == 1 and bad.stderr.startswith("error: --root is for the system unit")


def test_without_systemctl_it_says_what_to_run(tmp_path: Path) -> None:
    env = Env(tmp_path, systemctl=False)
    r = env.run("install", "--user")
    assert r.returncode == 0, r.stderr
    assert env.unit.exists()
    assert "systemctl not found: run `systemctl --user daemon-reload` where systemd runs" in r.stdout


def test_a_failing_systemctl_is_reported(tmp_path: Path) -> None:
    env = Env(tmp_path)
    (env.bin / "systemctl").write_text('#!/bin/sh\necho "Failed to connect to bus: No medium found" >&2\nexit 1\n')
    r = env.run("install", "--user")
    assert r.returncode == 0 and env.unit.exists()
    assert "warning: systemctl --user daemon-reload failed: Failed to connect to bus: No medium found" in r.stderr


def test_exec_start_words_are_escaped_for_systemd() -> None:
    assert service.systemd_quote("/opt/watchd/bin/watchd") == "/opt/watchd/bin/watchd"
    assert service.systemd_quote("/home/a b/100%/watchd") == '"/home/a b/100%%/watchd"'
    assert service.systemd_quote("/x/$HOME") == "/x/$$HOME"
    assert service.exec_start(["/v/bin/watchd"], Path("/c d/w.toml")) == '/v/bin/watchd run --config "/c d/w.toml"'


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_units_stay_hardened(tmp_path: Path) -> None:
    """`systemd-analyze security` exposure (lower is better), the figures the README quotes."""
    for name, ceiling in (("watchd.service", 1.4), ("watchd.user.service", 4.6)):
        r = subprocess.run(
            ["systemd-analyze", "security", "--offline=yes", str(ROOT / "systemd" / name)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        score = re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout)
        assert score, r.stdout + r.stderr
        assert float(score.group(1)) <= ceiling, (name, score.group(1))
