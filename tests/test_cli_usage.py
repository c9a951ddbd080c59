"""How the command line talks to a user (real subprocesses): help texts, argument errors, `validate`
output, confirmations, and `run` refusing a config it cannot serve."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click

from watchd import config
from watchd.cli import COMMANDS, cli
from watchd.jobs.backup import make_backup
from watchd.store import Store, db_path

STATES = "'pending', 'delivering', 'delivered', 'accepted', 'done', 'failed', 'retrying', 'dead', 'dropped'"


def watchd(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout_s: float = 30
) -> subprocess.CompletedProcess[str]:
    """`watchd ARGS` with no terminal on stdin, as from a script or cron."""
    base = {k: v for k, v in os.environ.items() if k != "WATCHD_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "watchd", *args],
        cwd=cwd,
        env={**base, **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def write_config(root: Path, extra: str = "") -> Path:
    (root / "watches").mkdir(exist_ok=True)
    path = root / "config.toml"
    path.write_text(f'watches = ["watches/"]\nstate_dir = "state"\n{extra}')
    return path


# ---- help ----------------------------------------------------------------------------------------------------


def all_commands(group: click.Group, path: tuple[str, ...] = ("watchd",)) -> Iterator[tuple[str, click.Command]]:
    yield " ".join(path), group
    with click.Context(group) as ctx:
        commands = [(name, group.get_command(ctx, name)) for name in group.list_commands(ctx)]
    for name, command in commands:
        assert command is not None, name
        if isinstance(command, click.Group):
            yield from all_commands(command, (*path, name))
        else:
            yield " ".join((*path, name)), command


def test_every_help_has_an_example_and_cites_no_document_users_lack() -> None:
    seen = []
    for name, command in all_commands(cli):
        with click.Context(command, info_name=name) as ctx:
            text = command.get_help(ctx)
        # "Example:" or "Examples:" (optionally with a note), then an indented `watchd …` line
        block = re.search(r"^ *Examples?\b[^\n]*:\n((?: {2,}.*\n?)+)", text, re.MULTILINE)
        assert block, f"{name} --help has no Example block:\n{text}"
        assert re.search(r"\bwatchd ", block.group(1)), f"{name}: no watchd example\n{text}"
        assert "SPEC" not in text, f"{name} --help cites SPEC:\n{text}"
        seen.append(name)
    assert {"watchd", "watchd dlq", "watchd dlq replay", "watchd service", "watchd service install"} <= set(seen)


def test_the_listing_says_what_each_command_says_of_itself() -> None:
    # `watchd --help` lists commands from a table so it need not import them; the table must not drift
    with click.Context(cli) as ctx:
        for name in cli.list_commands(ctx):
            command = cli.get_command(ctx, name)
            assert command is not None and command.help, name
            assert COMMANDS[name][1] == " ".join(command.help.split("\n\n")[0].split()), name


HEAVY = ("cel", "nats", "aiohttp", "anthropic", "msgspec", "croniter", "rich", "watchd.config", "watchd.bus")


def test_help_and_import_load_no_heavy_module() -> None:
    # what `watchd --help` costs at start is what it imports; a test of imports, not of time
    probe = (
        "import sys; from watchd.cli import cli; cli.main(['--help'], standalone_mode=False); "
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_help_as_a_user_types_it(tmp_path: Path) -> None:
    for args in ([], ["dlq"], ["service", "install"]):  # the walk above covers the rest in-process
        r = watchd(*args, "--help", cwd=tmp_path)
        assert r.returncode == 0 and "Example" in r.stdout and r.stderr == "", (args, r.stderr)


# ---- argument errors -----------------------------------------------------------------------------------------


def test_handoffs_with_an_unknown_state_lists_the_states_and_exits_2(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    r = watchd("handoffs", "--state", "bogus", "--config", str(cfg), cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"'bogus' is not one of {STATES}" in r.stderr
    ok = watchd("handoffs", "--state", "dead", "--config", str(cfg), cwd=tmp_path)
    assert ok.returncode == 0 and ok.stdout.strip() == "no handoffs in state dead", ok.stderr


def test_a_hint_already_in_the_message_is_not_repeated(tmp_path: Path) -> None:
    r = watchd("canary", "--timeout", "5 minutes", "--config", str(write_config(tmp_path)), cwd=tmp_path)
    assert r.returncode == 1
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("error: invalid duration '5 minutes'; use a number and a unit")


# ---- validate --------------------------------------------------------------------------------------------------

DST_WATCH = """\
[[watch]]
id = "nightly"
kind = "deadline"
opens = { cron = "30 2 * * *", timezone = "Europe/Berlin" }
expect = { subject = "backup.done" }
within = "1h"
"""


def test_validate_prints_each_warning_once_with_its_position(tmp_path: Path) -> None:
    write_config(tmp_path, '[notify.phone]\ntype = "telegram"\ntoken = "env:WATCHD_TEST_UNSET"\nchat_id = "1"\n')
    (tmp_path / "watches" / "dst.toml").write_text(DST_WATCH)
    r = watchd("validate", "--config", "config.toml", cwd=tmp_path, env={"WATCHD_TEST_UNSET": ""})
    assert r.returncode == 0 and r.stdout.startswith("ok: 1 watches in 1 files"), r.stdout + r.stderr
    (warning,) = r.stderr.strip().splitlines()  # the variable is set (if empty): no secret warning
    assert warning.startswith("watches/dst.toml:4:11: warning: cron '30 2 * * *' in Europe/Berlin: 02:30 does")
    assert warning.count("warning") == 1, warning

    env = {k: v for k, v in os.environ.items() if k != "WATCHD_TEST_UNSET"}
    r = subprocess.run(
        [sys.executable, "-m", "watchd", "validate", "--config", "config.toml"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines() == [
        "config.toml:5:1: warning: env:WATCHD_TEST_UNSET is not set in this shell; the daemon needs it",
        warning,
    ]


LARGEST = "largest first: 90s, 15m, 2h, 1d, 1h30m, 500ms, 1w"


def test_validate_shows_warnings_among_the_problems_in_file_order(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "[http]\nlisten = 8787\n")
    (tmp_path / "watches" / "dst.toml").write_text(DST_WATCH.replace('"1h"', '"1 hour"'))
    r = watchd("validate", "--config", str(cfg), cwd=tmp_path)
    lines = [ln.replace(f"{tmp_path}/", "") for ln in r.stderr.strip().splitlines()]
    assert r.returncode == 1
    assert [ln.split(": ", 2)[:2] for ln in lines] == [
        ["config.toml:4:1", "`listen` must be a string, not the integer 8787"],
        ["watches/dst.toml:4:11", "warning"],
        [
            "watches/dst.toml:6:1",
            "invalid duration '1 hour'; use a number and a unit (w, d, h, m, s, ms), largest first",
        ],
        ["error", "2 problem(s) found"],
        ["hint", "fix the lines above, then run `watchd validate` again"],
    ]


# ---- run -------------------------------------------------------------------------------------------------------


def test_run_refuses_an_unset_env_secret_naming_the_setting(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path,
        '[notify.hook]\ntype = "webhook"\nurl = "https://hooks.example/x"\nsecret = "env:WATCHD_TEST_NO_SECRET"\n',
    )
    env = {k: v for k, v in os.environ.items() if k not in ("WATCHD_TEST_NO_SECRET", "WATCHD_CONFIG")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "watchd", "run", "--config", str(cfg)],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a daemon that did start is killed with its nats-server
    )
    try:
        _, stderr = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError("watchd run started instead of refusing") from None
    assert proc.returncode == 1
    assert stderr.strip().splitlines() == [
        "error: [notify.hook] secret needs env:WATCHD_TEST_NO_SECRET, which is not set",
        "hint: set it in watchd's environment (systemd: Environment= or EnvironmentFile=), or use file: or cred:",
    ]
    assert not (tmp_path / "state").exists()  # refused before anything started


# ---- restore ---------------------------------------------------------------------------------------------------


def test_restore_without_yes_and_no_terminal_says_how_to_confirm_first(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    for archive in ("missing.tar.gz", str(tmp_path)):  # neither is a backup: confirming comes first
        r = watchd("restore", archive, "--config", str(cfg), cwd=tmp_path)
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert r.stderr.strip().splitlines() == [
            "error: restore replaces watchd's database and needs confirmation",
            "hint: add --yes to confirm (no terminal to ask on)",
        ]
    r = watchd("restore", "missing.tar.gz", "--yes", "--config", str(cfg), cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.startswith("error: backup file missing.tar.gz not found")


def test_restore_on_a_terminal_asks_and_changes_nothing_on_no(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    loaded = config.load(cfg)
    Store(db_path(loaded.state_dir)).close()
    archive = make_backup(loaded, time.time()).data["path"]
    before = db_path(loaded.state_dir).read_bytes()

    pid, fd = pty.fork()
    if pid == 0:  # the child: a terminal on stdin, stdout and stderr
        env = {k: v for k, v in os.environ.items() if k != "WATCHD_CONFIG"}
        os.chdir(tmp_path)
        os.execve(sys.executable, [sys.executable, "-m", "watchd", "restore", archive, "--config", str(cfg)], env)
    seen = b""
    deadline = time.monotonic() + 30
    while b"[y/N]" not in seen and time.monotonic() < deadline:
        if select.select([fd], [], [], 1)[0]:
            try:
                seen += os.read(fd, 4096)
            except OSError:
                break
    assert b"Replace the state in" in seen and b"[y/N]" in seen, seen
    os.write(fd, b"n\n")
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 130 and b"aborted" in seen, seen
    assert db_path(loaded.state_dir).read_bytes() == before
