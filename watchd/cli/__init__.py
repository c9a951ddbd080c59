"""The command line. The only package that prints or exits; errors become one line and a hint.

Each command group lives in its own module and imports what it needs inside its commands, so the
CLI starts at once: `import watchd.cli` loads neither NATS, aiohttp, CEL nor the agent SDK.
"""

from __future__ import annotations

import os
import sys
from importlib import import_module

import click

from watchd import __version__

# name -> (module:attribute, one-line help). Commands load only when one is run, so `watchd --help`
# and a plain command start without importing every command module (CEL, NATS, aiohttp, rich tables).
# tests/test_cli_usage.py checks that each line matches its command's own help.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("run:run", "Run the daemon in the foreground (systemd Type=notify; SIGHUP reloads; SIGTERM stops)."),
    "validate": (
        "run:validate",
        "Check the config and every watch file at once; each problem as file:line:col; exit 1 on any.",
    ),
    "check": ("run:check", "Exit 0 if the daemon is alive and healthy, else 1 (for an outside monitor)."),
    "status": ("run:status", "Daemon, NATS, each watch's state and next due time, pending handoffs, dead letters."),
    "emit": ("events:emit", "Publish one event."),
    "exec": (
        "events:exec_",
        "Run COMMAND; emit SUBJECT.started, then SUBJECT.done or SUBJECT.failed; exit with its code.",
    ),
    "handoffs": (
        "handoffs:handoffs",
        "List handoffs, newest first: which watch fired, for which key, to which target, and how far delivery got.",
    ),
    "dlq": ("handoffs:dlq", "Dead letters: list them, send one again (same id), or drop one for good."),
    "explain": (
        "explain:explain_cmd",
        "Why WATCH fired or did not: a timeline and a one-line verdict; or what one --event or --schedule did.",
    ),
    "test": (
        "explain:backtest_cmd",
        "Backtest the watches in FILE against history: every would-be fire, with reasons.",
    ),
    "worker": (
        "worker:worker",
        "Run COMMAND for each handoff to TARGET, an agent of type nats, from any machine that reaches NATS.",
    ),
    "runs": (
        "agents:runs",
        "Agent runs, newest first: steps, tokens (input/output/cache), estimated cost, outcome, limit hit.",
    ),
    "state": (
        "state:state",
        "Agents' saved state across runs: list the documents, show a version, or diff two versions.",
    ),
    "backup": (
        "backup:backup",
        "Back up the state, the watch files and the config (secrets redacted) now, and prove it restores.",
    ),
    "restore": (
        "backup:restore",
        "Put a backup back: prove FILE, keep the current database aside, and move the backup's in place.",
    ),
    "canary": (
        "canary:canary",
        "Send a synthetic event through the daemon and probe every notifier and agent; exit 1 on failure.",
    ),
    "ack": ("answers:ack", "Acknowledge an incident: its repeats stop; a new incident notifies again."),
    "snooze": ("answers:snooze", "Hold WATCH for DURATION; when it ends, what still holds fires then."),
    "mute": (
        "answers:mute",
        "Silence WATCH for DURATION: its fires are recorded as muted, and nothing fires when it ends.",
    ),
    "unmute": ("answers:unmute", "End a snooze or mute of WATCH early (a snooze's held incidents are judged at once)."),
    "source": ("sources:source_group", "Run one source on its own, or try it without publishing."),
    "nats": ("nats:nats", "The embedded NATS server: credentials for clients outside watchd."),
    "history": ("history:history_cmd", "Versions of a watch or schedule: content, file, time, git commit and author."),
    "release": (
        "release:release",
        "Each agent's current, last-good and held release; promote or roll back one by hand.",
    ),
    "run-now": ("runnow:run_now", "Run SCHEDULE's job now, through the same path as a tick, as a run of its own."),
    "schedules": (
        "schedules:schedules_cmd",
        "Upcoming ticks of every schedule in local and UTC time, with DST notes; and each one's last run.",
    ),
    "service": (
        "service:service_group",
        "Install watchd as a systemd service: a user unit, or the hardened system unit.",
    ),
}


class LazyGroup(click.Group):
    """A group whose commands are imported on first use; the listing comes from COMMANDS."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module, _, attribute = entry[0].partition(":")
        command = getattr(import_module(f"watchd.cli.{module}"), attribute)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        from watchd.cli.common import fail

        fail("aborted", code=130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        report(exc)


def report(exc: Exception) -> None:
    """One line and a hint for any error; imported late so a run without errors never loads rich."""
    from watchd.cli.common import err, fail
    from watchd.errors import ConfigError, WatchdError

    if isinstance(exc, ConfigError):
        for line in exc.report:  # the problems, with any warnings among them in file order
            err.print(line, markup=False)
        fail(f"{len(exc.problems)} problem(s) found", exc.hint)
    if isinstance(exc, WatchdError):
        fail(exc.message, exc.hint)
    # the last line of defence: no traceback reaches a user
    if os.environ.get("WATCHD_DEBUG"):
        raise exc
    fail(f"internal error: {type(exc).__name__}: {exc}", "set WATCHD_DEBUG=1 for a traceback, and report it")
