"""`watchd canary`: the canary job run now, through the running daemon's path."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import TYPE_CHECKING, Any

import click
from rich.text import Text

from watchd.cli.common import CONFIG_OPTION, dump_json, err, http_get, load, out, refuse_if_down
from watchd.config import Loaded
from watchd.cron.schedule import parse_duration
from watchd.errors import DaemonNotRunning, WatchdError
from watchd.model import own_event

if TYPE_CHECKING:
    from watchd.jobs import JobResult


@click.command()
@CONFIG_OPTION
@click.option("--timeout", default="30s", show_default=True, metavar="D", help="how long the event may take")
@click.option("--json", "as_json", is_flag=True, help='{"ok", "summary", "path", "probes", "failing", …}')
def canary(config_path: str | None, timeout: str, as_json: bool) -> None:
    """Send a synthetic event through the daemon and probe every notifier and agent; exit 1 on failure.

    The event goes NATS → engine → handoff → delivery in the running daemon (the built-in watch
    watchd-canary); each notifier and agent is then probed without sending anyone a message
    (Telegram getMe, Slack auth.test, a connect check for webhooks, an agent's `probe` command).
    The outcome is published as watchd.job.canary.done or .failed; the built-in watch
    watchd-canary-failed alerts on a failure.

    \b
    Examples:
      watchd canary
      watchd canary --json | jq '.probes[] | select(.ok | not)'
    """
    timeout_s = parse_duration(timeout)
    loaded = load(config_path)
    try:
        http_get(loaded, "/healthz", timeout_s=2)
    except DaemonNotRunning as exc:
        raise DaemonNotRunning(
            f"the canary sends its event through the running daemon, and none answers ({exc.message})",
            hint="start it with `watchd run` (or `systemctl --user start watchd`), then run `watchd canary` again",
        ) from None
    result, note = asyncio.run(_run(loaded, timeout_s))
    if as_json:
        dump_json({"ok": result.ok, **result.data})
    else:
        path = result.data["path"]
        out.print(Text(f"{'ok    ' if path['ok'] else 'FAILED'} path: {path['detail']}"))
        for p in result.data["probes"]:
            out.print(Text(f"{'ok    ' if p['ok'] else 'FAILED'} {p['target']}: {_without_name(p)}"))
        out.print(Text(result.summary, style="bold" if result.ok else "bold red"))
    if note:
        err.print(Text(f"note: {note}", style="dim"))
    if not result.ok:
        sys.exit(1)


def _without_name(probe: dict[str, Any]) -> str:
    detail = str(probe["detail"])
    return detail.removeprefix(f"{probe['target']}: ")


async def _run(loaded: Loaded, timeout_s: float) -> tuple[JobResult, str | None]:
    from watchd import bus, credentials
    from watchd.jobs import JobContext
    from watchd.jobs import canary as canary_job
    from watchd.notify.http_client import HttpClient
    from watchd.store import Store, db_path

    """The job with the CLI's own NATS connection and freshly built targets (the probes run here)."""
    from watchd.targets import build_targets

    url = credentials.client_url(loaded, "admin")  # it probes targets and writes the store, as the daemon
    await refuse_if_down(url)
    nc = await bus.connect(url, name="watchd-canary", timeout_s=3)
    js = nc.jetstream()
    notes: list[str] = []

    async def emit(subject: str, data: dict[str, Any]) -> None:
        try:
            await bus.publish_event(js, own_event(subject, data))
        except WatchdError as exc:  # the result is still shown; only the event is lost
            notes.append(f"could not publish {subject}: {exc.message}")

    store = await Store.open(db_path(loaded.state_dir))
    http = HttpClient()  # the probes' session, closed below with the targets
    targets = build_targets(loaded, http=http, nc=nc, js=js, store=store)  # anthropic agents keep runs there
    try:
        ctx = JobContext(
            name="canary",
            loaded=loaded,
            store=store,
            clock=time.time,
            emit=emit,
            timeout_s=timeout_s,
            nc=nc,
            js=js,
            targets=targets,
            http=http,
        )
        result = await canary_job.run_and_report(ctx, "manual")
    finally:
        for target in targets.values():
            close = getattr(target, "close", None)  # e.g. an API client's connections
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()
        await http.close()
        store.close()
        await nc.close()
    return result, "; ".join(notes) or None
