"""The daemon and its health: run, validate, check, status."""

from __future__ import annotations

import re
import sys
import time
from typing import Any

import click

from watchd import config
from watchd.cli.common import CONFIG_OPTION, dump_json, err, fail, http_get, load, out, setup_logging
from watchd.cli.options import load_config_only
from watchd.errors import DaemonNotRunning


@click.command()
@CONFIG_OPTION
@click.option("-v", "--verbose", is_flag=True, help="debug logging")
def run(config_path: str | None, verbose: bool) -> None:
    """Run the daemon in the foreground (systemd Type=notify; SIGHUP reloads; SIGTERM stops).

    \b
    Example:
      watchd run --config ~/.config/watchd/config.toml
    """
    from watchd import daemon

    setup_logging(verbose)
    loaded = load(config_path)
    config.require_env_secrets(loaded.config)  # validate only warns: its shell is not the daemon's
    daemon.run(loaded)


@click.command()
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help='{"ok", "config", "watches", "files", "problems", "warnings"}')
def validate(config_path: str | None, as_json: bool) -> None:
    """Check the config and every watch file at once; each problem as file:line:col; exit 1 on any.

    Warnings (a fixed time in a DST gap, an env: secret unset in this shell) do not fail it.

    \b
    Example:
      watchd validate --config config.example.toml
      watchd validate --json | jq -r '.problems[] | "\\(.file):\\(.line) \\(.message)"'
    """
    if as_json:
        _validate_json(config_path)
        return
    loaded = load(config_path)
    for warning in loaded.warnings:  # each already reads "file:line:col: warning: …"
        err.print(warning, markup=False)
    where = loaded.config_path or "built-in defaults"
    out.print(f"ok: {len(loaded.watches)} watches in {len(loaded.watch_files)} files ({where})")


@click.command()
@CONFIG_OPTION
@click.option(
    "--json", "as_json", is_flag=True, help='/healthz\'s object; {"ok": false, "running": false, …} when down'
)
def check(config_path: str | None, as_json: bool) -> None:
    """Exit 0 if the daemon is alive and healthy, else 1 (for an outside monitor).

    \b
    Example:
      watchd check || echo "watchd is down"
    """
    if as_json:
        try:
            health = {"running": True, **http_get(load_config_only(config_path), "/healthz")}
        except DaemonNotRunning as exc:
            health = {"ok": False, "running": False, "error": exc.message}
        dump_json(health)
        sys.exit(0 if health.get("ok") else 1)
    # The config alone: a watch file with a mistake does not make a running daemon unhealthy.
    health = http_get(load_config_only(config_path), "/healthz")
    if not health.get("ok"):
        bad = [k for k in ("engine", "nats", "storage") if not health.get(k, True)]
        problems = health.get("storage_problems") or {}
        why = "; ".join(f"{kind}: {p.get('reason')} (for {p.get('failing_for_s')}s)" for kind, p in problems.items())
        fail(f"watchd is unhealthy: {', '.join(bad) or 'unknown'} not ok" + (f" — {why}" if why else ""))
    out.print(f"ok: pid {health.get('pid')}, up {health.get('uptime_s')}s, {health.get('watches')} watches")


@click.command()
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="machine-readable output (documented in the README)")
@click.option("--utc", is_flag=True, help="times in UTC (default: the configured timezone; --json is always UTC)")
def status(config_path: str | None, as_json: bool, utc: bool) -> None:
    """Daemon, NATS, each watch's state and next due time, pending handoffs, dead letters.

    Times are in the configured timezone (else the system's), or UTC with --utc.

    \b
    Examples:
      watchd status --utc
      watchd status --json | jq '.watches[] | select(.state == "silent")'
    """
    from watchd.status import collect

    loaded = load(config_path)
    try:
        daemon: dict[str, Any] | None = http_get(loaded, "/healthz", timeout_s=2)
    except DaemonNotRunning:
        daemon = None
    report = collect(loaded, daemon, time.time())
    if as_json:
        dump_json(report)
        return
    from watchd.status import render

    render(report, out, "UTC" if utc else loaded.zone(), time.time())


_POSITION = re.compile(r"^(?P<file>.*?):(?P<line>\d+):(?P<col>\d+): (?:warning: )?(?P<message>.*)$", re.S)


def _located(text: str) -> dict[str, Any]:
    m = _POSITION.match(text)
    if m is None:
        return {"file": None, "line": None, "col": None, "message": text}
    return {"file": m["file"], "line": int(m["line"]), "col": int(m["col"]), "message": m["message"]}


def _validate_json(config_path: str | None) -> None:
    """`validate --json`: the same checks, as one object; exit 1 when there is any problem."""
    from watchd.errors import ConfigError, WatchdError

    try:
        loaded = load(config_path)
    except WatchdError as exc:
        if not isinstance(exc, ConfigError):  # e.g. no config file where one was named
            exc = ConfigError([exc.message], exc.hint)
        problems = set(exc.problems)
        dump_json(
            {
                "ok": False,
                "config": None,
                "watches": None,
                "files": None,
                "problems": [_located(p) for p in exc.problems],
                "warnings": [_located(w) for w in exc.report if w not in problems],
            }
        )
        sys.exit(1)
    dump_json(
        {
            "ok": True,
            "config": str(loaded.config_path) if loaded.config_path else None,
            "watches": len(loaded.watches),
            "files": len(loaded.watch_files),
            "problems": [],
            "warnings": [_located(w) for w in loaded.warnings],
        }
    )
