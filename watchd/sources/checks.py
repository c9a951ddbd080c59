"""`validate` checks of `[source.NAME]` tables that a schema cannot express, each at its line.

Light on purpose: config loading imports this, so a type's run-time machinery (aiohttp,
watchfiles, a CSS parser) is imported only when a setting needs it checked.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from watchd.sources import PENDING, REGISTRY
from watchd.sources.settings import (
    FileSettings,
    JournalSettings,
    PollSettings,
    SlackSettings,
    SourceSettings,
    TelegramSettings,
    WebhookSettings,
    subject_of,
    type_name,
)
from watchd.tomlpos import FileProblems, PathPart

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")  # a token of watchd.source.<name>.silent
Path_ = tuple[PathPart, ...]


def check_sources(sources: dict[str, SourceSettings], probs: FileProblems, listen_host: str = "127.0.0.1") -> None:
    """`listen_host`: the [http] listener's, which decides whether an unsigned webhook is allowed."""
    webhook_paths: dict[str, str] = {}
    for name, settings in sources.items():
        here: Path_ = ("source", name)
        if isinstance(settings, WebhookSettings):
            from watchd.sources.webhook_check import webhook_problems

            for key, message in webhook_problems(name, settings, listen_host):
                probs.at((*here, key), message)
            other = webhook_paths.setdefault(settings.path, name)
            if other != name:
                probs.at((*here, "path"), f"path {settings.path!r} is already source {other!r}'s: give each its own")
        if not NAME_RE.match(name):
            probs.at(here, f"source name {name!r} must match ^[a-z0-9][a-z0-9_-]*$ (lowercase, digits, - and _)")
        if subject_of(settings) is None:
            probs.at(here, f'a {type_name(settings)} source needs `subject`, e.g. subject = "{name}.changed"')
        check_duration(settings.expect_every, (*here, "expect_every"), probs)
        if not runnable(type_name(settings)):
            probs.at(
                (*here, "type"),
                f'source type "{type_name(settings)}" cannot run in this version of watchd: '
                f"use one of {', '.join(t for t in REGISTRY if runnable(t))}",
            )
            continue
        checker = CHECKS.get(type(settings))
        if checker is not None:
            checker(settings, here, probs)


def runnable(type_: str) -> bool:
    """Whether this build has a runner for the type (a pending one only refuses to run)."""
    return not REGISTRY.get(type_, PENDING).startswith(PENDING)


def check_duration(text: str | None, path: Path_, probs: FileProblems, minimum_s: float = 0.0) -> float | None:
    if text is None:
        return None
    from watchd.cron.schedule import ScheduleError, format_duration, parse_duration

    try:
        seconds = parse_duration(text)
    except ScheduleError as exc:
        probs.at(path, exc.message)
        return None
    if seconds < minimum_s:
        probs.at(path, f"`{path[-1]}` must be at least {format_duration(minimum_s)}, not {text!r}")
        return None
    return seconds


def check_plain_subject(subject: str | None, path: Path_, probs: FileProblems) -> None:
    """A subject that is not a template: the shape every event's subject has, outside watchd.*."""
    if subject is None:
        return
    from watchd.errors import EventRejected
    from watchd.model import check_subject, is_reserved

    try:
        check_subject(subject)
    except EventRejected as exc:
        probs.at(path, exc.message)
        return
    if is_reserved(subject):
        probs.at(path, f"subject {subject!r}: subjects under watchd. are watchd's own; pick one of your own")


def _check_poll(s: Any, here: Path_, probs: FileProblems) -> None:
    assert isinstance(s, PollSettings)
    check_plain_subject(s.subject, (*here, "subject"), probs)
    if (s.url is None) == (s.command is None):
        probs.at(here, 'a poll source needs exactly one of url = "https://…" or command = ["program", "arg"]')
    if s.command is not None and not s.command:
        probs.at((*here, "command"), '`command` needs at least the program, e.g. ["check-thing", "--json"]')
    if s.url is not None and s.url.partition(":")[0] not in ("http", "https", "env", "file", "cred"):
        probs.at((*here, "url"), f"`url` must start with http:// or https://, not {s.url[:40]!r}")
    if s.command is not None and (s.method != "GET" or s.headers):
        probs.at(here, "`method` and `headers` are for a url; a command takes neither")
    check_duration(s.every, (*here, "every"), probs, minimum_s=1.0)
    check_duration(s.timeout, (*here, "timeout"), probs, minimum_s=0.001)
    chosen = [k for k in ("select", "css", "regex") if getattr(s, k) is not None]
    if len(chosen) > 1:
        probs.at((*here, chosen[1]), f"use one of select, css or regex, not {' and '.join(chosen)}")
    if s.select is not None:
        from watchd import expr

        try:
            expr.compile_expr(s.select)
        except expr.ExprError as exc:
            probs.at((*here, "select"), f"CEL select does not compile: {exc.message}")
    if s.regex is not None:
        try:
            re.compile(s.regex)
        except re.error as exc:
            probs.at((*here, "regex"), f"regex does not compile: {exc}")
    if s.css is not None:
        from watchd.sources.extract import CssError, compile_css

        try:
            compile_css(s.css)
        except CssError as exc:
            probs.at((*here, "css"), str(exc))


