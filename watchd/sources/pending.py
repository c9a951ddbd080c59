"""Source types whose runner is not in this build yet: they refuse to run with a clear error."""

from __future__ import annotations

from typing import ClassVar

from watchd.errors import WatchdError
from watchd.sources.base import Source, SourceContext


class _Pending(Source):
    async def run(self, ctx: SourceContext) -> None:
        raise WatchdError(
            f"source {self.name}: type {self.type_name!r} cannot run in this version of watchd",
            hint="remove the source or upgrade watchd",
        )


class JournalPending(_Pending):
    type_name: ClassVar[str] = "journal"


class TelegramPending(_Pending):
    type_name: ClassVar[str] = "telegram"


class SlackPending(_Pending):
    type_name: ClassVar[str] = "slack"
