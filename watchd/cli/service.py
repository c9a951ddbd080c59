"""`watchd service install|uninstall`: the systemd unit with this installation's paths."""

from __future__ import annotations

import getpass
import os
import pwd
import shutil
import subprocess
from pathlib import Path

import click
from rich.text import Text

from watchd import config, service
from watchd.cli.common import CONFIG_OPTION, err, out
from watchd.errors import ConfigError, WatchdError

MODE_OPTION = click.option(
    "--user/--system",
    "user_mode",
    default=None,
    help="a user unit, run by your own systemd (the default), or the system unit (the default as root)",
)
ROOT_OPTION = click.option(
    "--root",
    metavar="DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="put the system unit under DIR instead of / (an image being built); systemd is not reloaded",
)
DRY_RUN_OPTION = click.option(
    "--dry-run", "--print", "dry_run", is_flag=True, help="print what would be written and change nothing"
)


@click.group(name="service")
def service_group() -> None:
    """Install watchd as a systemd service: a user unit, or the hardened system unit.

    The unit runs the `watchd` you installed (its absolute path) with the config you give, and has
    Type=notify, a watchdog, SIGHUP reload and sandboxing (README: "Running under systemd").

    \b
    Examples:
      watchd service install --user
      systemctl --user enable --now watchd
      sudo watchd service install --system --config /etc/watchd/config.toml
      watchd service install --dry-run
      watchd service uninstall --user
    """


@service_group.command()
@CONFIG_OPTION
@MODE_OPTION
@ROOT_OPTION
@DRY_RUN_OPTION
def install(config_path: str | None, user_mode: bool | None, root: Path | None, dry_run: bool) -> None:
    """Write the unit for this installation, reload systemd, and say what else is needed.

    ExecStart= is the absolute path of this `watchd` and of the config: --config, else the one
    watchd would find now (user), else $XDG_CONFIG_HOME/watchd/config.toml (user) or
    /etc/watchd/config.toml (system). Running it again rewrites the unit.

    \b
    Examples:
      watchd service install --user
      watchd service install --user --config ~/watchd/config.toml --dry-run
      sudo watchd service install --system
    """
    where = service.target(_is_system(user_mode, root), root)
    cfg = _config_for(where, config_path)
    text = service.render(where.template, service.exec_start(service.watchd_program(), cfg))
    if dry_run:
        click.echo(f"# {where.unit_path}")
        click.echo(text, nl=False)
        return
    path = where.unit_path
    before = path.read_text(encoding="utf-8") if path.is_file() else None
    if before == text:
        _say(f"{path} is up to date")
    else:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{path.name}.tmp")
            partial.write_text(text, encoding="utf-8")
            partial.chmod(0o644)
            partial.replace(path)
        except OSError as exc:
            hint = "the system unit needs root: sudo watchd service install --system" if where.system else None
            raise WatchdError(f"cannot write {path}: {exc.strerror}", hint=hint) from None
        _say(f"{'updated' if before is not None else 'wrote'} {path}")
    _say(f"  ExecStart={service.exec_start(service.watchd_program(), cfg)}")
    _reload(where, root)
    _next_steps(where, cfg)


@service_group.command()
@MODE_OPTION
@ROOT_OPTION
@DRY_RUN_OPTION
def uninstall(user_mode: bool | None, root: Path | None, dry_run: bool) -> None:
    """Stop and disable the service, remove its unit and reload systemd. State and config stay.

    \b
    Example:
      watchd service uninstall --user
    """
    where = service.target(_is_system(user_mode, root), root)
    path = where.unit_path
    if not path.is_file():
        _say(f"no unit at {path}: nothing to remove")
        return
    if dry_run:
        _say(f"would run {' '.join(where.systemctl)} disable --now {service.UNIT_NAME}, remove {path}, reload systemd")
        return
    usable = _systemctl_usable(where, root)
    if usable:
        _systemctl(where, "disable", "--now", service.UNIT_NAME)
    try:
        path.unlink()
    except OSError as exc:
        raise WatchdError(f"cannot remove {path}: {exc.strerror}", hint="the system unit needs root") from None
    _say(f"removed {path}")
    if usable and _systemctl(where, "daemon-reload"):
        _say(f"reloaded systemd ({' '.join(where.systemctl)} daemon-reload)")
    _say("the state directory and the config are kept")


