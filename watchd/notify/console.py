"""The console notifier: a readable block on stdout, so the default config does something visible."""

from __future__ import annotations

import sys
from typing import TextIO

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from watchd.dispatch import Delivered, Outcome
from watchd.model import Handoff


class ConsoleNotifier:
    def __init__(self, stream: TextIO | None = None) -> None:
        # Colour only on a terminal: under systemd this lands in the journal as plain lines.
        # emoji=False: a reason quoting `":fire:"` from a where clause is printed as written.
        self.console = Console(file=stream or sys.stdout, highlight=False, soft_wrap=True, emoji=False)
        self.fancy = self.console.is_terminal  # asked once: rich checks isatty on every call

    async def deliver(self, handoff: Handoff) -> Outcome:
        body = Text()
        body.append(handoff.message or handoff.reason)
        body.append(f"\nwatch {handoff.watch} v{handoff.watch_version} · {handoff.kind}", style="dim")
        if handoff.key is not None:
            body.append(f" · key {handoff.key}", style="dim")
        body.append(f"\nfired {handoff.fired_at} · handoff {handoff.id}", style="dim")
        body.append(f"\nwhy: watchd explain {handoff.watch}", style="dim")
        title = f"watchd: {handoff.watch} fired"
        if self.fancy:
            self.console.print(Panel(body, title=title, expand=False))
        else:
            self.console.file.write(f"[{title}] " + body.plain.replace("\n", " | ") + "\n")
        self.console.file.flush()
        return Delivered("printed to console")
