"""Checks of the daemon's own settings ([nats], [http]) that a schema cannot express, so that
`validate` fails on what `run` would fail on (or be hurt by), each at its file:line with a fix.

Numbers carry their bounds in the Structs (config.py, checked by structcheck); these are the
settings whose text has a grammar of its own: listen addresses and the JetStream sync interval.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from watchd.errors import WatchdError
from watchd.limits import split_listen
from watchd.tomlpos import FileProblems

if TYPE_CHECKING:
    from watchd.config import Config

# nats-server's sync_interval: how often JetStream fsyncs. Longer than an hour means acknowledged
# events may be lost on power loss after being "stored" for that long; nobody means that.
MAX_SYNC_S = 3600.0
MIN_SYNC_S = 0.01
SYNC_HINT = 'use "always" (fsync before every ack, the default) or an interval such as "2m"'

# A schedule's `every` below this would run a process (or a job) many times a second: a typo
# ("1ms" for "1m") more often than a wish. Fast sources are events, not schedules.
MIN_EVERY_S = 1.0


def sync_interval(text: str) -> str:
    """[nats] sync as nats-server's sync_interval: "always", or a Go duration in seconds ("120s").

    watchd durations ("1d", "1h30m") are not all Go durations, so the value is converted here rather
    than written through; anything else raises WatchdError saying what to write instead."""
    if text.strip() == "always":
        return "always"
    from watchd.cron.schedule import ScheduleError, parse_duration  # croniter: only when there is a duration

    try:
        seconds = parse_duration(text)
    except ScheduleError:
        raise WatchdError(f'[nats] sync {text!r} is neither "always" nor a duration', hint=SYNC_HINT) from None
    if not MIN_SYNC_S <= seconds <= MAX_SYNC_S:
        raise WatchdError(
            f"[nats] sync {text!r} is outside 10ms to 1h: nats-server would fsync too often or leave "
            "stored events unsynced too long",
            hint=SYNC_HINT,
        )
    return f"{seconds:g}s"


def check(config: Config, probs: FileProblems) -> None:
    """Record every problem of [nats] and [http] in `probs`."""
    for table, listen in (("http", config.http.listen), ("nats", config.nats.listen)):
        try:
            split_listen(listen, setting=f"[{table}] listen")
        except WatchdError as exc:
            probs.at((table, "listen"), f"{exc.message} ({exc.hint})" if exc.hint else exc.message)
    try:
        sync_interval(config.nats.sync)
    except WatchdError as exc:
        probs.at(("nats", "sync"), f"{exc.message.removeprefix('[nats] ')}: {exc.hint}")


def unreadable_secret_file(value: str) -> str | None:
    """Why a `file:` secret (or a `cred:` one, when $CREDENTIALS_DIRECTORY is set) cannot be read
    here, as a warning: the daemon may run as another user, but most often the path is wrong.
    None when it reads, or is no file secret. A `cred:` outside systemd is not checked: only the
    service has the credentials directory."""
    scheme, _, rest = value.partition(":")
    if scheme == "cred":
        folder = os.environ.get("CREDENTIALS_DIRECTORY")
        if not folder:
            return None
        path = Path(folder) / rest
    elif scheme == "file":
        path = Path(rest)
    else:
        return None
    try:
        with path.open("rb"):
            return None
    except OSError as exc:
        return f"{scheme}:{rest} cannot be read here ({exc.strerror}); the daemon needs it"
