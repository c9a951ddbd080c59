"""The journal source against the machine's real journalctl reading a private journald (`[real]`,
where this machine can run one) and against the recorded-output stand-in (`[standin]`): entries
become events with their cursor as id, filters, `systemd.unit.failed`, resuming after a stop."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cli import run_cli
from support.journal import Journal, StandinJournal, journal_backends, make_journal
from support.project import Project
from support.sources import SourceRun, stored_ids
from support.waiting import until

from watchd import config
from watchd.bus import EmbeddedNats
from watchd.errors import ConfigError
from watchd.sources.state import PositionStore


@pytest.fixture(params=journal_backends())
def journal(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Journal]:
    j = make_journal(request.param, tmp_path / "journal-root")
    j.write(MESSAGE="a journal is never empty: this is where a first start begins")
    for k, v in j.env.items():
        monkeypatch.setenv(k, v)
    try:
        yield j
    finally:
        j.stop()


def source_toml(journal: Journal, extra: str = "") -> str:
    return f'type = "journal"\ndirectory = "{journal.directory}"\n{extra}'


def by_subject(events: list[dict], subject: str) -> list[dict]:
    return [e for e in events if e["subject"] == subject]


async def test_entries_after_the_first_start_become_events(
    journal: Journal, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    journal.write(MESSAGE="written before watchd ever ran", SYSLOG_IDENTIFIER="old")
    run = await SourceRun(nats_server.url, tmp_path, "units", source_toml(journal)).start()
    await until(lambda: run.position().get("cursor"), what="the starting cursor")
    journal.write(MESSAGE="disk almost full", PRIORITY="3", SYSLOG_IDENTIFIER="df-check")
    journal.unit_failed("backup.service", "exit-code")
    events = await until(lambda: run.stored(3), what="three events")
    await run.stop()

    assert [e["data"]["message"] for e in events if e["subject"].startswith("journal.")] == [
        "disk almost full",
        "backup.service: Failed with result 'exit-code'.",
    ]
    first = events[0]
    assert first["source"] == "units"
    assert first["data"]["priority"] == 3 and first["data"]["identifier"] == "df-check"
    assert first["id"] == first["data"]["cursor"] == journal.cursors()[-2]
    assert first["data"]["fields"]["SYSLOG_IDENTIFIER"] == "df-check"

    # PID 1's "Unit failed": a journal event about the unit, and systemd.unit.failed.
    about = events[1]
    assert about["subject"] == "journal.backup.service"
    assert about["data"]["unit"] == "backup.service"
    [failed] = by_subject(events, "systemd.unit.failed")
    assert failed["data"]["unit"] == "backup.service" and failed["data"]["result"] == "exit-code"
    assert failed["data"]["cursor"] == about["id"] and failed["id"] != about["id"]
    assert run.position()["cursor"] == journal.cursors()[-1]


async def test_priority_and_match_filter_but_a_unit_failure_always_gets_through(
    journal: Journal, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    toml = source_toml(
        journal, 'priority = "err"\nmatch = { SYSLOG_IDENTIFIER = "sshd" }\nsubject = "auth.{identifier}"'
    )
    run = await SourceRun(nats_server.url, tmp_path, "ssh", toml).start()
    await until(lambda: run.position().get("cursor"), what="the starting cursor")
    journal.write(MESSAGE="sshd info: accepted key", PRIORITY="6", SYSLOG_IDENTIFIER="sshd")
    journal.write(MESSAGE="cron error", PRIORITY="3", SYSLOG_IDENTIFIER="cron")
    journal.write(MESSAGE="sshd error: too many failures", PRIORITY="3", SYSLOG_IDENTIFIER="sshd")
    journal.unit_failed("nginx.service", "signal")  # warning, from systemd: fails both filters
    journal.write(MESSAGE="sshd crit", PRIORITY="2", SYSLOG_IDENTIFIER="sshd")
    events = await until(lambda: run.stored(3), what="three events")
    await run.stop()
    assert [(e["subject"], e["data"]["message"]) for e in events] == [
        ("auth.sshd", "sshd error: too many failures"),
        ("systemd.unit.failed", "nginx.service: Failed with result 'signal'."),
        ("auth.sshd", "sshd crit"),
    ]
    assert events[1]["data"]["result"] == "signal"


async def test_units_filter(journal: Journal, nats_server: EmbeddedNats, tmp_path: Path) -> None:
    toml = source_toml(journal, 'units = ["backup.service"]')
    run = await SourceRun(nats_server.url, tmp_path, "units", toml).start()
    await until(lambda: run.position().get("cursor"), what="the starting cursor")
    journal.unit_failed("nginx.service")
    journal.write(MESSAGE="someone else", SYSLOG_IDENTIFIER="cron")
    journal.unit_failed("backup.service")
    events = await until(lambda: run.stored(2), what="two events")
    await run.stop()
    assert {e["subject"] for e in events} == {"journal.backup.service", "systemd.unit.failed"}
    assert all(e["data"]["unit"] == "backup.service" for e in events)


async def test_a_restart_resumes_at_the_cursor_and_sends_nothing_twice(
    journal: Journal, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    run = await SourceRun(nats_server.url, tmp_path, "j", source_toml(journal)).start()
    await until(lambda: run.position().get("cursor"), what="the starting cursor")
    journal.write(MESSAGE="one")
    await until(lambda: run.stored(1))
    await run.stop()
    for word in ("two", "three", "four"):  # while the source is down
        journal.write(MESSAGE=word)
    run = await SourceRun(nats_server.url, tmp_path, "j", source_toml(journal)).start()
    journal.write(MESSAGE="five")
    events = await until(lambda: run.stored(5))
    await run.stop()
    assert [e["data"]["message"] for e in events] == ["one", "two", "three", "four", "five"]
    assert run.health.duplicates == 0
    assert len({e["id"] for e in events}) == 5


async def test_a_lost_position_resends_and_the_stream_stores_each_once(
    journal: Journal, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    """The position file says an older cursor than what was stored (a crash between the ack and the
    write): the re-sent entries keep their ids and are stored once."""
    run = await SourceRun(nats_server.url, tmp_path, "j", source_toml(journal)).start()
    start = await until(lambda: run.position().get("cursor"), what="the starting cursor")
    for word in ("one", "two", "three"):
        journal.write(MESSAGE=word)
    await until(lambda: run.stored(3))
    await run.stop()
    run.positions.save("j", {"cursor": start})
    run = await SourceRun(nats_server.url, tmp_path, "j", source_toml(journal)).start()
    journal.write(MESSAGE="four")
    events = await until(lambda: run.stored(4))
    await until(lambda: run.health.duplicates == 3, what="three re-sent entries")
    await run.stop()
    assert [e["data"]["message"] for e in events] == ["one", "two", "three", "four"]


def test_validate_checks_journal_settings_at_their_lines(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[source.a]\ntype = "journal"\nsubject = "journal.{unti}"\n'
        '[source.b]\ntype = "journal"\nunits = ["backup.service", "two words"]\n'
        'match = { syslog_identifier = "sshd" }\npriority = "warn"\n'
        '[source.c]\ntype = "journal"\nsubject = "watchd.{unit}"\n'
    )
    with pytest.raises(ConfigError) as exc:
        config.load(path)
    found = [p.replace(str(path), "config.toml") for p in exc.value.problems]
    assert found == [
        "config.toml:3:1: unknown field {unti} in the subject: a journal subject may use "
        "{unit}, {identifier}, {priority}, {host}",
        "config.toml:6:1: unit 'two words' is not a unit name, e.g. backup.service",
        "config.toml:7:11: 'syslog_identifier' is not a journal field: fields are upper case, "
        "e.g. SYSLOG_IDENTIFIER or _SYSTEMD_UNIT",
        "config.toml:8:1: `priority` must be one of alert, crit, debug, emerg, err, info, notice, warning, "
        "not the string 'warn': did you mean 'warning'?",
        "config.toml:11:1: subject 'watchd.{unit}': subjects under watchd. are watchd's own",
    ]


async def test_changed_filters_resume_without_losing_the_first_match(
    journal: Journal, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    """The saved cursor's entry does not pass the new filters: journalctl's --after-cursor would
    skip the first entry that does; resuming with --cursor does not."""
    run = await SourceRun(nats_server.url, tmp_path, "j", source_toml(journal)).start()
    await until(lambda: run.position().get("cursor"), what="the starting cursor")
    journal.write(MESSAGE="from cron", SYSLOG_IDENTIFIER="cron")
    await until(lambda: run.stored(1))
    await run.stop()
    journal.write(MESSAGE="from sshd, while down", SYSLOG_IDENTIFIER="sshd")
    toml = source_toml(journal, 'match = { SYSLOG_IDENTIFIER = "sshd" }')
    run = await SourceRun(nats_server.url, tmp_path, "j", toml).start()
    events = await until(lambda: run.stored(2))
    await run.stop()
    assert [e["data"]["message"] for e in events] == ["from cron", "from sshd, while down"]


async def test_a_cursor_journalctl_cannot_use_starts_again_at_the_newest(
    journal: Journal, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    if journal.name != "real":
        pytest.skip("the stand-in does not check cursors; the machine's journalctl does")
    run = SourceRun(nats_server.url, tmp_path, "j", source_toml(journal))
    run.positions.save("j", {"cursor": "not-a-cursor"})
    await run.start()
    await until(lambda: run.task is not None and run.task.done(), what="the run to end")
    failure = run.failed()
    await run.stop()
    assert failure is not None and "cannot use the saved cursor" in str(failure)
    assert run.position() == {}
    run = await SourceRun(nats_server.url, tmp_path, "j", source_toml(journal)).start()
    await until(lambda: run.position().get("cursor"), what="a new starting cursor")
    journal.write(MESSAGE="after the reset")
    events = await until(lambda: run.stored(1))
    await run.stop()
    assert [e["data"]["message"] for e in events] == ["after the reset"]


async def test_source_test_prints_the_entries_since_the_cursor(journal: Journal, tmp_path: Path) -> None:
    project = Project(tmp_path / "p", extra_config=f"[source.units]\n{source_toml(journal)}")
    journal.write(MESSAGE="old")
    PositionStore(project.state_dir / "sources").save("units", {"cursor": journal.cursors()[-1]})
    journal.write(MESSAGE="new one", PRIORITY="3")
    journal.unit_failed("backup.service")
    args = ("source", "test", "units", "--config", str(project.config_path))
    result = await asyncio.to_thread(run_cli, *args, env=journal.env)
    assert result.returncode == 0, result.stderr
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(e["subject"], e["data"]["message"]) for e in printed] == [
        ("journal.unknown", "new one"),
        ("journal.backup.service", "backup.service: Failed with result 'exit-code'."),
        ("systemd.unit.failed", "backup.service: Failed with result 'exit-code'."),
    ]


async def test_without_journalctl_the_source_says_so_in_one_line(
    nats_server: EmbeddedNats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    run = await SourceRun(nats_server.url, tmp_path, "j", 'type = "journal"').start()
    await until(lambda: run.task is not None and run.task.done(), what="the run to end")
    failure = run.failed()
    await run.stop()
    assert failure is not None and str(failure) == "source j: journalctl is not installed or not on PATH"

    path = tmp_path / "config.toml"
    path.write_text('[source.j]\ntype = "journal"\n')
    result = await asyncio.to_thread(run_cli, "validate", "--config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "journalctl is not on PATH here" in result.stdout + result.stderr


RECORDED = Path(__file__).with_name("data") / "journal" / "recorded.jsonl"


async def test_a_recorded_journal_replays_through_the_stand_in(
    nats_server: EmbeddedNats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Output of the real journalctl (a private journald: its start, a backup's log lines, PID 1's
    "Unit failed", an ssh login), replayed by the stand-in from the first entry's cursor."""
    journal = StandinJournal(tmp_path / "recorded")
    journal.entries.write_text(RECORDED.read_text())
    for k, v in journal.env.items():
        monkeypatch.setenv(k, v)
    run = SourceRun(nats_server.url, tmp_path, "nas", source_toml(journal, 'units = ["backup.service"]'))
    run.positions.save("nas", {"cursor": journal.cursors()[0]})
    await run.start()
    events = await until(lambda: run.stored(2))
    await run.stop()
    assert [(e["subject"], e["data"]["message"]) for e in events] == [
        ("journal.backup.service", "backup.service: Failed with result 'exit-code'."),
        ("systemd.unit.failed", "backup.service: Failed with result 'exit-code'."),
    ]
    assert events[1]["data"]["result"] == "exit-code" and events[1]["data"]["host"] == "nas"