def _is_system(user_mode: bool | None, root: Path | None) -> bool:
    if user_mode is None:
        return root is not None or os.geteuid() == 0
    if user_mode and root is not None:
        raise WatchdError("--root is for the system unit", hint="add --system, or leave out --root")
    return not user_mode


def _config_for(where: service.Target, config_path: str | None) -> Path:
    """The absolute config path the unit will pass to `watchd run`."""
    if config_path:
        return Path(config_path).expanduser().absolute()
    if not where.system:
        found = config.find_config(None)
        if found is not None:
            return found.absolute()
    return where.default_config


def _say(message: str) -> None:
    out.print(Text(message))


def _systemctl_usable(where: service.Target, root: Path | None) -> bool:
    if root is not None:
        _say("not reloading systemd: the unit was written under --root")
        return False
    if shutil.which("systemctl") is None:
        _say(f"systemctl not found: run `{' '.join(where.systemctl)} daemon-reload` where systemd runs")
        return False
    return True


def _systemctl(where: service.Target, *args: str) -> bool:
    command = [*where.systemctl, *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        err.print(Text(f"warning: {' '.join(command)} failed: {exc}"))
        return False
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        err.print(Text(f"warning: {' '.join(command)} failed: {why}"))
        return False
    return True


def _reload(where: service.Target, root: Path | None) -> None:
    if _systemctl_usable(where, root) and _systemctl(where, "daemon-reload"):
        _say(f"reloaded systemd ({' '.join(where.systemctl)} daemon-reload)")


def _next_steps(where: service.Target, cfg: Path) -> None:
    systemctl = " ".join(where.systemctl)
    steps: list[str] = []
    notes: list[str] = []
    if where.system and not _user_exists("watchd"):
        steps.append("useradd --system --home /var/lib/watchd --shell /usr/sbin/nologin watchd")
    if not cfg.is_file():
        steps.append(f"create {cfg} (from config.example.toml), then: watchd validate --config {cfg}")
    else:
        notes += _config_notes(where, cfg)
    steps.append(f"{systemctl} enable --now watchd")
    if not where.system:
        steps.append(f"loginctl enable-linger {getpass.getuser()}   # to keep it running while you are logged out")
    steps.append(f"journalctl {'--user ' if not where.system else ''}-u watchd -f")
    for note in notes:
        _say(f"note: {note}")
    _say("next:")
    for step in steps:
        _say(f"  {step}")


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _config_notes(where: service.Target, cfg: Path) -> list[str]:
    """What in the config will not work under this unit, found before systemd starts it."""
    try:
        loaded = config.load(cfg)
    except ConfigError as exc:
        return [f"{cfg} has {len(exc.problems)} problem(s): see `watchd validate --config {cfg}`"]
    except WatchdError as exc:
        return [f"{cfg}: {exc.message}"]
    notes = []
    if where.system:
        state = loaded.state_dir.absolute()
        if loaded.config.state_dir and not state.is_relative_to("/var/lib/watchd"):
            notes.append(
                f"state_dir is {state}, and the system unit can write only /var/lib/watchd: "
                'set state_dir = "/var/lib/watchd" (or leave it out)'
            )
        jobs = any(s.run for s in loaded.config.schedule.values())
        if jobs or any(isinstance(a, config.CommandAgent) for a in loaded.config.agent.values()):
            notes.append(
                "command agents and jobs run inside the unit's sandbox: one that runs Node.js or Java needs "
                "MemoryDenyWriteExecute=false, and one that writes outside /var/lib/watchd a ReadWritePaths= "
                "(systemctl edit watchd)"
            )
    return notes
