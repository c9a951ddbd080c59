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
    assert problems(path) == [  # both mistakes of the second watch, not only the first
        "watches/a.toml:10:1: `for` must be a string, not the integer 15",
        "watches/a.toml:11:1: `recover` must be true or false, not the string 'yes'",
        "watches/a.toml:16:27: unknown field `wehre`: did you mean `where`?",
    ]


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
    assert "config.toml:3:1: missing required field `chat_id`" in found
    assert (
        "config.toml:8:1: `type` must be one of console, telegram, slack, webhook, not the string 'slak': "
        "did you mean 'slack'?" in found
    )
    assert "config.toml:10:1: a schedule needs exactly one of cron, every, at or after" in found
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


def test_every_problem_of_every_file_in_one_run_in_file_order(tmp_path: Path) -> None:
    """A type error in one table hides neither the other tables nor the watch files it names."""
    path = write(
        tmp_path,
        {},
        """\
watches = ["mine/"]
timezone = "Europe/Berln"

[nats]
urll = "nats://127.0.0.1:4222"

[http]
max_body = "big"

[engine]
max_event_bytes = 4096
bogus = 1

[notify.phone]
type = "telegram"
token = "t"

[schedule.nightly]
cron = "0 25 * * *"
job = "backup"
""",
    )
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "b.toml").write_text(
        '[[watch]]\nid = "b"\nkind = "match"\non = { subject = "a" }\nthen = ["notify.phone"]\nmode = "liv"\n'
    )
    (tmp_path / "mine" / "a.toml").write_text(
        '[[watch]]\nid = "a"\nkind = "absent"\nexpect = { subject = "hb", where = "data.x ==" }\nfor = 15\n'
    )
    assert problems(path) == [
        "config.toml:2:1: unknown time zone 'Europe/Berln': use an IANA name like Europe/Berlin",
        "config.toml:5:1: unknown field `urll`: did you mean `url`?",
        "config.toml:8:1: `max_body` must be an integer, not the string 'big'",
        "config.toml:12:1: unknown field `bogus`: valid ones are max_event_bytes, decisions_keep_days, "
        "decisions_keep_rows",
        "config.toml:14:1: missing required field `chat_id`",
        "config.toml:19:1: cron '0 25 * * *': hour 25 is out of range 0-23",
        "mine/a.toml:4:28: CEL where does not compile: " + problems_cel("data.x =="),
        "mine/a.toml:5:1: `for` must be a string, not the integer 15",
        "mine/b.toml:6:1: `mode` must be one of live, shadow, not the string 'liv': did you mean 'live'?",
    ]


def problems_cel(source: str) -> str:
    from watchd import expr

    with pytest.raises(expr.ExprError) as exc:
        expr.compile_expr(source)
    return exc.value.message


def test_unknown_keys_suggest_the_closest_valid_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {"a.toml": '[[watch]]\nid = "a"\nkind = "match"\non = { subject = "a" }\nthne = ["notify.console"]\n'},
        'timezon = "UTC"\n[schedule.x]\ncrn = "0 3 * * *"\njob = "backup"\n[notify.c]\ntype = "consol"\n',
    )
    (tmp_path / "watches" / "b.toml").write_text('[[wacth]]\nid = "b"\n')
    assert problems(path) == [
        "config.toml:1:1: unknown field `timezon`: did you mean `timezone`?",
        "config.toml:2:1: a schedule needs exactly one of cron, every, at or after",
        "config.toml:3:1: unknown field `crn`: did you mean `cron`?",
        "config.toml:6:1: `type` must be one of console, telegram, slack, webhook, not the string 'consol': "
        "did you mean 'console'?",
        "watches/a.toml:5:1: unknown field `thne`: did you mean `then`?",
        "watches/b.toml:1:1: unknown top-level key `wacth`: did you mean `watch`? "
        "(a watch file holds [[watch]] tables only)",
    ]


def test_a_missing_watch_path_is_reported_at_its_config_line(tmp_path: Path) -> None:
    path = write(tmp_path, {}, 'state_dir = "s"\nwatches = ["watches/", "nowhere/"]\n')
    assert problems(path) == [
        "config.toml:2:1: watch path 'nowhere/' not found (relative paths start at the config's folder)"
    ]


