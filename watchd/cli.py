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


async def publish_events(loaded: Loaded, events: list[Any]) -> list[bus.PubAckInfo]:
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
    ack = asyncio.run(publish_events(loaded, [event]))[0]
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
        asyncio.run(publish_events(loaded, [event]))
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


@cli.group(invoke_without_command=True)
@CONFIG_OPTION
@click.pass_context
def dlq(ctx: click.Context, config_path: str | None) -> None:
    """Dead letters: list them, send one again (same id), or drop one for good.

    \b
    Examples:
      watchd dlq list
      watchd dlq replay h_3f2a…      # a unique prefix of the id is enough
      watchd dlq drop h_3f2a…
    """
    ctx.obj = {"config_path": config_path}
    if ctx.invoked_subcommand is None:
        ctx.invoke(dlq_list, config_path=config_path)


def _dlq_config(ctx: click.Context, config_path: str | None) -> str | None:
    """`--config` after the subcommand wins; before it (`watchd dlq --config P list`) works too."""
    return config_path or (ctx.obj or {}).get("config_path")


def _one_line(text: str | None, limit: int = 100) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else "…" + flat[-(limit - 1) :]


@dlq.command(name="list")
@CONFIG_OPTION
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="an array of handoff objects, as `watchd handoffs --json`")
@click.pass_context
def dlq_list(ctx: click.Context, config_path: str | None, limit: int = 100, as_json: bool = False) -> None:
    """List dead handoffs, newest first, with why they died.

    \b
    Example:
      watchd dlq list --json | jq -r '.[].id'
    """
    from watchd.status import list_handoffs

    rows = list_handoffs(load(_dlq_config(ctx, config_path)), "dead", limit)
    if as_json:
        dump_json(rows)
        return
    if not rows:
        out.print("no dead letters")
        return
    # Two lines each rather than a table: the id (what `replay` and `drop` take) and the error are
    # never cut to fit a narrow terminal. Text, not markup: errors quote agents' output.
    for h in rows:
        n = h["attempt"]
        head = f"{h['id']}  {h['watch']} → {h['target']}  {n} attempt{'s' if n != 1 else ''}  died {h['updated_at']}"
        out.print(Text(head))
        out.print(Text("    " + _one_line(h["last_error"], 200), style="dim"))


def _dlq_write(ctx: click.Context, config_path: str | None, action: str, ref: str) -> tuple[dict[str, Any], bool]:
    from watchd.store import connect_existing, db_path, drop_dead, replay_dead

    loaded = load(_dlq_config(ctx, config_path))
    conn = connect_existing(db_path(loaded.state_dir))
    try:
        row = (replay_dead if action == "replay" else drop_dead)(conn, ref, time.time())
    finally:
        conn.close()
    try:
        running = bool(_http_get(loaded, "/healthz", timeout_s=1).get("pid"))
    except DaemonNotRunning:
        running = False
    return row, running


@dlq.command(name="replay")
@CONFIG_OPTION
@click.argument("handoff_id", metavar="ID")
@click.pass_context
def dlq_replay(ctx: click.Context, config_path: str | None, handoff_id: str) -> None:
    """Deliver a dead handoff again, with the same id, from attempt 1.

    \b
    Example:
      watchd dlq replay h_3f2a9c
    """
    row, running = _dlq_write(ctx, config_path, "replay", handoff_id)
    when = "the running daemon sends it within a few seconds" if running else "it is sent when watchd starts"
    out.print(Text(f"replaying {row['id']} ({row['watch']} → {row['target']}): {when}"))


@dlq.command(name="drop")
@CONFIG_OPTION
@click.argument("handoff_id", metavar="ID")
@click.pass_context
def dlq_drop(ctx: click.Context, config_path: str | None, handoff_id: str) -> None:
    """Give up on a dead handoff for good (state `dropped`; `replay` can still revive it).

    \b
    Example:
      watchd dlq drop h_3f2a9c
    """
    row, _ = _dlq_write(ctx, config_path, "drop", handoff_id)
    out.print(Text(f"dropped {row['id']} ({row['watch']} → {row['target']})"))


