"""A remote agent worker: run a command for each handoff to an agent of type nats."""

from __future__ import annotations

import asyncio

import click

from watchd import config, credentials
from watchd.cli.common import CONFIG_OPTION, err, load, refuse_if_down, setup_logging


@click.command(context_settings={"ignore_unknown_options": True})
@CONFIG_OPTION
@click.argument("target")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option(
    "-j", "--concurrency", default=1, show_default=True, type=click.IntRange(1, 256), help="handoffs run at once"
)
@click.option("--timeout", metavar="D", help="longest run of COMMAND (default: the agent's `timeout`, else 5m)")
@click.option(
    "--ack-wait",
    default="60s",
    show_default=True,
    metavar="D",
    help="silence before NATS gives a taken handoff to another worker (renewed while it runs)",
)
@click.option(
    "--max-attempts",
    default=8,
    show_default=True,
    type=click.IntRange(1),
    help="failed runs before the handoff is rejected",
)
@click.option("--reject-exit-code", default=75, show_default=True, help="COMMAND's exit code for \"I won't do this\"")
@click.option(
    "--grace",
    default="10s",
    show_default=True,
    metavar="D",
    help="on SIGTERM, how long running commands may finish (a second signal stops them at once)",
)
@click.option("--durable", metavar="NAME", help="consumer name (default worker-<target>); same name, shared work")
@click.option(
    "--state-dir", metavar="PATH", help="where finished handoff ids are kept (default $XDG_STATE_HOME/watchd-worker)"
)
@click.option(
    "--nats",
    "nats_url",
    metavar="URL",
    help="NATS URL with the worker's credentials, or env:NAME / file:PATH holding it "
    "(default: the config's NATS, as the worker role)",
)
@click.option("-v", "--verbose", is_flag=True, help="debug logging")
def worker(
    config_path: str | None,
    target: str,
    command: tuple[str, ...],
    concurrency: int,
    timeout: str | None,
    ack_wait: str,
    max_attempts: int,
    reject_exit_code: int,
    grace: str,
    durable: str | None,
    state_dir: str | None,
    nats_url: str | None,
    verbose: bool,
) -> None:
    """Run COMMAND for each handoff to TARGET, an agent of type nats, from any machine that reaches NATS.

    Like a `command` agent: the handoff JSON on stdin, WATCHD_HANDOFF_ID (the idempotency key) in the
    environment; exit 0 replies done, the reject exit code replies rejected, anything else is retried.
    Workers with the same durable share the work. SIGTERM stops after the running commands finish.
    On another machine, give it NATS with `--nats env:WATCHD_NATS_URL` and that variable set to what
    `watchd nats url --role worker` prints on the daemon's machine (with its host name).

    \b
    Example (with [agent.claw] type = "nats" in the daemon's config):
      watchd worker agent.claw -- my-agent handle --stdin
      watchd worker agent.claw -j 4 --timeout 30m --config ~/.config/watchd/config.toml -- ./handle.sh
    """
    from pathlib import Path

    from watchd.agents import worker as worker_mod
    from watchd.cron.schedule import parse_duration

    setup_logging(verbose)
    loaded = load(config_path)
    agent = loaded.config.agent.get(target.removeprefix("agent.")) if target.startswith("agent.") else None
    if not isinstance(agent, config.NatsAgent):
        agent = None
        err.print(
            f'warning: no [{target}] with type = "nats" in {loaded.config_path or "the config"}; '
            "handoffs arrive only where the daemon's config has one",
            markup=False,
        )
    opts = worker_mod.WorkerOptions(
        target=target,
        command=list(command),
        timeout=timeout or (agent.timeout if agent else "5m"),
        ack_wait_s=parse_duration(ack_wait),
        concurrency=concurrency,
        max_attempts=max_attempts,
        reject_exit_code=reject_exit_code,
        grace_s=parse_duration(grace),
        durable=durable or "",
        state_dir=Path(state_dir).expanduser() if state_dir else worker_mod.default_state_dir(),
    )
    parse_duration(opts.timeout)
    worker_mod.check_options(opts)  # before connecting: a typo is reported as such, not as "NATS is down"
    url = credentials.resolve_url(nats_url) if nats_url else credentials.client_url(loaded, "worker")
    asyncio.run(refuse_if_down(url))
    asyncio.run(worker_mod.run(url, opts))
