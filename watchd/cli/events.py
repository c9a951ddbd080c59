"""Publishing events: emit and exec."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import deque
from typing import Any

import click
import msgspec

from watchd.cli.daemon_http import post_event
from watchd.cli.options import CONFIG_OPTION, load, load_config_only
from watchd.config import Loaded
from watchd.errors import ConfigError, EventRejected, WatchdError
from watchd.model import encode, make_event, parse_data


def _parse_pairs(pairs: tuple[str, ...], base: dict[str, Any]) -> dict[str, Any]:
    """`k=v` pairs; v is JSON when it parses (5, true, "x", [1]) else a string; `a.b=1` nests."""
    data = dict(base)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise EventRejected(f"bad field {pair!r}: use key=value, e.g. exit_code=0")
        try:  # strictly, as the HTTP listener reads JSON: `x=NaN` stays the string "NaN"
            value: Any = msgspec.json.decode(raw)
        except (msgspec.DecodeError, RecursionError):
            value = raw
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise EventRejected(f"field {key!r} nests under a value that is not an object")
        node[leaf] = value
    return data


@click.command()
@CONFIG_OPTION
@click.argument("subject")
@click.argument("fields", nargs=-1)
@click.option("--json", "json_data", metavar="OBJ", help="the event's data as a JSON object")
@click.option("--id", "event_id", metavar="ID", help="event id (default: a new ULID); a re-sent id is stored once")
@click.option("--source", default="cli", show_default=True, help="the event's source")
@click.option(
    "--output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help='json: {"id", "subject", "seq", "duplicate"} (--json gives the event\'s data)',
)
def emit(
    config_path: str | None,
    subject: str,
    fields: tuple[str, ...],
    json_data: str | None,
    event_id: str | None,
    source: str,
    output: str,
) -> None:
    """Publish one event.

    \b
    Examples:
      watchd emit backup.done exit_code=0 duration_s=812.4
      watchd emit mail.received --json '{"from": "a@bigcustomer.com", "urgent": true}'
    """
    base = parse_data(json_data, what="--json") if json_data else {}
    event = make_event(subject, _parse_pairs(fields, base), id=event_id, source=source)
    loaded = load_config_only(config_path)
    if len(encode(event)) > (limit := loaded.config.engine.max_event_bytes):
        raise EventRejected(f"event is over the {limit}-byte limit ([engine] max_event_bytes)")
    # The running daemon's listener first: a POST costs milliseconds, a NATS client most of a second
    # to import. Without a daemon to answer, publish to NATS directly.
    answer = post_event(loaded, event)
    if answer is not None:
        seq, duplicate = answer["seq"], answer["duplicate"]
    else:
        import asyncio

        from watchd.cli.common import publish_events

        ack = asyncio.run(publish_events(loaded, [event]))[0]
        seq, duplicate = ack.seq, ack.duplicate
    if output == "json":
        click.echo(
            msgspec.json.encode({"id": event.id, "subject": subject, "seq": seq, "duplicate": duplicate}).decode()
        )
        return
    note = " (duplicate: already stored)" if duplicate else ""
    click.echo(f"{event.id} {subject} seq {seq}{note}")


@click.command(name="exec", context_settings={"ignore_unknown_options": True})
@CONFIG_OPTION
@click.argument("subject")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(config_path: str | None, subject: str, command: tuple[str, ...]) -> None:
    """Run COMMAND; emit SUBJECT.started, then SUBJECT.done or SUBJECT.failed; exit with its code.

    \b
    Example:
      watchd exec backup -- restic backup /home
    """
    from watchd.cli.common import err  # rich and NATS: exec runs long anyway

    make_event(f"{subject}.started")  # check the subject (and its longest suffix) before running anything
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
    import asyncio

    from watchd.cli.common import err, publish_events

    if loaded is None:
        return
    try:
        asyncio.run(publish_events(loaded, [event]))
    except WatchdError as exc:
        err.print(f"warning: could not publish {event.subject}: {exc.message}", markup=False)
