"""The console notifier: a readable block on stdout, so the default config does something visible."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, TextIO

from watchd.dispatch import Delivered, Outcome
from watchd.model import Handoff

if TYPE_CHECKING:
    from rich.console import Console


class ConsoleNotifier:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        # Colour only on a terminal: under systemd this lands in the journal as plain lines, written
        # without rich, which is loaded only for a stream it could take for a terminal.
        self._console: Console | None = None
        self.fancy = _maybe_terminal(self.stream) and self.console.is_terminal  # asked once: rich asks each call

    @property
    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            # emoji=False: a reason quoting `":fire:"` from a where clause is printed as written.
            self._console = Console(file=self.stream, highlight=False, soft_wrap=True, emoji=False)
        return self._console

    async def deliver(self, handoff: Handoff) -> Outcome:
        about = f"watch {handoff.watch} v{handoff.watch_version} · {handoff.kind}"
        if handoff.key is not None:
            about += f" · key {handoff.key}"
        lines = [
            handoff.message or handoff.reason,
            about,
            f"fired {handoff.fired_at} · handoff {handoff.id}",
            f"why: watchd explain {handoff.watch}",
        ]
        title = f"watchd: {handoff.watch} fired"
        if self.fancy:
            from rich.panel import Panel
            from rich.text import Text

            body = Text(lines[0])
            for line in lines[1:]:
                body.append("\n" + line, style="dim")
            self.console.print(Panel(body, title=title, expand=False))
        else:
            self.stream.write(f"[{title}] " + "\n".join(lines).replace("\n", " | ") + "\n")
        self.stream.flush()
        return Delivered("printed to console")


def _maybe_terminal(stream: TextIO) -> bool:
    """False when rich would not take `stream` for a terminal either (its own test, without it)."""
    tty_compatible = os.environ.get("TTY_COMPATIBLE", "")
    if tty_compatible in ("0", "1"):
        return tty_compatible == "1"
    if os.environ.get("FORCE_COLOR") is not None:
        return os.environ["FORCE_COLOR"] != ""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a stand-in or closed stream
        return False
