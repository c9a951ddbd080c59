"""`watchd source run NAME` (one source, standalone) and `watchd source test NAME` (dry)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from watchd.cli.options import CONFIG_OPTION, load_config_only
from watchd.config import Loaded
from watchd.errors import WatchdError
from watchd.sources.settings import SourceSettings

if TYPE_CHECKING:
    from watchd.sources.publish import DryOutlet


@click.group("source")
def source_group() -> None:
    """Run one source on its own, or try it without publishing.

    The daemon runs every [source.NAME] itself; `run` is for a source on another machine (the
    journal of a NAS feeding a laptop's watchd), `test` for trying a new one.

    \b
    Examples:
      watchd source test site
      watchd source test inbox --for 30s
      watchd source run units --nats "$(watchd nats url --role publish)"
    """


def _settings(loaded: Loaded, name: str) -> SourceSettings:
    found = loaded.config.source.get(name)
    if found is None:
        known = ", ".join(sorted(loaded.config.source)) or "none"
        raise WatchdError(f"no source named {name!r} in the config (known: {known})", hint="add a [source.NAME] table")
    return found


@source_group.command("run")
@CONFIG_OPTION
@click.argument("name")
@click.option(
    "--nats",
    "nats_url",
    metavar="URL",
    envvar="WATCHD_NATS_URL",
    help="NATS to publish to, with credentials (default: this config's; see `watchd nats url --role publish`); "
    "also $WATCHD_NATS_URL, which keeps it off the process list",
)
@click.option("--state", "state_dir", metavar="DIR", help="where its position is kept (default: <state_dir>/sources)")
def run_cmd(config_path: str | None, name: str, nats_url: str | None, state_dir: str | None) -> None:
    """Run source NAME until stopped (SIGTERM or Ctrl-C), publishing to NATS.

    Its position (last value, offset, cursor) is saved only after JetStream stored what it
    published: a kill loses nothing and publishes nothing twice.

    \b
    Example:
      WATCHD_NATS_URL="nats://publish:…@laptop:4222" watchd source run units --state /var/lib/watchd-src
    """
    loaded = load_config_only(config_path)
    settings = _settings(loaded, name)
    folder = Path(state_dir) if state_dir else loaded.state_dir / "sources"
    asyncio.run(_run(loaded, name, settings, nats_url, folder))


async def _run(loaded: Loaded, name: str, settings: SourceSettings, nats_url: str | None, folder: Path) -> None:
    from watchd import bus, credentials
    from watchd.cli.common import err, refuse_if_down
    from watchd.jspublish import JetStreamPublisher
    from watchd.sources import make_source
    from watchd.sources.base import SourceContext
    from watchd.sources.publish import Publisher
    from watchd.sources.state import PositionStore
    from watchd.sources.supervise import new_health, supervised

    source = make_source(name, settings)
    if source.on_listener:
        raise WatchdError(
            f"source {name} is a {source.type_name} source: `watchd run` serves it on its HTTP listener",
            hint="start the daemon (`watchd run`) with this config",
        )
    url = nats_url or credentials.client_url(loaded, "publish")
    await refuse_if_down(url)
    nc = await bus.connect(url, name=f"watchd-source-{name}")
    positions = PositionStore(folder)
    health = new_health(name, settings, time.time())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    max_bytes = loaded.config.engine.max_event_bytes
    publish = JetStreamPublisher(nc).publish_events
    publisher = Publisher(name, publish, positions, health, time.time, max_bytes=max_bytes)
    ctx = SourceContext(name, loaded.base_dir, {}, publisher, health, time.time, stop)
    os.close(positions.lock(name))  # refuse at once, not in the backoff loop, if it already runs
    err.print(f"source {name} ({source.type_name}) running; its position in {folder}", markup=False)
    try:
        await supervised(source, ctx, positions)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.flush(), 2)
        await nc.close()
    err.print(f"source {name} stopped: {health.events} events published", markup=False)


@source_group.command("test")
@CONFIG_OPTION
@click.argument("name")
@click.option(
    "--for",
    "for_",
    metavar="DURATION",
    help="run it this long (e.g. 30s) rather than once; a file source needs it to see changes",
)
@click.option("--json", "as_json", is_flag=True, help='one object: {"source", "type", "events", "dropped", …}')
def test_cmd(config_path: str | None, name: str, for_: str | None, as_json: bool) -> None:
    """Run source NAME once (one poll, one scan) or --for a while, and print each event it would
    publish as a JSON line (with --json, one object at the end). Nothing is published and no
    position is saved; it starts from the position the daemon saved, so a poll shows what would be
    a change now.

    \b
    Examples:
      watchd source test site
      watchd source test inbox --for 30s
      watchd source test site --json | jq '.events[].data'
    """
    loaded = load_config_only(config_path)
    settings = _settings(loaded, name)
    seconds = None
    if for_ is not None:
        from watchd.cron.schedule import ScheduleError, parse_duration

        try:
            seconds = parse_duration(for_)
        except ScheduleError as exc:
            raise WatchdError(f"--for: {exc.message}") from None
    outlet, last_error = asyncio.run(_test(loaded, name, settings, seconds, quiet=as_json))
    if as_json:
        import msgspec

        from watchd.cli.common import dump_json
        from watchd.model import encode
        from watchd.sources.settings import type_name

        dump_json(
            {
                "source": name,
                "type": type_name(settings),
                "events": [msgspec.json.decode(encode(e)) for e in outlet.events],  # as stored
                "dropped": outlet.dropped,
                "last_error": last_error,
            }
        )
        return
    if last_error:
        click.echo(f"last error: {last_error}", err=True)
    click.echo(f"{len(outlet.events)} event(s) would be published; nothing was", err=True)


async def _test(
    loaded: Loaded, name: str, settings: SourceSettings, seconds: float | None, *, quiet: bool = False
) -> tuple[DryOutlet, str | None]:
    """The events the source would publish, and its last error (each event also printed as a JSON
    line as it comes, unless `quiet`)."""
    from watchd.sources import make_source
    from watchd.sources.base import SourceContext
    from watchd.sources.publish import DryOutlet
    from watchd.sources.state import PositionStore
    from watchd.sources.supervise import new_health

    source = make_source(name, settings)
    health = new_health(name, settings, time.time())
    outlet = DryOutlet(name, io.StringIO() if quiet else sys.stdout, health, time.time)
    position = PositionStore(loaded.state_dir / "sources").load(name)
    ctx = SourceContext(name, loaded.base_dir, position, outlet, health, time.time)
    if seconds is None:
        try:
            await source.once(ctx)
            return outlet, health.last_error
        except NotImplementedError:
            seconds = 10.0
            if not quiet:
                click.echo(f"{source.type_name} sources have no single round: watching for 10s", err=True)
    task = asyncio.create_task(source.run(ctx))
    done, _ = await asyncio.wait({task}, timeout=seconds)
    ctx.stop.set()
    if not done:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), 2)
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task  # re-raises what stopped it (WatchdError: one line)
    return outlet, health.last_error