@cli.command(name="explain")
@CONFIG_OPTION
@click.argument("watch", required=False)
@click.option("--event", "event_id", metavar="ID", help="what one event did: every watch it was a candidate for")
@click.option("--schedule", "schedule_name", metavar="NAME", help="what one schedule did and skipped, tick by tick")
@click.option("--since", metavar="D", help="only decisions in the last D (90s, 2h, 1d, 1h30m)")
@click.option("--key", metavar="K", help="only decisions and handoffs for this key")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output (documented in the README)")
def explain_cmd(config_path: str | None, watch: str | None, event_id: str | None, schedule_name: str | None,
                since: str | None, key: str | None, as_json: bool) -> None:  # fmt: skip
    """Why WATCH fired or did not: a timeline and a one-line verdict; or what one --event or --schedule did.

    \b
    Examples:
      watchd explain nightly-backup
      watchd explain login-storm --since 1h --key bob
      watchd explain --event 01JD3XK5M8Q2W7YV1T4N6B9C0E --json
      watchd explain --schedule backup
    """
    from watchd import explain as ex

    if schedule_name is not None:
        if watch is not None or event_id is not None or since or key:
            raise WatchdError("--schedule takes no WATCH, --event, --since or --key",
                              hint="e.g. `watchd explain --schedule backup`")  # fmt: skip
        from watchd import explain_schedule

        now = time.time()
        sreport = explain_schedule.explain_from_db(load(config_path), schedule_name, now)
        if as_json:
            dump_json(sreport.to_json())
        else:
            explain_schedule.render(sreport, out, now)
        return
    from watchd.agents.ledger import active_watch_defs
    from watchd.jobs.builtin_watches import all_watches
    from watchd.store import db_path

    if (watch is None) == (event_id is None):
        raise WatchdError("give one WATCH id or --event ID (or --schedule NAME)",
                          hint="e.g. `watchd explain nightly-backup`")  # fmt: skip
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
            report: ex.WatchReport | ex.EventReport = ex.explain_from_db(
                conn, defs, loaded.zone(), watch, now=time.time(), since=since, key=key
            )
        else:
            assert event_id is not None
            report = ex.event_from_db(conn, defs, loaded.zone(), event_id)
    finally:
        conn.close()
    if as_json:
        dump_json(report.to_json())
    else:
        from watchd.explain_render import render_event, render_watch

        if isinstance(report, ex.WatchReport):
            render_watch(report, out)
        else:
            render_event(report, out)


@cli.command(name="test")
@CONFIG_OPTION
@click.argument("file", metavar="FILE")
@click.option("--since", metavar="D", help="replay the recorded EVENTS stream from now − D (default 7d)")
@click.option("--events", "events_path", metavar="FILE.jsonl", help="replay events from a file, one JSON event a line")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output (documented in watchd/backtest.py)")
def backtest_cmd(config_path: str | None, file: str, since: str | None, events_path: str | None,
                 as_json: bool) -> None:  # fmt: skip
    """Backtest the watches in FILE against history: every would-be fire, with reasons.

    FILE is checked as `watchd validate` checks it, with the config's targets and zone. Exits 0
    whatever fires (it is a report); 1 on an invalid FILE or unreadable input.

    \b
    Examples:
      watchd test watches/new.toml                  # the last 7 days of the EVENTS stream
      watchd test watches/new.toml --since 2d --json
      watchd test watches/new.toml --events history.jsonl
    """
    from pathlib import Path

    from watchd import backtest
    from watchd.daemon import nats_url
    from watchd.explain import parse_since

    if since is not None and events_path is not None:
        raise WatchdError("give --since or --events, not both", hint="--events replays a file; --since the stream")
    base = config.load(config.find_config(config_path), watches=False)
    path = Path(file)
    if not path.is_file():
        raise WatchdError(f"watch file {file} not found", hint="give the path of a TOML file with [[watch]] tables")
    defs, warnings = config.load_watch_file(base, path)
    for warning in warnings:
        err.print(f"warning: {warning}", markup=False)
    if not defs:
        raise WatchdError(f"{file} defines no watches", hint="add [[watch]] tables (see watches/ for examples)")
    max_bytes = base.config.engine.max_event_bytes
    if events_path is not None:
        report = backtest.replay_events(file, defs, base.zone(), Path(events_path), max_bytes)
    else:
        since = since or "7d"
        since_s = parse_since(since)
        url = nats_url(base)

        async def replay() -> backtest.Report:
            try:
                await _refused(url)
            except NatsUnavailable as exc:
                raise NatsUnavailable(exc.message, (exc.hint or "") + "; or backtest a file with --events") from None
            return await backtest.replay_stream(file, defs, base.zone(), url, since_s, time.time(), since, max_bytes)

        report = asyncio.run(replay())
    if as_json:
        dump_json(report.to_json())
    else:
        backtest.render(report, out)


