"""What every command shares: the consoles, --config, one-line errors, JSON output, and the
way to the running daemon (its HTTP listener) and to NATS."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn, TextIO, cast

import click
import msgspec

from watchd.cli.daemon_http import http_get as http_get
from watchd.cli.options import CONFIG_OPTION as CONFIG_OPTION
from watchd.cli.options import load as load
from watchd.config import Loaded
from watchd.errors import NatsUnavailable
from watchd.redact import redact_url

if TYPE_CHECKING:
    from rich.console import Console

    from watchd.bus import PubAckInfo
    from watchd.credentials import Role
    from watchd.model import Event


class _OnFirstUse:
    """A rich Console made when first used: `watchd run` prints nothing through one unless it
    fails, and rich is 1.6 MB of a daemon that otherwise never loads it."""

    def __init__(self, **settings: Any) -> None:
        self._settings = settings
        self._console: Console | None = None

    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._settings)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.console(), name)


_out = _OnFirstUse(highlight=False, soft_wrap=True, emoji=False)
_err = _OnFirstUse(stderr=True, highlight=False, soft_wrap=True, emoji=False)
out = cast("Console", _out)
err = cast("Console", _err)


def fail(message: str, hint: str | None = None, code: int = 1) -> NoReturn:
    from rich.markup import escape  # messages quote config ("[nats] url") that rich would read as markup

    err.print(f"[bold red]error:[/] {escape(message)}", markup=True)
    if hint and hint not in message:  # some messages already end with their hint (config problems)
        err.print(f"[dim]hint: {escape(hint)}[/]", markup=True)
    sys.exit(code)


def dump_json(obj: Any) -> None:
    click.echo(msgspec.json.format(msgspec.json.encode(obj), indent=2).decode())


async def refuse_if_down(urls: str | list[str]) -> None:
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
    shown = ", ".join(redact_url(u) for u in servers)
    raise NatsUnavailable(
        f"cannot reach NATS at {shown}: connection refused",
        hint="is `watchd run` running? Otherwise check [nats] url in the config",
    )


async def publish_events(loaded: Loaded, events: list[Event], role: Role = "publish") -> list[PubAckInfo]:
    """Publish as `role`: "publish" for outside events, "admin" for watchd's own (watchd.*)."""
    from watchd import bus, credentials

    url = credentials.client_url(loaded, role)
    await refuse_if_down(url)
    nc = await bus.connect(url, name="watchd-cli", timeout_s=3)
    try:
        js = nc.jetstream()
        return [await bus.publish_event(js, e) for e in events]
    finally:
        await nc.close()


def one_line(text: str | None, limit: int = 100) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else "…" + flat[-(limit - 1) :]


LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def log_format(stream: TextIO) -> str:
    """Lines with a timestamp on a terminal; without one otherwise, since journald (or whatever
    collects a service's stderr) stamps each line itself."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # a closed or stand-in stream
        tty = False
    return "%(asctime)s " + LOG_FORMAT if tty else LOG_FORMAT


def setup_logging(verbose: bool, stream: TextIO | None = None) -> None:
    """The log of `watchd run` and `watchd worker`: INFO (DEBUG with -v) to stderr; the libraries'
    chatter only from WARNING up."""
    stream = stream or sys.stderr
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=log_format(stream), stream=stream)
    logging.getLogger("nats").setLevel(logging.WARNING)
    logging.getLogger("aiohttp").setLevel(logging.WARNING)


@contextlib.contextmanager
def progress_bar(
    description: str, *, quiet: bool = False, unit: str = "items"
) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on the terminal (stderr) for long work, as `update(done, total)`; None on a
    pipe, in a script or with `quiet` (--json), so nothing but the result is printed there.
    `unit="bytes"` shows sizes ("1.2/4.6 MB") rather than counts."""
    if quiet or not err.is_terminal:
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    count = DownloadColumn() if unit == "bytes" else MofNCompleteColumn()
    columns = (TextColumn("{task.description}"), BarColumn(), count, TimeRemainingColumn())
    with Progress(*columns, console=_err.console(), transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=max(total, done))

        yield update
