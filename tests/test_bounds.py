"""Every duration and count a config or watch file gives is bounded at `validate`: a value that
validates can never overflow an instant when an event arrives."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watchd import config
from watchd.cron.schedule import MAX_DURATION_S, ScheduleError, parse_duration
from watchd.errors import ConfigError
from watchd.limits import MAX_WATCH_COUNT

HUGE = ["99999999999d", "3661d", "523w", "9" * 400 + "d", "87841h"]


def write(tmp_path: Path, watches: str, cfg: str = "") -> Path:
    (tmp_path / "watches").mkdir(exist_ok=True)
    (tmp_path / "watches" / "a.toml").write_text(watches)
    path = tmp_path / "config.toml"
    path.write_text(cfg)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        config.load(path)
    return [p.replace(str(path.parent) + "/", "") for p in exc.value.problems]


@pytest.mark.parametrize("text", HUGE)
def test_a_duration_longer_than_ten_years_is_refused(text: str) -> None:
    with pytest.raises(ScheduleError, match=r"longer than 10 years; use at most 3660d"):
        parse_duration(text)


def test_ten_years_is_accepted() -> None:
    assert parse_duration("3660d") == MAX_DURATION_S
    assert parse_duration("3650d") < MAX_DURATION_S


@given(st.text(alphabet="0123456789.wdhms", max_size=40))
def test_any_duration_parse_duration_accepts_is_finite_and_bounded(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ScheduleError:
        return
    assert 0 <= seconds <= MAX_DURATION_S


@pytest.mark.parametrize("text", HUGE)
def test_every_watch_duration_is_bounded_at_its_line(tmp_path: Path, text: str) -> None:
    path = write(
        tmp_path,
        f"""\
[[watch]]
id = "storm"
kind = "match"
on = {{ subject = "login.failed" }}
count = 5
window = "{text}"
cooldown = "{text}"

[[watch]]
id = "quiet"
kind = "absent"
expect = {{ subject = "hb" }}
for = "{text}"

[[watch]]
id = "late"
kind = "deadline"
opens = {{ subject = "job.started" }}
expect = {{ subject = "job.done" }}
within = "{text}"
""",
    )
    found = problems(path)
    for line in (6, 7, 13, 20):
        assert any(p.startswith(f"watches/a.toml:{line}:") and "longer than 10 years" in p for p in found), found


def test_schedule_and_agent_durations_are_bounded_at_their_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "",
        """\
[schedule.backup]
every = "99999999999d"
job = "backup"

[agent.fix]
type = "command"
command = ["true"]
timeout = "99999999999d"
""",
    )
    found = problems(path)
    assert any(p.startswith("config.toml:2:") and "longer than 10 years" in p for p in found), found
    assert any(p.startswith("config.toml:8:") and "longer than 10 years" in p for p in found), found


@pytest.mark.parametrize("count", [MAX_WATCH_COUNT + 1, 10**18])
def test_a_count_is_bounded_at_its_line(tmp_path: Path, count: int) -> None:
    path = write(
        tmp_path,
        f"""\
[[watch]]
id = "storm"
kind = "match"
on = {{ subject = "login.failed" }}
count = {count}
window = "1m"
""",
    )
    (line,) = problems(path)
    assert line.startswith("watches/a.toml:5:") and f"`count` must be at most {MAX_WATCH_COUNT:,}" in line


def test_the_largest_count_and_durations_validate(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""\
[[watch]]
id = "storm"
kind = "match"
on = {{ subject = "login.failed" }}
count = {MAX_WATCH_COUNT}
window = "3660d"
cooldown = "3660d"
""",
    )
    assert [d.watch.id for d in config.load(path).watches] == ["storm"]