@cli.command(context_settings={"ignore_unknown_options": True})
@CONFIG_OPTION
@click.argument("target")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("-j", "--concurrency", default=1, show_default=True, type=click.IntRange(1, 256),
              help="handoffs run at once")  # fmt: skip
@click.option("--timeout", metavar="D", help="longest run of COMMAND (default: the agent's `timeout`, else 5m)")
@click.option("--ack-wait", default="60s", show_default=True, metavar="D",
              help="silence before NATS gives a taken handoff to another worker (renewed while it runs)")  # fmt: skip
@click.option("--max-attempts", default=8, show_default=True, type=click.IntRange(1),
              help="failed runs before the handoff is rejected")  # fmt: skip
@click.option("--reject-exit-code", default=75, show_default=True, help="COMMAND's exit code for \"I won't do this\"")
@click.option("--grace", default="10s", show_default=True, metavar="D",
              help="on SIGTERM, how long running commands may finish (a second signal stops them at once)")  # fmt: skip
@click.option("--durable", metavar="NAME", help="consumer name (default worker-<target>); same name, shared work")
@click.option("--state-dir", metavar="PATH", help="where finished handoff ids are kept (default "
              "$XDG_STATE_HOME/watchd-worker)")  # fmt: skip
@click.option("-v", "--verbose", is_flag=True, help="debug logging")
def worker(config_path: str | None, target: str, command: tuple[str, ...], concurrency: int, timeout: str | None,
           ack_wait: str, max_attempts: int, reject_exit_code: int, grace: str, durable: str | None,
           state_dir: str | None, verbose: bool) -> None:  # fmt: skip
    """Run COMMAND for each handoff to TARGET, an agent of type nats, from any machine that reaches NATS.

    Like a `command` agent: the handoff JSON on stdin, WATCHD_HANDOFF_ID (the idempotency key) in the
    environment; exit 0 replies done, the reject exit code replies rejected, anything else is retried.
    Workers with the same durable share the work. SIGTERM stops after the running commands finish.

    \b
    Example (with [agent.claw] type = "nats" in the daemon's config):
      watchd worker agent.claw -- my-agent handle --stdin
      watchd worker agent.claw -j 4 --timeout 30m --config ~/.config/watchd/config.toml -- ./handle.sh
    """
    from pathlib import Path

    from watchd import worker as worker_mod
    from watchd.daemon import nats_url
    from watchd.schedule import parse_duration

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)  # fmt: skip
    logging.getLogger("nats").setLevel(logging.WARNING)
    loaded = load(config_path)
    agent = loaded.config.agent.get(target.removeprefix("agent.")) if target.startswith("agent.") else None
    if not isinstance(agent, config.NatsAgent):
        agent = None
        err.print(f'warning: no [{target}] with type = "nats" in {loaded.config_path or "the config"}; '
                  "handoffs arrive only where the daemon's config has one", markup=False)  # fmt: skip
    opts = worker_mod.WorkerOptions(
        target=target, command=list(command), timeout=timeout or (agent.timeout if agent else "5m"),
        ack_wait_s=parse_duration(ack_wait), concurrency=concurrency, max_attempts=max_attempts,
        reject_exit_code=reject_exit_code, grace_s=parse_duration(grace), durable=durable or "",
        state_dir=Path(state_dir).expanduser() if state_dir else worker_mod.default_state_dir(),
    )  # fmt: skip
    parse_duration(opts.timeout)
    worker_mod.check_options(opts)  # before connecting: a typo is reported as such, not as "NATS is down"
    url = nats_url(loaded)
    asyncio.run(_refused(url))
    asyncio.run(worker_mod.run(url, opts))


from watchd import cli_agents as _cli_agents  # noqa: E402,F401  (registers commands)
from watchd import cli_backup as _cli_backup  # noqa: E402,F401  (registers commands)
from watchd import cli_canary as _cli_canary  # noqa: E402,F401  (registers commands)
from watchd import cli_schedules as _cli_schedules  # noqa: E402,F401  (registers commands)


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
    # `python -m watchd.cli`: run the imported module's group, the one the cli_*.py commands attach to.
    from watchd.cli import main as _main

    _main()

