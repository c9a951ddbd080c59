"""`watchd ack | snooze | mute | unmute`: answer an incident (SPEC section 8) through the running
daemon's HTTP API (watchd/answer_api.py), which applies it in order with every event and says
what it did. Who answered is the local user (`cli:<user>`), as `explain` shows it."""

from __future__ import annotations

import getpass
import re

import click

from watchd.cli.common import CONFIG_OPTION, err, fail, load, out

KEY_OPTION = click.option("--key", metavar="K", help="only this key of the watch (default: every key)")


def local_user() -> str:
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        return "cli"
    name = re.sub(r"[^A-Za-z0-9_.@+-]", "_", name)[:64]
    return f"cli:{name}" if name else "cli"


def _answer(config_path: str | None, action: str, target: str, key: str | None, duration: str | None) -> None:
    from watchd.cli.daemon_http import post_json

    loaded = load(config_path)
    body = {"target": target, "key": key, "duration": duration, "by": local_user()}
    status, answer = post_json(loaded, f"/api/{action}", {k: v for k, v in body.items() if v is not None})
    if status == 202:
        err.print(f"{action}: sent, but watchd has not applied it yet (it will, in order)", markup=False)
        return
    if status != 200:
        fail(str(answer.get("error") or f"watchd answered HTTP {status}"), answer.get("hint"))
    for d in answer.get("decisions", []):
        where = f"{d['watch']} [{d['key']}]" if d.get("key") is not None else d["watch"]
        out.print(f"{where}: {d['reason']}", markup=False)


@click.command("ack")
@click.argument("target", metavar="HANDOFF|WATCH")
@KEY_OPTION
@CONFIG_OPTION
def ack(target: str, key: str | None, config_path: str | None) -> None:
    """Acknowledge an incident: its repeats stop; a new incident notifies again.

    TARGET is a handoff id (or a prefix of one; from `watchd handoffs` or the notification), which
    acks that handoff's incident, or a watch id, which acks the open incident of every key (or of
    --key K).

    \b
    Examples:
      watchd ack laptop-alive --key x1
      watchd ack h_3f2a9c
    """
    _answer(config_path, "ack", target, key, None)


@click.command("snooze")
@click.argument("watch")
@click.argument("duration")
@KEY_OPTION
@CONFIG_OPTION
def snooze(watch: str, duration: str, key: str | None, config_path: str | None) -> None:
    """Hold WATCH for DURATION; when it ends, what still holds fires then.

    While snoozed, the watch's fires are held, not handed off; when the snooze ends, each incident
    it held (or that is still open and not acked) is handed off again if its condition still holds.

    \b
    Examples:
      watchd snooze nightly-backup 8h
      watchd snooze laptop-alive 1h --key x1
    """
    _answer(config_path, "snooze", watch, key, duration)


@click.command("mute")
@click.argument("watch")
@click.argument("duration")
@KEY_OPTION
@CONFIG_OPTION
def mute(watch: str, duration: str, key: str | None, config_path: str | None) -> None:
    """Silence WATCH for DURATION: its fires are recorded as muted, and nothing fires when it ends.

    \b
    Examples:
      watchd mute login-storm 24h
      watchd mute laptop-alive 2d --key x1
    """
    _answer(config_path, "mute", watch, key, duration)


@click.command("unmute")
@click.argument("watch")
@KEY_OPTION
@CONFIG_OPTION
def unmute(watch: str, key: str | None, config_path: str | None) -> None:
    """End a snooze or mute of WATCH early (a snooze's held incidents are judged at once).

    \b
    Examples:
      watchd unmute nightly-backup
      watchd unmute laptop-alive --key x1
    """
    _answer(config_path, "unmute", watch, key, None)
