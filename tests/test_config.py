"""Config and watch loading: every problem as file:line:col, cross-checks, secrets, lookup."""

from __future__ import annotations

from pathlib import Path

import pytest

from watchd import config
from watchd.config import AbsentWatch, DeadlineWatch, MatchWatch
from watchd.errors import ConfigError, WatchdError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, watches: dict[str, str], cfg: str = "") -> Path:
    (tmp_path / "watches").mkdir(exist_ok=True)
    for name, text in watches.items():
        (tmp_path / "watches" / name).write_text(text)
    path = tmp_path / "config.toml"
    path.write_text(cfg)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        config.load(path)
    return [p.replace(str(path.parent) + "/", "") for p in exc.value.problems]


def test_example_config_and_watches_are_valid() -> None:
    loaded = config.load(ROOT / "config.example.toml")
    kinds = {d.watch.id: type(d.watch) for d in loaded.watches}
    assert kinds == {
        "nightly-backup": DeadlineWatch,
        "laptop-alive": AbsentWatch,
        "urgent-mail": MatchWatch,
        "login-storm": MatchWatch,
        "pr-needs-review": DeadlineWatch,
    }
    assert "notify.console" in loaded.targets()


def test_toml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, {"a.toml": '[[watch]]\nid = "x"\nkind = "match"\non = { subject = "a", where = \n'})
    (line,) = problems(path)
    assert line.startswith("watches/a.toml:4:") or line.startswith(str(tmp_path))
    assert "TOML syntax error" in line


def test_schema_errors_map_to_the_line_of_the_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "a.toml": """\
[[watch]]
id = "first"
kind = "match"
on = { subject = "a.b" }

[[watch]]
id = "second"
kind = "absent"
expect = { subject = "hb" }
for = 15
recover = "yes"

[[watch]]
id = "third"
kind = "deadline"
expect = { subject = "x", wehre = "true" }
opens = { cron = "0 1 * * *" }
within = "2h"
"""
        },
    )
    found = problems(path)
    assert any(p.endswith("a.toml:10:1: Expected `str`, got `int`") for p in found), found
    assert any(":16:27: unknown field `wehre`" in p for p in found), found


def test_cross_checks(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "a.toml": """\
[[watch]]
id = "Bad Id"
kind = "match"
on = { subject = "a..b", where = "data.x ==" }
then = ["notify.nope"]

[[watch]]
id = "dup"
kind = "absent"
expect = { subject = "hb", key = "nothing.here" }
for = "15 minutes"

[[watch]]
id = "dup"
kind = "deadline"
opens = { cron = "0 25 * * *", timezone = "Mars/Olympus" }
expect = { subject = "y" }
within = "2h"

[[watch]]
id = "counts"
kind = "match"
on = { subject = "a" }
count = 5
"""
        },
    )
    found = "\n".join(problems(path))
    assert "a.toml:2:1: watch id 'Bad Id' must match" in found
    assert "a.toml:4:8: bad subject pattern 'a..b'" in found
    assert "a.toml:4:" in found and "CEL where does not compile" in found
    assert "a.toml:5:1: unknown target 'notify.nope'" in found
    assert "a.toml:10:" in found and "unknown variable nothing" in found
    assert "a.toml:11:1:" in found and "15 minutes" in found
    assert "unknown time zone 'Mars/Olympus'" in found
    assert "a.toml:14:1: duplicate watch id 'dup' (also in" in found
    assert "`count` and `window` go together" in found


def test_config_errors_and_named_sections(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {},
        """\
timezone = "Europe/Berln"

[notify.phone]
type = "telegram"
token = "env:X"

[notify.team]
type = "slak"

[schedule.backup]
cron = "30 2 * * *"
every = "5m"
job = "backup"

[schedule.nothing]
every = "5 minutes"
""",
    )
    found = "\n".join(problems(path))
    assert "config.toml:1:1: unknown time zone 'Europe/Berln'" in found
    assert "config.toml:3:1: Object missing required field `chat_id`" in found
    assert "config.toml:8:1: Invalid value 'slak' for `type`: use one of console, telegram, slack, webhook" in found
    assert "config.toml:10:1: a schedule needs exactly one of cron, every or at" in found
    assert "config.toml:16:1:" in found and "5 minutes" in found
    assert "config.toml:15:1: a schedule needs something to do" in found


def test_then_targets_come_from_config(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "a.toml": '[[watch]]\nid = "x"\nkind = "match"\non = { subject = "a" }\n'
            'then = ["notify.phone", "agent.claw"]\n'
        },
        '[notify.phone]\ntype = "console"\n[agent.claw]\ntype = "command"\ncommand = ["true"]\n',
    )
    loaded = config.load(path)
    assert loaded.watches[0].watch.then == ["notify.phone", "agent.claw"]


def test_version_digest_changes_with_content(tmp_path: Path) -> None:
    text = '[[watch]]\nid = "x"\nkind = "match"\non = { subject = "a" }\n'
    a = config.load(write(tmp_path, {"a.toml": text})).watches[0].digest
    b = config.load(write(tmp_path, {"a.toml": text + "# a comment\n"})).watches[0].digest
    c = config.load(write(tmp_path, {"a.toml": text.replace('"a"', '"b"')})).watches[0].digest
    assert a == b != c


def test_config_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WATCHD_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert config.find_config(None) is None
    xdg = tmp_path / "xdg" / "watchd" / "config.toml"
    xdg.parent.mkdir(parents=True)
    xdg.write_text("")
    assert config.find_config(None) == xdg
    (tmp_path / "watchd.toml").write_text("")
    assert config.find_config(None) == Path("watchd.toml")
    monkeypatch.setenv("WATCHD_CONFIG", str(xdg))
    assert config.find_config(None) == xdg
    with pytest.raises(WatchdError, match="not found"):
        config.find_config(str(tmp_path / "missing.toml"))


def test_defaults_without_a_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    loaded = config.load(None)
    assert loaded.config.nats.url == "embedded"
    assert loaded.state_dir == tmp_path / "state" / "watchd"
    assert "notify.console" in loaded.targets()


def test_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_TOKEN", "s3cret")
    assert config.resolve_secret("env:MY_TOKEN") == "s3cret"
    (tmp_path / "tok").write_text("from-file\n")
    assert config.resolve_secret(f"file:{tmp_path / 'tok'}") == "from-file"
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert config.resolve_secret("cred:tok") == "from-file"
    monkeypatch.delenv("MY_TOKEN")
    with pytest.raises(WatchdError) as exc:
        config.resolve_secret("env:MY_TOKEN")
    assert "s3cret" not in str(exc.value) and "MY_TOKEN" in str(exc.value)


def test_cron_in_a_dst_gap_is_a_warning_not_an_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "a.toml": """\
[[watch]]
id = "x"
kind = "deadline"
opens = { cron = "30 2 * * *", timezone = "Europe/Berlin" }
expect = { subject = "a" }
within = "1h"
"""
        },
    )
    loaded = config.load(path)
    (warning,) = loaded.warnings
    assert "a.toml:4:11: warning: cron '30 2 * * *' in Europe/Berlin: 02:30 does not exist on" in warning
    assert "runs once at the end of the gap" in warning
