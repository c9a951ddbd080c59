"""What every command needs before it does anything: the --config option and the loaded config.
Kept free of rich, NATS and aiohttp so a light command (`emit`) starts at once."""

from __future__ import annotations

import click

from watchd import config
from watchd.config import Loaded

CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    metavar="PATH",
    envvar=None,
    help="config file (default: $WATCHD_CONFIG, ./watchd.toml, $XDG_CONFIG_HOME/watchd/config.toml)",
)


def load(config_path: str | None) -> Loaded:
    return config.load(config.find_config(config_path))


def load_config_only(config_path: str | None) -> Loaded:
    """The config without the watch files: for commands that do not judge events, so a watch file
    with a mistake does not stop them."""
    return config.load(config.find_config(config_path), watches=False)
