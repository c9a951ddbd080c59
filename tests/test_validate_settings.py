"""`watchd validate` refuses the daemon settings that would fail or hurt at run time, each at its
file:line with what to write instead; and one bad setting does not hide another's problem."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.cli import run_cli

from watchd.errors import WatchdError
from watchd.opsettings import sync_interval


def validate(tmp_path: Path, cfg: str, watches: str | None = None) -> tuple[int, list[str]]:
    (tmp_path / "watches").mkdir(exist_ok=True)
    if watches is not None:
        (tmp_path / "watches" / "w.toml").write_text(watches)
    path = tmp_path / "config.toml"
    path.write_text(cfg)
    r = run_cli("validate", "--config", str(path))
    assert "Traceback" not in r.stderr
    return r.returncode, [line.replace(str(tmp_path) + "/", "") for line in r.stderr.splitlines()]


@pytest.mark.parametrize(
    ("cfg", "line"),
    [
        (
            '[http]\nlisten = "127.0.0.1:99999"\n',
            "config.toml:2:1: bad [http] listen '127.0.0.1:99999': expected host:port with a port from 0 to 65535"
            ' (e.g. "127.0.0.1:8787")',
        ),
        (
            '[nats]\nlisten = "localhost"\n',
            "config.toml:2:1: bad [nats] listen 'localhost': expected host:port",
        ),
        (
            '[nats]\nsync = "sometimes"\n',
            'config.toml:2:1: sync \'sometimes\' is neither "always" nor a duration: use "always"',
        ),
        ('[nats]\nsync = "1d"\n', "config.toml:2:1: sync '1d' is outside 10ms to 1h"),
        ("[http]\nmax_body = -1\n", "config.toml:2:1: `max_body` must be at least 1 and at most 16,777,216, not"),
        ("[http]\nmax_connections = 0\n", "config.toml:2:1: `max_connections` must be at least 1"),
        ("[engine]\nmax_event_bytes = -5\n", "config.toml:2:1: `max_event_bytes` must be at least 1,024"),
        ("[engine]\nmax_event_bytes = 4000000\n", "config.toml:2:1: `max_event_bytes` must be at least 1,024 and"),
        ("[engine]\ndecisions_keep_days = -1\n", "config.toml:2:1: `decisions_keep_days` must be more than 0"),
        ("[engine]\ndecisions_keep_days = nan\n", "config.toml:2:1: `decisions_keep_days` must be a finite number"),
        ("[engine]\ndecisions_keep_rows = -10\n", "config.toml:2:1: `decisions_keep_rows` must be at least 1"),
        ("[backup]\nkeep = -1\n", "config.toml:2:1: `keep` must be at least 1 and at most 1,000, not the integer -1"),
        ("[budget]\ndaily_tokens = 0\n", "config.toml:2:1: `daily_tokens` must be at least 1"),
        (
            '[schedule.fast]\nevery = "1ms"\nrun = ["true"]\n',
            "config.toml:2:1: `every` must be at least 1s, not '1ms'",
        ),
        (
            '[agent.a]\ntype = "command"\ncommand = ["x"]\nreject_exit_code = 300\n',
            "config.toml:4:1: `reject_exit_code` must be at least 1 and at most 255",
        ),
    ],
)
def test_settings_that_fail_at_run_time_fail_validate(tmp_path: Path, cfg: str, line: str) -> None:
    code, lines = validate(tmp_path, cfg)
    assert code == 1
    assert any(x.startswith(line) for x in lines), lines


def test_the_limits_themselves_are_accepted(tmp_path: Path) -> None:
    cfg = (
        '[nats]\nsync = "1h"\nlisten = "127.0.0.1:65535"\n[http]\nmax_body = 1\n'
        "[engine]\nmax_event_bytes = 1024\ndecisions_keep_rows = 1\n[backup]\nkeep = 1\n"
        '[schedule.s]\nevery = "1s"\nrun = ["true"]\n'
    )
    watch = '[[watch]]\nid = "c"\nkind = "match"\non = { subject = "a" }\ncount = 10000\nwindow = "1m"\n'
    code, lines = validate(tmp_path, cfg, watch)
    assert code == 0, lines


def test_a_bad_top_level_timezone_does_not_hide_the_cron_errors_that_inherit_it(tmp_path: Path) -> None:
    cfg = 'timezone = "Mars/Olympus"\n[schedule.s]\ncron = "0 25 * * *"\nrun = ["true"]\n'
    watch = (
        '[[watch]]\nid = "d"\nkind = "deadline"\nopens = { cron = "61 1 * * *" }\n'
        'expect = { subject = "x" }\nwithin = "1h"\n'
    )
    code, lines = validate(tmp_path, cfg, watch)
    assert code == 1
    problems = [x for x in lines if ": " in x and not x.startswith(("error:", "hint:"))]
    assert problems[0].startswith("config.toml:1:1: unknown time zone 'Mars/Olympus'")
    assert problems[1].startswith("config.toml:3:1:") and "25" in problems[1], problems
    assert problems[2].startswith("watches/w.toml:4:") and "61" in problems[2], problems
    assert not any("Mars" in p for p in problems[1:]), problems  # reported once, where it is written


@pytest.mark.parametrize(
    ("given", "written"), [("always", "always"), ("2m", "120s"), ("1h", "3600s"), ("500ms", "0.5s")]
)
def test_sync_is_written_as_nats_server_reads_it(given: str, written: str) -> None:
    assert sync_interval(given) == written


def test_a_sync_that_is_neither_always_nor_a_duration_cannot_reach_nats_server() -> None:
    with pytest.raises(WatchdError, match="neither"):
        sync_interval("sometimes")


def test_a_file_secret_that_cannot_be_read_is_a_warning_at_its_line(tmp_path: Path) -> None:
    readable = tmp_path / "token"
    readable.write_text("t0ken-value\n")
    cfg = (
        f'[http]\ntoken = "file:{readable}"\n'
        f'[notify.phone]\ntype = "telegram"\ntoken = "file:{tmp_path}/missing"\nchat_id = "42"\n'
    )
    code, lines = validate(tmp_path, cfg)
    assert code == 0, lines
    missing = "file:missing cannot be read here (No such file or directory)"  # validate() cuts tmp_path
    assert lines == [f"config.toml:5:1: warning: {missing}; the daemon needs it"]


def test_a_relative_file_secret_is_read_beside_the_config_from_any_folder(tmp_path: Path) -> None:
    from watchd.config import load, resolve_secret

    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "tg").write_text("t0ken-beside-config\n")
    cfg = '[notify.phone]\ntype = "telegram"\ntoken = "file:secrets/tg"\nchat_id = "42"\n'
    code, lines = validate(tmp_path, cfg)  # run from the test's folder, not the config's
    assert (code, lines) == (0, []), lines
    token = load(tmp_path / "config.toml").config.notify["phone"].token  # type: ignore[union-attr]
    assert resolve_secret(token) == "t0ken-beside-config"
