"""The `[source.NAME]` tables of SPEC section 8: one Struct per type, a tagged union on `type`.

Each type takes exactly its own keys (plus the common `subject` and `expect_every`): a poll key on
a webhook is a `validate` error at its line, naming the type the key belongs to (structcheck). Only
msgspec here, so config.py can import it without pulling in any source's machinery.
"""

from __future__ import annotations

from typing import Literal

import msgspec

Verify = Literal["github", "slack", "hmac-sha256", "token", "none"]
FileEvent = Literal["created", "modified", "deleted"]
Priority = Literal["emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"]


class _SettingsBase(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, tag_field="type"):
    subject: str | None = None  # per type: required, or a default the type documents
    expect_every: str | None = None  # silence longer than this is news (watchd.source.<name>.silent)


class WebhookSettings(_SettingsBase, tag="webhook", kw_only=True):
    path: str
    verify: Verify = "none"
    secret: str | None = None
    header: str | None = None  # hmac-sha256: the signature's header (default X-Signature)
    prefix: str | None = None  # hmac-sha256: before the hex digest (default "sha256=")
    id: str | None = None  # template; default per verify scheme, else sha256 of the body
    max_body: str | None = None  # "1MiB"; default: [http] max_body
    # verify = "slack": who may press watchd's Ack / Snooze / Mute buttons (Slack user ids) and in
    # which channels; empty: anyone the press came signed for. Others are dropped and counted.
    senders: list[str] = msgspec.field(default_factory=list)
    channels: list[str] = msgspec.field(default_factory=list)


class PollSettings(_SettingsBase, tag="poll", kw_only=True):
    url: str | None = None
    command: list[str] | None = None  # argv, no shell
    method: Literal["GET", "POST", "HEAD"] = "GET"
    headers: dict[str, str] = msgspec.field(default_factory=dict)  # values may be env:/file:/cred:
    every: str = "10m"
    timeout: str = "30s"
    emit: Literal["change", "always"] = "change"
    select: str | None = None  # CEL over the parsed JSON body
    css: str | None = None  # CSS selector over an HTML body
    regex: str | None = None  # over the text; the first group if it has one


class FileSettings(_SettingsBase, tag="file", kw_only=True):
    paths: list[str]
    events: list[FileEvent] = msgspec.field(default_factory=lambda: ["created", "modified", "deleted"])
    debounce: str = "1s"
    hash: bool = False


class JournalSettings(_SettingsBase, tag="journal", kw_only=True):
    units: list[str] = msgspec.field(default_factory=list)
    priority: Priority | None = None  # this and more severe
    match: dict[str, str] = msgspec.field(default_factory=dict)
    directory: str | None = None  # journal files of another machine or a container (journalctl -D)


class TelegramSettings(_SettingsBase, tag="telegram", kw_only=True):
    token: str
    chats: list[str] = msgspec.field(default_factory=list)
    senders: list[str] = msgspec.field(default_factory=list)
    api_base: str = "https://api.telegram.org"


class SlackSettings(_SettingsBase, tag="slack", kw_only=True):
    app_token: str
    bot_token: str | None = None
    channels: list[str] = msgspec.field(default_factory=list)
    senders: list[str] = msgspec.field(default_factory=list)
    api_base: str = "https://slack.com/api"


SourceSettings = WebhookSettings | PollSettings | FileSettings | JournalSettings | TelegramSettings | SlackSettings

SOURCE_TYPES: tuple[type[_SettingsBase], ...] = (
    WebhookSettings,
    PollSettings,
    FileSettings,
    JournalSettings,
    TelegramSettings,
    SlackSettings,
)

# Settings read through config.resolve_secret (so env:/file:/cred:), by type; never shown.
SECRET_KEYS: dict[type[msgspec.Struct], tuple[str, ...]] = {
    WebhookSettings: ("secret",),
    PollSettings: ("url", "headers"),
    TelegramSettings: ("token",),
    SlackSettings: ("app_token", "bot_token"),
}

# The subject a type uses when the table has none; a type missing here requires `subject`.
DEFAULT_SUBJECTS: dict[str, str] = {
    "journal": "journal.{unit}",
    "telegram": "chat.message",
    "slack": "chat.message",
}


def type_name(settings: SourceSettings) -> str:
    return str(type(settings).__struct_config__.tag)


def subject_of(settings: SourceSettings) -> str | None:
    """The subject (or subject template) the source publishes on."""
    return settings.subject or DEFAULT_SUBJECTS.get(type_name(settings))
