"""The command line. The only module that prints or exits; errors become one line and a hint."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from typing import Any, NoReturn

import click
import msgspec
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from watchd import __version__, bus, config
from watchd.config import Loaded
from watchd.errors import ConfigError, DaemonNotRunning, EventRejected, NatsUnavailable, WatchdError
from watchd.model import encode, make_event

out = Console(highlight=False, soft_wrap=True, emoji=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)

CONFIG_OPTION = click.option(
    "--config", "config_path", metavar="PATH", envvar=None,
    help="config file (default: $WATCHD_CONFIG, ./watchd.toml, $XDG_CONFIG_HOME/watchd/config.toml)",
)  # fmt: skip


def fail(message: str, hint: str | None = None, code: int = 1) -> NoReturn:
    # escape: messages quote config ("[nats] url", "[http] listen") that rich would read as markup
    err.print(f"[bold red]error:[/] {escape(message)}", markup=True)
    if hint:
        err.print(f"[dim]hint: {escape(hint)}[/]", markup=True)
    sys.exit(code)


def load(config_path: str | None) -> Loaded:
    return config.load(config.find_config(config_path))


def dump_json(obj: Any) -> None:
    click.echo(msgspec.json.format(msgspec.json.encode(obj), indent=2).decode())


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="watchd")
def cli() -> None:
    """watchd wakes your agents only when a watched condition matches.

    \b
    Quick start:
      watchd validate --config config.example.toml
      watchd run --config config.example.toml
      watchd emit backup.done exit_code=0
    """


@cli.command()
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
    daemon.run(load(config_path))


@cli.command()
@CONFIG_OPTION
def validate(config_path: str | None) -> None:
    """Check the config and every watch file; problems as file:line:col; exit 1 on any.

    \b
    Example:
      watchd validate --config config.example.toml
    """
    loaded = load(config_path)
    for warning in loaded.warnings:
        err.print(f"warning: {warning}", markup=False)
    where = loaded.config_path or "built-in defaults"
    out.print(f"ok: {len(loaded.watches)} watches in {len(loaded.watch_files)} files ({where})")


def _parse_pairs(pairs: tuple[str, ...], base: dict[str, Any]) -> dict[str, Any]:
    """`k=v` pairs; v is JSON when it parses (5, true, "x", [1]) else a string; `a.b=1` nests."""
    data = dict(base)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise EventRejected(f"bad field {pair!r}: use key=value, e.g. exit_code=0")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise EventRejected(f"field {key!r} nests under a value that is not an object")
        node[leaf] = value
    return data


async def _refused(urls: str | list[str]) -> None:
    """Fail at once when nothing listens: bus.connect retries a refused connection until its
    timeout (right for the daemon), which made `emit` and `exec` hang 3 s per event with watchd down."""
    servers = [u.strip() for u in urls.split(",")] if isinstance(urls, str) else [u.strip() for u in urls]
    for url in servers:
        parts = urllib.parse.urlsplit(url if "://" in url else f"nats://{url}")
        if parts.scheme not in ("nats", "tls"):
            return
        try:
            conn = asyncio.open_connection(parts.hostname or "127.0.0.1", parts.port or 4222)
            _, writer = await asyncio.wait_for(conn, 1)
        except ConnectionRefusedError:
            continue
        except (OSError, ValueError, TimeoutError):
            return  # not a clear refusal: let connect try, and report
        writer.close()
        return
    shown = ", ".join(bus.redact_url(u) for u in servers)
    raise NatsUnavailable(
        f"cannot reach NATS at {shown}: connection refused",
        hint="is `watchd run` running? Otherwise check [nats] url in the config",
    )


async def _publish(loaded: Loaded, events: list[Any]) -> list[bus.PubAckInfo]:
    from watchd.daemon import nats_url

    await _refused(nats_url(loaded))
    nc = await bus.connect(nats_url(loaded), name="watchd-cli", timeout_s=3)
    try:
        js = nc.jetstream()
        return [await bus.publish_event(js, e) for e in events]
    finally:
        await nc.close()


@cli.command()
@CONFIG_OPTION
@click.argument("subject")
@click.argument("fields", nargs=-1)
@click.option("--json", "json_data", metavar="OBJ", help="the event's data as a JSON object")
@click.option("--id", "event_id", metavar="ID", help="event id (default: a new ULID); a re-sent id is stored once")
@click.option("--source", default="cli", show_default=True, help="the event's source")
def emit(config_path: str | None, subject: str, fields: tuple[str, ...], json_data: str | None,
         event_id: str | None, source: str) -> None:  # fmt: skip
    """Publish one event.

    \b
    Examples:
      watchd emit backup.done exit_code=0 duration_s=812.4
      watchd emit mail.received --json '{"from": "a@bigcustomer.com", "urgent": true}'
    """
    base: Any = {}
    if json_data:
        try:
            base = json.loads(json_data)
        except ValueError as exc:
            raise EventRejected(f"--json is not valid JSON: {exc}") from None
        if not isinstance(base, dict):
            raise EventRejected("--json must be a JSON object, e.g. '{\"exit_code\": 0}'")
    event = make_event(subject, _parse_pairs(fields, base), id=event_id, source=source)
    if len(encode(event)) > (limit := 256 * 1024):
        raise EventRejected(f"event is over the {limit}-byte limit")
    loaded = load(config_path)
    ack = asyncio.run(_publish(loaded, [event]))[0]
    note = " (duplicate: already stored)" if ack.duplicate else ""
    out.print(f"{event.id} {subject} seq {ack.seq}{note}")


@cli.command(name="exec", context_settings={"ignore_unknown_options": True})
@CONFIG_OPTION
@click.argument("subject")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(config_path: str | None, subject: str, command: tuple[str, ...]) -> None:
    """Run COMMAND; emit SUBJECT.started, then SUBJECT.done or SUBJECT.failed; exit with its code.

    \b
    Example:
      watchd exec backup -- restic backup /home
    """
    make_event(subject)  # check the subject before running anything
    loaded: Loaded | None = None
    try:
        loaded = load(config_path)
    except WatchdError as exc:  # a broken config must not stop the wrapped job (a backup) running
        first = exc.problems[0] if isinstance(exc, ConfigError) and exc.problems else exc.message
        err.print(f"warning: cannot load the config ({first}); running without publishing", markup=False)
    started = time.time()
    _try_publish(loaded, make_event(f"{subject}.started", {"command": list(command)}, source="exec"))
    tail: deque[str] = deque(maxlen=40)
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    except OSError as exc:
        code, tail_text = 127, f"cannot run {command[0]}: {exc.strerror}"
        err.print(tail_text, markup=False)
    else:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            tail.append(line)
        code = proc.wait()
        tail_text = "".join(tail)[-4000:]
    data = {"exit_code": code, "duration_s": round(time.time() - started, 3), "output_tail": tail_text}
    _try_publish(loaded, make_event(f"{subject}.{'done' if code == 0 else 'failed'}", data, source="exec"))
    sys.exit(code)


def _try_publish(loaded: Loaded | None, event: Any) -> None:
    """exec must not fail the wrapped job because watchd is down: warn and go on."""
    if loaded is None:
        return
    try:
        asyncio.run(_publish(loaded, [event]))
    except WatchdError as exc:
        err.print(f"warning: could not publish {event.subject}: {exc.message}", markup=False)


def _http_get(loaded: Loaded, path: str, timeout_s: float = 3) -> dict[str, Any]:
    from watchd.http import split_listen

    host, port = split_listen(loaded.config.http.listen)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            result: dict[str, Any] = json.loads(resp.read())
            return result
    except urllib.error.HTTPError as exc:
        result = json.loads(exc.read() or b"{}")
        return result
    except (OSError, ValueError) as exc:
        raise DaemonNotRunning(
            f"no watchd answering on {loaded.config.http.listen} ({getattr(exc, 'reason', exc)})",
            hint="start it with `watchd run`, or check [http] listen",
        ) from None


@cli.command()
@CONFIG_OPTION
def check(config_path: str | None) -> None:
    """Exit 0 if the daemon is alive and healthy, else 1 (for an outside monitor).

    \b
    Example:
      watchd check || echo "watchd is down"
    """
    health = _http_get(load(config_path), "/healthz")
    if not health.get("ok"):
        bad = [k for k in ("engine", "nats") if not health.get(k)]
        fail(f"watchd is unhealthy: {', '.join(bad) or 'unknown'} not ok")
    out.print(f"ok: pid {health.get('pid')}, up {health.get('uptime_s')}s, {health.get('watches')} watches")


@cli.command()
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
        daemon: dict[str, Any] | None = _http_get(loaded, "/healthz", timeout_s=2)
    except DaemonNotRunning:
        daemon = None
    report = collect(loaded, daemon, time.time())
    if as_json:
        dump_json(report)
        return
    from watchd.status import render

    render(report, out)


@cli.command()
@CONFIG_OPTION
@click.option("--state", "state", help="only handoffs in this state (pending, delivering, delivered, retrying, dead…)")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="an array of handoff objects (SPEC section 4) plus state")
def handoffs(config_path: str | None, state: str | None, limit: int, as_json: bool) -> None:
    """List handoffs, newest first.

    \b
    Example:
      watchd handoffs --state dead
    """
    from watchd.status import list_handoffs

    loaded = load(config_path)
    rows = list_handoffs(loaded, state, limit)
    if as_json:
        dump_json(rows)
        return
    if not rows:
        out.print("no handoffs" + (f" in state {state}" if state else ""))
        return
    table = Table("fired", "watch", "key", "target", "state", "attempt", "reason", box=None)
    for h in rows:
        # Text, not str: keys and reasons come from event data, and rich would parse "[/]" as markup
        cells = (h["fired_at"], h["watch"], h["key"] or "", h["target"], h["state"], str(h["attempt"]), h["reason"])
        table.add_row(*(Text(c) for c in cells))
    out.print(table)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        fail("aborted", code=130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except ConfigError as exc:
        for problem in exc.problems:
            err.print(problem, markup=False)
        fail(f"{len(exc.problems)} problem(s) found", exc.hint)
    except WatchdError as exc:
        fail(exc.message, exc.hint)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # the last line of defence: no traceback reaches a user
        if os.environ.get("WATCHD_DEBUG"):
            raise
        fail(f"internal error: {type(exc).__name__}: {exc}", "set WATCHD_DEBUG=1 for a traceback, and report it")


if __name__ == "__main__":
    main()