def _check_file(s: Any, here: Path_, probs: FileProblems) -> None:
    assert isinstance(s, FileSettings)
    check_plain_subject(s.subject, (*here, "subject"), probs)
    if not s.paths:
        probs.at((*here, "paths"), 'a file source needs at least one path, e.g. paths = ["~/Scans/*.pdf"]')
    for i, p in enumerate(s.paths):
        if not p.strip():
            probs.at((*here, "paths", i), "an empty path watches nothing")
    if not s.events:
        probs.at((*here, "events"), 'announce at least one of "created", "modified", "deleted"')
    check_duration(s.debounce, (*here, "debounce"), probs)


_JOURNAL_FIELD = re.compile(r"^[A-Z0-9_]+$")  # journal field names: upper case, digits, underscores


def _check_journal(s: Any, here: Path_, probs: FileProblems) -> None:
    assert isinstance(s, JournalSettings)
    from watchd.sources.journal import TEMPLATE_FIELDS, template_problem

    if s.subject is not None:
        problem = template_problem(s.subject)
        if problem:
            probs.at((*here, "subject"), problem)
        else:
            example = s.subject
            for name in TEMPLATE_FIELDS:
                example = example.replace("{" + name + "}", "x")
            if example.startswith("watchd."):
                probs.at((*here, "subject"), f"subject {s.subject!r}: subjects under watchd. are watchd's own")
            else:
                check_plain_subject(example, (*here, "subject"), probs)
    for i, unit in enumerate(s.units):
        if not unit.strip() or any(c.isspace() for c in unit):
            probs.at((*here, "units", i), f"unit {unit!r} is not a unit name, e.g. backup.service")
    import shutil

    if shutil.which("journalctl") is None:
        probs.warn(
            here, "journalctl is not on PATH here: the journal source can only run where systemd's journalctl is"
        )
    for key in s.match:
        if not _JOURNAL_FIELD.match(key) or key.startswith("__"):
            probs.at(
                (*here, "match", key),
                f"{key!r} is not a journal field: fields are upper case, e.g. SYSLOG_IDENTIFIER or _SYSTEMD_UNIT",
            )


def _check_telegram(s: Any, here: Path_, probs: FileProblems) -> None:
    assert isinstance(s, TelegramSettings)
    check_plain_subject(s.subject, (*here, "subject"), probs)
    if not s.chats and not s.senders:
        # Anyone can find a bot and write to it: without a list, any stranger could wake an agent.
        probs.at(here, 'a telegram source needs `chats` (e.g. chats = ["123456"]) or `senders` (user ids)')
    for key in ("chats", "senders"):
        for i, value in enumerate(getattr(s, key)):
            if not re.fullmatch(r"-?\d+|@[A-Za-z0-9_]{4,32}", value.strip()):
                probs.at((*here, key, i), f"{value!r} is not a Telegram id (e.g. 123456, -1001234567890) or @username")


def _check_slack(s: Any, here: Path_, probs: FileProblems) -> None:
    assert isinstance(s, SlackSettings)
    check_plain_subject(s.subject, (*here, "subject"), probs)
    scheme = s.app_token.partition(":")[0]
    if scheme not in ("env", "file", "cred") and not s.app_token.startswith("xapp-"):
        probs.at(
            (*here, "app_token"),
            "`app_token` must be an app-level token (xapp-…, with connections:write); "
            "a bot token (xoxb-…) cannot open Socket Mode",
        )
    # Socket Mode events name channels and users by id, never by #name or @name.
    for key, pattern, example in (
        ("channels", r"[CGD][A-Z0-9]{2,}", "C0123ABCD"),
        ("senders", r"[UW][A-Z0-9]{2,}", "U024BE7LH"),
    ):
        for i, value in enumerate(getattr(s, key)):
            if not re.fullmatch(pattern, value.strip()):
                probs.at((*here, key, i), f"{value!r} is not a Slack id (e.g. {example}): Slack events name them by id")


# Per type; a type's module adds its own when it has settings to check.
CHECKS: dict[type, Callable[[Any, Path_, FileProblems], None]] = {
    PollSettings: _check_poll,
    FileSettings: _check_file,
    JournalSettings: _check_journal,
    TelegramSettings: _check_telegram,
    SlackSettings: _check_slack,
}