async def test_a_busy_journal_saves_its_cursor_as_it_goes_never_ahead_of_the_stream(
    nats_server: EmbeddedNats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches are sent while earlier ones await their acks, and the cursor is saved only now and
    then: each saved cursor's entry, and every entry before it, must already be stored (the
    source counts an event once JetStream acknowledged it; the test runs in the source's loop, so
    the file and the count are read together)."""
    journal = StandinJournal(tmp_path / "journal-root")
    for k, v in journal.env.items():
        monkeypatch.setenv(k, v)
    total = 6000
    run = SourceRun(nats_server.url, tmp_path, "busy", source_toml(journal))
    run.positions.save("busy", {"cursor": "s=standin;i=0;b=gone"})  # from the head, entry 0 included
    journal.generate(2000.0, total=total)  # 3 s of entries
    await run.start()
    saved: list[int] = []
    while not saved or saved[-1] < total - 1:
        if (exc := run.failed()) is not None:
            raise AssertionError(f"the source stopped: {exc}")
        cursor = run.position().get("cursor", "")
        stored = run.health.events  # entries 0 .. stored - 1 are in the stream
        at = int(cursor.split(";")[1][2:], 16) if "i=" in cursor else 0
        if at and (not saved or at != saved[-1]):
            assert at < stored, f"the cursor of entry {at} was saved with entries up to {stored - 1} stored"
            saved.append(at)
        await asyncio.sleep(0.01)
    await run.stop()
    assert len(saved) >= 4, f"the cursor was saved only at {saved}: not while the entries kept coming"
    ids = await stored_ids(nats_server.url, "journal.>")
    assert len(ids) == len(set(ids)) == total


async def test_units_names_user_units_too(journal: Journal, nats_server: EmbeddedNats, tmp_path: Path) -> None:
    """`units` follows a unit of the user watchd runs as (`systemctl --user`) as well as a system
    unit: its manager's "Unit failed" is a journal event and systemd.unit.failed."""
    toml = source_toml(journal, 'units = ["sync.service", "backup.service"]')
    run = await SourceRun(nats_server.url, tmp_path, "units", toml).start()
    await until(lambda: run.position().get("cursor"), what="the starting cursor")
    journal.user_unit_failed("other.service")  # a user unit not named
    journal.user_unit_failed("sync.service", "timeout")
    journal.unit_failed("backup.service")
    events = await until(lambda: run.stored(4), what="four events")
    await asyncio.sleep(0.3)  # and nothing more
    events = await run.events()
    await run.stop()
    failed = by_subject(events, "systemd.unit.failed")
    assert [(e["data"]["unit"], e["data"]["user_unit"], e["data"]["result"]) for e in failed] == [
        ("sync.service", True, "timeout"),
        ("backup.service", False, "exit-code"),
    ]
    assert [e["subject"] for e in events if e["subject"].startswith("journal.")] == [
        "journal.sync.service",
        "journal.backup.service",
    ]
