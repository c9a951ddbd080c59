"""Why things happened: explain (a watch, an event, a schedule) and test (backtests)."""

from __future__ import annotations

import asyncio
import time

import click

from watchd import config, credentials
from watchd.cli.common import CONFIG_OPTION, dump_json, err, load, out, progress_bar, refuse_if_down
from watchd.errors import NatsUnavailable, WatchdError


@click.command(name="explain")
@CONFIG_OPTION
@click.argument("watch", required=False)
@click.option("--event", "event_id", metavar="ID", help="what one event did: every watch it was a candidate for")
@click.option("--schedule", "schedule_name", metavar="NAME", help="what one schedule did and skipped, tick by tick")
@click.option("--since", metavar="D", help="only decisions in the last D (90s, 2h, 1d, 1h30m)")
@click.option("--key", metavar="K", help="only decisions and handoffs for this key")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output (documented in the README)")
def explain_cmd(
    config_path: str | None,
    watch: str | None,
    event_id: str | None,
    schedule_name: str | None,
    since: str | None,
    key: str | None,
    as_json: bool,
) -> None:
    """Why WATCH fired or did not: a timeline and a one-line verdict; or what one --event or --schedule did.

    \b
    Examples:
      watchd explain nightly-backup
      watchd explain login-storm --since 1h --key bob
      watchd explain --event 01JD3XK5M8Q2W7YV1T4N6B9C0E --json
      watchd explain --schedule backup
    """
    from watchd.explain import watch as ex

    if schedule_name is not None:
        if watch is not None or event_id is not None or since or key:
            raise WatchdError(
                "--schedule takes no WATCH, --event, --since or --key", hint="e.g. `watchd explain --schedule backup`"
            )
        from watchd.explain import schedule as explain_schedule

        now = time.time()
        sreport = explain_schedule.explain_from_db(load(config_path), schedule_name, now)
        if as_json:
            dump_json(sreport.to_json())
        else:
            explain_schedule.render(sreport, out, now)
        return
    from watchd.jobs.builtin_watches import all_watches
    from watchd.store import db_path
    from watchd.store.agent_watches import active_watch_defs

    if (watch is None) == (event_id is None):
        raise WatchdError(
            "give one WATCH id or --event ID (or --schedule NAME)", hint="e.g. `watchd explain nightly-backup`"
        )
    if event_id is not None and (since or key):
        raise WatchdError("--since and --key apply to a WATCH, not to --event")
    loaded = load(config_path)
    defs = all_watches(loaded)  # the files' watches and the built-in ones
    if watch is not None and not any(d.watch.id == watch for d in defs) and not db_path(loaded.state_dir).exists():
        raise ex.suggest(watch, (d.watch.id for d in defs))
    if since:
        ex.parse_since(since)
    conn = ex.open_db(loaded.state_dir)
    try:
        defs += active_watch_defs(conn, time.time())  # and follow-up watches agents created
        if watch is not None and not any(d.watch.id == watch for d in defs):
            raise ex.suggest(watch, (d.watch.id for d in defs))
        if watch is not None:
            now = time.time()
            wreport = ex.explain_from_db(conn, defs, loaded.zone(), watch, now=now, since=since, key=key)
            report: ex.WatchReport | ex.EventReport = wreport
            if loaded.config.source:
                from watchd.explain.sources import silent_feeders
                from watchd.store.engine_state import heard

                d = next(d for d in defs if d.watch.id == watch)
                for name, last in silent_feeders(loaded.config.source, d, heard(conn), now):
                    since_text = f"since {ex.when(last, wreport.info.zone, now)}" if last is not None else "yet"
                    wreport.sources.append(f"no events from source {name!r} {since_text}")
        else:
            assert event_id is not None
            report = ex.event_from_db(conn, defs, loaded.zone(), event_id)
    finally:
        conn.close()
    if as_json:
        dump_json(report.to_json())
    else:
        from watchd.explain.render import render_event, render_watch

        if isinstance(report, ex.WatchReport):
            render_watch(report, out)
        else:
            render_event(report, out)


@click.command(name="test")
@CONFIG_OPTION
@click.argument("file", metavar="FILE")
@click.option("--since", metavar="D", help="replay the recorded EVENTS stream from now − D (default 7d)")
@click.option("--events", "events_path", metavar="FILE.jsonl", help="replay events from a file, one JSON event a line")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output (documented in the README)")
@click.option("--all", "all_fires", is_flag=True, help="list every would-be fire with its reason, not only the summary")
def backtest_cmd(
    config_path: str | None, file: str, since: str | None, events_path: str | None, as_json: bool, all_fires: bool
) -> None:
    """Backtest the watches in FILE against history: every would-be fire, with reasons.

    FILE is checked as `watchd validate` checks it, with the config's targets and zone. Exits 0
    whatever fires (it is a report); 1 on an invalid FILE or unreadable input.

    \b
    Examples:
      watchd test watches/new.toml                  # the last 7 days of the EVENTS stream
      watchd test watches/new.toml --since 2d --json
      watchd test watches/new.toml --events history.jsonl --all
    """
    from pathlib import Path

    from watchd.explain import backtest
    from watchd.explain.watch import parse_since

    if since is not None and events_path is not None:
        raise WatchdError("give --since or --events, not both", hint="--events replays a file; --since the stream")
    base = config.load(config.find_config(config_path), watches=False)
    path = Path(file)
    if not path.is_file():
        raise WatchdError(f"watch file {file} not found", hint="give the path of a TOML file with [[watch]] tables")
    defs, warnings = config.load_watch_file(base, path)
    for warning in warnings:  # each already reads "file:line:col: warning: …"
        err.print(warning, markup=False)
    if not defs:
        raise WatchdError(f"{file} defines no watches", hint="add [[watch]] tables (see watches/ for examples)")
    max_bytes = base.config.engine.max_event_bytes
    with progress_bar("replaying events", quiet=as_json) as progress:
        if events_path is not None:
            report = backtest.replay_events(file, defs, base.zone(), Path(events_path), max_bytes, progress)
        else:
            since = since or "7d"
            since_s, url = parse_since(since), credentials.client_url(base, "read")

            async def replay() -> backtest.Report:
                try:
                    await refuse_if_down(url)
                except NatsUnavailable as exc:
                    hint = (exc.hint or "") + "; or backtest a file with --events"
                    raise NatsUnavailable(exc.message, hint) from None
                now = time.time()
                return await backtest.replay_stream(
                    file, defs, base.zone(), url, since_s, now, since, max_bytes, progress
                )

            report = asyncio.run(replay())
    if as_json:
        dump_json(report.to_json())
    else:
        backtest.render(report, out, all_fires)
