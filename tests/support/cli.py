"""The command line, in this process (`run_cli`) or as a user runs it (`run_process`).

`run_cli` goes through `watchd.cli.main`, the console script's entry: one-line errors and their hints,
exit codes, stdout and stderr apart — what a user sees, without a Python start-up per command. It
swaps the process's streams and argv while it runs, so calls take turns; from inside an event loop
(a daemon in the same loop answers `status`), call it through `asyncio.to_thread`. Commands that
install signal handlers (`run`, `worker`) need the main thread.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from click.testing import CliRunner

from support import secrets

_one_at_a_time = threading.Lock()


class CliResult(NamedTuple):
    """What a command did; unpacks as (returncode, stdout, stderr)."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, env: Mapping[str, str | None] | None = None, input: str | None = None) -> CliResult:
    """`watchd ARGS…` in this process. $WATCHD_CONFIG is unset unless `env` sets it."""
    from watchd.cli import main

    with _one_at_a_time, CliRunner().isolation(input=input, env={"WATCHD_CONFIG": None, **(env or {})}) as streams:
        out, err, _ = streams
        argv, sys.argv = sys.argv, ["watchd", *args]
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        finally:
            sys.argv = argv
            sys.stdout.flush()  # what the command wrote is still in the text wrappers' buffers
            sys.stderr.flush()
    result = CliResult(code, out.getvalue().decode(), err.getvalue().decode())
    check_no_secrets(args, result, env=env)
    return result


# Commands whose purpose is to print a credential: `watchd nats url` gives a URL with one.
_PRINTS_CREDENTIALS = (("nats", "url"),)


def check_no_secrets(
    args: tuple[str, ...],
    result: CliResult,
    *,
    env: Mapping[str, str | None] | None = None,
    cwd: Path | None = None,
) -> None:
    """No secret of the command's config, in any encoding, in what it printed (support/secrets.py)."""
    if "--config" not in args[:-1] or tuple(args[:2]) in _PRINTS_CREDENTIALS:
        return
    path = Path(args[args.index("--config") + 1])
    path = path if path.is_absolute() or cwd is None else cwd / path
    if not path.is_file():
        return
    environ = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    found = secrets.configured_secrets(path, environ)
    leaked = secrets.leaks("stdout", result.stdout, found) + secrets.leaks("stderr", result.stderr, found)
    assert not leaked, f"watchd {' '.join(args[:2])} printed a configured secret:\n" + "\n".join(leaked)


def run_process(
    *args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None, timeout_s: float = 30.0
) -> CliResult:
    """`python -m watchd ARGS…` as a child process, with $WATCHD_CONFIG unset."""
    environ = {k: v for k, v in os.environ.items() if k != "WATCHD_CONFIG"} | dict(env or {})
    done = subprocess.run(
        [sys.executable, "-m", "watchd", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    result = CliResult(done.returncode, done.stdout, done.stderr)
    check_no_secrets(args, result, env=env, cwd=cwd)
    return result
