"""`watchd nats url --role ROLE`: a URL with credentials for the embedded NATS, for other tools."""

from __future__ import annotations

import click

from watchd import credentials
from watchd.cli.common import CONFIG_OPTION, load
from watchd.errors import WatchdError


@click.group()
@CONFIG_OPTION
@click.pass_context
def nats(ctx: click.Context, config_path: str | None) -> None:
    """The embedded NATS server: credentials for clients outside watchd.

    \b
    Example:
      watchd nats url --role publish
    """
    ctx.obj = {"config_path": config_path}


@nats.command()
@CONFIG_OPTION
@click.option(
    "--role",
    required=True,
    type=click.Choice(credentials.ROLES),
    help="publish: events only; read: read the streams; worker: take handoffs and reply; admin: everything",
)
@click.pass_context
def url(ctx: click.Context, config_path: str | None, role: credentials.Role) -> None:
    """Print a URL with the credentials of ROLE, for any NATS client (nats CLI, nats-py, a source).

    The embedded server admits no anonymous client. The credentials are made on the first start of
    `watchd run` (or here, if it has not run yet), kept in the state dir (mode 0600) and stable
    across restarts. The URL is a secret: pass it in an environment variable, not on a command line
    that other users can see. From another machine, put this machine's name in place of the host.

    \b
    Example:
      export NATS_URL="$(watchd nats url --role publish)"   # read by the nats CLI and most clients
      NATS_URL="$(watchd nats url --role read)" nats stream info EVENTS
    """
    loaded = load(config_path or (ctx.obj or {}).get("config_path"))
    if loaded.config.nats.url != "embedded":
        raise WatchdError(
            "[nats] url names an external NATS server: its credentials come from whoever runs it",
            hint='`watchd nats url` serves the embedded server ([nats] url = "embedded")',
        )
    base = loaded.nats_url()
    assert isinstance(base, str)
    click.echo(credentials.load_or_create(loaded.state_dir).url(base, role))
