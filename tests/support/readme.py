"""The README's recipes as tests read them: the TOML blocks under a `#### Recipe:` heading."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def recipe(title: str) -> tuple[str, str]:
    """The (config, watch file) TOML blocks that follow the recipe's heading in the README."""
    text = README.read_text()
    start = text.index(f"#### Recipe: {title}")
    blocks = re.findall(r"```toml\n(.*?)```", text[start:], flags=re.S)
    return blocks[0], blocks[1]


def console_targets(watches: str) -> str:
    """The watches with every target replaced by the console notifier."""
    return re.sub(r"then = \[[^\]]*\]", 'then = ["notify.console"]', watches)