def test_warnings_come_with_the_problems_in_file_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "a.toml": '[[watch]]\nid = "x"\nkind = "deadline"\nexpect = { subject = "a" }\n'
            'opens = { cron = "30 2 * * *", timezone = "Europe/Berlin" }\nwithin = "1 hour"\n'
        },
    )
    with pytest.raises(ConfigError) as exc:
        config.load(path)
    report = [line.replace(str(tmp_path) + "/", "") for line in exc.value.report]
    assert [line.split(" ", 2)[:2] for line in report] == [
        ["watches/a.toml:5:11:", "warning:"],
        ["watches/a.toml:6:1:", "invalid"],
    ]
    assert exc.value.problems == [exc.value.report[1]]


def test_an_unset_env_secret_is_a_warning_at_validate_and_an_error_at_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WATCHD_TEST_UNSET_TOKEN", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.setenv("WATCHD_TEST_SET_TOKEN", "s3cret-value-never-shown")
    path = write(
        tmp_path,
        {},
        """\
[http]
token = "env:WATCHD_TEST_SET_TOKEN"

[notify.phone]
type = "telegram"
token = "env:WATCHD_TEST_UNSET_TOKEN"
chat_id = "42"

[agent.triage]
type = "anthropic"
model = "claude-haiku-4-5"
""",
    )
    loaded = config.load(path)
    assert [w.replace(str(tmp_path) + "/", "") for w in loaded.warnings] == [
        "config.toml:6:1: warning: env:WATCHD_TEST_UNSET_TOKEN is not set in this shell; the daemon needs it",
        "config.toml:9:1: warning: `api_key` defaults to env:ANTHROPIC_API_KEY, which is not set in this shell; "
        "the daemon needs it",
    ]
    with pytest.raises(WatchdError) as exc:
        config.require_env_secrets(loaded.config)
    assert exc.value.message == (
        "[notify.phone] token needs env:WATCHD_TEST_UNSET_TOKEN, which is not set; "
        "[agent.triage] api_key needs env:ANTHROPIC_API_KEY, which is not set"
    )
    assert "s3cret-value" not in exc.value.message + str(exc.value.hint)
    monkeypatch.setenv("WATCHD_TEST_UNSET_TOKEN", "x")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "y")
    assert config.load(path).warnings == []
    config.require_env_secrets(loaded.config)


def test_an_external_nats_url_may_be_an_env_secret_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHD_TEST_NATS_URL", raising=False)
    path = write(tmp_path, {}, '[nats]\nurl = ["nats://a.example:4222", "env:WATCHD_TEST_NATS_URL"]\n')
    loaded = config.load(path)
    assert [w.replace(str(tmp_path) + "/", "") for w in loaded.warnings] == [
        "config.toml:2:1: warning: env:WATCHD_TEST_NATS_URL is not set in this shell; the daemon needs it"
    ]
    with pytest.raises(WatchdError, match=r"^\[nats\] url\[1\] needs env:WATCHD_TEST_NATS_URL, which is not set$"):
        config.require_env_secrets(loaded.config)


def test_repeat_is_a_bounded_duration(tmp_path: Path) -> None:
    watch = '[[watch]]\nid = "{id}"\nkind = "match"\non = {{ subject = "a" }}\nrepeat = "{repeat}"\n'
    path = write(
        tmp_path,
        {
            "a.toml": watch.format(id="often", repeat="10s")
            + watch.format(id="never", repeat="90d")
            + watch.format(id="garbled", repeat="hourly")
            + watch.format(id="fine", repeat="1h"),
        },
    )
    found = problems(path)
    assert len(found) == 3
    assert found[0].startswith("watches/a.toml:5:") and "repeat = '10s' is out of range: use 1m to 30d" in found[0]
    assert found[1].startswith("watches/a.toml:10:") and "'90d' is out of range" in found[1]
    assert found[2].startswith("watches/a.toml:15:")


def test_cluster_settings_are_checked_where_they_are_written(tmp_path: Path) -> None:
    path = write(tmp_path, {}, '[cluster]\nname = "my team"\ntakeover = "0.5s"\n')
    found = problems(path)
    assert found[0].startswith("config.toml:2:") and "cluster name 'my team' must match" in found[0], found
    assert found[1].startswith("config.toml:3:") and "`takeover` must be at least 1s" in found[1], found
    path.write_text('[cluster]\ntakeover = "soon"\n')
    (line,) = problems(path)
    assert line.startswith("config.toml:2:") and "invalid duration 'soon'" in line
    path.write_text('[cluster]\nname = "team-a"\ntakeover = "30s"\n')
    assert config.load(path).config.cluster.name == "team-a"
