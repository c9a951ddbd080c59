"""Sources (SPEC section 8): publishers that turn something in the world into events.

The registry maps each `type` to the class that runs it, as "module:Class", so that loading the
config imports none of them (aiohttp, watchfiles, a CSS parser load only when a source runs).
"""

from __future__ import annotations

import importlib

from watchd.errors import WatchdError
from watchd.sources.base import Source
from watchd.sources.settings import SourceSettings, type_name

PENDING = "watchd.sources.pending:"  # a type whose runner is not in this build: validate refuses it

REGISTRY: dict[str, str] = {
    "webhook": "watchd.sources.webhook:WebhookSource",
    "poll": "watchd.sources.poll:PollSource",
    "file": "watchd.sources.files:FileSource",
    "journal": "watchd.sources.journal:JournalSource",
    "telegram": "watchd.sources.telegram:TelegramSource",
    "slack": "watchd.sources.slack:SlackSource",
}


def source_class(type_: str) -> type[Source]:
    where = REGISTRY.get(type_)
    if where is None:
        raise WatchdError(f"unknown source type {type_!r}", hint=f"use one of {', '.join(REGISTRY)}")
    module, _, name = where.partition(":")
    cls: type[Source] = getattr(importlib.import_module(module), name)
    return cls


def make_source(name: str, settings: SourceSettings) -> Source:
    return source_class(type_name(settings))(name, settings)
