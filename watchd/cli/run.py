"""The daemon and its health: run, validate, check, status."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import click

from watchd import config
from watchd.cli.common import CONFIG_OPTION, dump_json, err, fail, http_get, load, out
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

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("nats").setLevel(logging.WARNING)
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
    loaded = load(config_path)
    config.require_env_secrets(loaded.config)  # validate only warns: its shell is not the daemon's
    daemon.run(loaded)


@click.command()
@CONFIG_OPTION
def validate(config_path: str | None) -> None:
    """Check the config and every watch file at once; each problem as file:line:col; exit 1 on any.

    Warnings (a fixed time in a DST gap, an env: secret unset in this shell) do not fail it.

    \b
    Example:
      watchd validate --config config.example.toml
    """
    loaded = load(config_path)
    for warning in loaded.warnings:  # each already reads "file:line:col: warning: …"
        err.print(warning, markup=False)
    where = loaded.config_path or "built-in defaults"
    out.print(f"ok: {len(loaded.watches)} watches in {len(loaded.watch_files)} files ({where})")


@click.command()
@CONFIG_OPTION
def check(config_path: str | None) -> None:
    """Exit 0 if the daemon is alive and healthy, else 1 (for an outside monitor).

    \b
    Example:
      watchd check || echo "watchd is down"
    """
    health = http_get(load(config_path), "/healthz")
    if not health.get("ok"):
        bad = [k for k in ("engine", "nats") if not health.get(k)]
        fail(f"watchd is unhealthy: {', '.join(bad) or 'unknown'} not ok")
    out.print(f"ok: pid {health.get('pid')}, up {health.get('uptime_s')}s, {health.get('watches')} watches")


@click.command()
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="machine-readable output (documented in the README)")
def status(config_path: str | None, as_json: bool) -> None:
    """Daemon, NATS, each watch's state and next due time, pending handoffs, dead letters.

    \b
    Example:
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

    render(report, out)
