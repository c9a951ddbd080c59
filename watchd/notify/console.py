"""The console notifier: a readable block on stdout, so the default config does something visible."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

from watchd.dispatch import Delivered, Outcome
from watchd.model import Handoff

if TYPE_CHECKING:
    from rich.console import Console


class ConsoleNotifier:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self._console: Console | None = None  # made by the first delivery: rich is loaded only then
        self.fancy = False

    @property
    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            # Colour only on a terminal: under systemd this lands in the journal as plain lines.
            # emoji=False: a reason quoting `":fire:"` from a where clause is printed as written.
            self._console = Console(file=self.stream, highlight=False, soft_wrap=True, emoji=False)
            self.fancy = self._console.is_terminal  # asked once: rich checks isatty on every call
        return self._console

    async def deliver(self, handoff: Handoff) -> Outcome:
        from rich.panel import Panel
        from rich.text import Text

        console = self.console
        body = Text()
        body.append(handoff.message or handoff.reason)
        body.append(f"\nwatch {handoff.watch} v{handoff.watch_version} · {handoff.kind}", style="dim")
        if handoff.key is not None:
            body.append(f" · key {handoff.key}", style="dim")
        body.append(f"\nfired {handoff.fired_at} · handoff {handoff.id}", style="dim")
        body.append(f"\nwhy: watchd explain {handoff.watch}", style="dim")
        title = f"watchd: {handoff.watch} fired"
        if self.fancy:
            console.print(Panel(body, title=title, expand=False))
        else:
            console.file.write(f"[{title}] " + body.plain.replace("\n", " | ") + "\n")
        console.file.flush()
        return Delivered("printed to console")
