"""The command line. The only package that prints or exits; errors become one line and a hint.

Each command group lives in its own module and imports what it needs inside its commands, so the
CLI starts at once: `import watchd.cli` loads neither NATS, aiohttp, CEL nor the agent SDK.
"""

from __future__ import annotations

import os
import sys

import click

from watchd import __version__
from watchd.cli import agents, backup, canary, events, explain, handoffs, nats, run, schedules, service, worker
from watchd.cli.common import err, fail
from watchd.errors import ConfigError, WatchdError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="watchd")
def cli() -> None:
    """watchd wakes your agents only when a watched condition matches.

    Every command takes --config PATH and has --help with an example; the README explains the
    config, the watch files and the JSON outputs.

    \b
    Examples:
      watchd validate --config config.example.toml
      watchd run --config config.example.toml
      watchd emit backup.done exit_code=0
      watchd service install --user
    """


for command in (
    run.run,
    run.validate,
    run.check,
    run.status,
    events.emit,
    events.exec_,
    handoffs.handoffs,
    handoffs.dlq,
    explain.explain_cmd,
    explain.backtest_cmd,
    worker.worker,
    *agents.COMMANDS,
    *backup.COMMANDS,
    *canary.COMMANDS,
    *nats.COMMANDS,
    *schedules.COMMANDS,
    service.service_group,
):
    cli.add_command(command)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        fail("aborted", code=130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except ConfigError as exc:
        for line in exc.report:  # the problems, with any warnings among them in file order
            err.print(line, markup=False)
        fail(f"{len(exc.problems)} problem(s) found", exc.hint)
    except WatchdError as exc:
        fail(exc.message, exc.hint)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # the last line of defence: no traceback reaches a user
        if os.environ.get("WATCHD_DEBUG"):
            raise
        fail(f"internal error: {type(exc).__name__}: {exc}", "set WATCHD_DEBUG=1 for a traceback, and report it")
