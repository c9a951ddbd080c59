"""`[source.NAME]` tables: each type takes exactly its own keys, every problem at its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from watchd import config
from watchd.errors import ConfigError
from watchd.sources import REGISTRY
from watchd.sources.settings import FileSettings, PollSettings, TelegramSettings, subject_of


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        config.load(path)
    return [p.replace(str(path), "config.toml") for p in exc.value.problems]


def test_each_type_loads_as_its_own_struct(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[source.site]\ntype = "poll"\nurl = "https://example.org/r.json"\nevery = "10m"\n'
        'select = "data.version"\nsubject = "site.release"\nexpect_every = "1h"\n'
        '[source.inbox]\ntype = "file"\npaths = ["~/Scans/*.pdf"]\nsubject = "files.scans"\nhash = true\n'
    )
    loaded = config.load(path)
    site, inbox = (loaded.config.source[n] for n in ("site", "inbox"))
    assert isinstance(site, PollSettings) and site.select == "data.version" and site.emit == "change"
    assert isinstance(inbox, FileSettings) and inbox.hash and inbox.events == ["created", "modified", "deleted"]
    assert subject_of(TelegramSettings(token="t")) == "chat.message"  # a chat source has a default subject


def test_a_key_of_another_type_is_named_as_such(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        '[source.gh]\ntype = "webhook"\npath = "/hooks/gh"\nsubject = "gh.x"\nevery = "5m"\n'
        '[source.site]\ntype = "poll"\nurl = "https://x.example"\nsubject = "s.x"\nevry = "5m"\n',
    )
    assert len(found) == 2
    assert found[0].startswith(
        'config.toml:5:1: `every` is not a key of type = "webhook": it belongs to type poll; '
        'type = "webhook" takes subject, expect_every, path, verify, secret, '
    )
    assert found[1] == "config.toml:10:1: unknown field `evry`: did you mean `every`?"


def test_an_unknown_type_lists_the_valid_ones(tmp_path: Path) -> None:
    (line,) = problems(tmp_path, '[source.x]\ntype = "rss"\nsubject = "a.b"\n')
    assert line == (
        "config.toml:2:1: `type` must be one of webhook, poll, file, journal, telegram, slack, not the string 'rss'"
    )


def test_poll_and_file_settings_are_checked(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        '[source.a]\ntype = "poll"\nsubject = "a.b"\n'  # neither url nor command
        '[source.b]\ntype = "poll"\nurl = "https://x"\nsubject = "b.c"\ncss = "span[[["\nregex = "("\nevery = "0s"\n'
        '[source.c]\ntype = "poll"\ncommand = ["x"]\nsubject = "watchd.mine"\nselect = "data.("\n'
        '[source.d]\ntype = "file"\npaths = []\nevents = []\nsubject = "d.e"\ndebounce = "soon"\n'
        '[source.Bad]\ntype = "file"\npaths = ["/tmp"]\n',
    )
    expected = [
        'config.toml:1:1: a poll source needs exactly one of url = "h',
        "config.toml:8:1: css selector 'span[[[' cannot be parsed: ",
        "config.toml:9:1: regex does not compile: missing ), untermi",
        "config.toml:9:1: use one of select, css or regex, not css a",
        "config.toml:10:1: `every` must be at least 1s, not '0s'",
        "config.toml:14:1: subject 'watchd.mine': subjects under wat",
        "config.toml:15:1: CEL select does not compile: syntax error",
        "config.toml:18:1: a file source needs at least one path, e.",
        'config.toml:19:1: announce at least one of "created", "modi',
        "config.toml:21:1: invalid duration 'soon'; use a number and",
        "config.toml:22:1: a file source needs `subject`, e.g. subje",
        "config.toml:22:1: source name 'Bad' must match ^[a-z0-9][a-",
    ]
    assert len(found) == len(expected), found
    for line, start in zip(found, expected, strict=True):
        assert line.startswith(start), line


def test_source_secrets_are_required_at_run_and_never_shown(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[source.site]\ntype = "poll"\nurl = "https://x.example"\nsubject = "s.x"\n'
        'headers = { Authorization = "env:SITE_AUTH_UNSET" }\n'
    )
    loaded = config.load(path)
    assert any("env:SITE_AUTH_UNSET is not set" in w for w in loaded.warnings)
    with pytest.raises(config.WatchdError) as exc:
        config.require_env_secrets(loaded.config)
    assert "[source.site.headers] Authorization needs env:SITE_AUTH_UNSET" in exc.value.message


def test_a_type_this_build_cannot_run_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(REGISTRY, "journal", "watchd.sources.pending:JournalPending")
    (line,) = problems(tmp_path, '[source.units]\ntype = "journal"\nunits = ["nginx.service"]\n')
    assert line.startswith('config.toml:2:1: source type "journal" cannot run in this version of watchd: use one of ')
    assert "poll, file" in line
