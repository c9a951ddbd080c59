"""Definition history: every version of a watch and a schedule kept, with its text, file, time and
(in a real git repository in tmp) the commit and author of its file; `watchd history` lists and
diffs them, `explain` names the version behind each decision, the dashboard's watch page shows it."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import aiohttp
from support.inprocess import InProcessDaemon
from support.scheduling import OFF
from support.waiting import until

from watchd.history import New, collect, render, schedule_block, watch_block
from watchd.model import make_event

MAIL = """# mail that cannot wait
[[watch]]
id = "urgent-mail"
kind = "match"
on = {{ subject = "mail.received", where = "data.urgent == true" }}
cooldown = "{cooldown}"
then = ["notify.console"]

# the next one
[[watch]]
id = "other"
kind = "match"
on = {{ subject = "other" }}
then = ["notify.console"]
"""

SCHED = '[schedule.report]\ncron = "0 6 * * *"\nrun = ["true"]\ntimeout = "{timeout}"\n'


def git(root: Path, *args: str, author: str = "Alice") -> None:
    who = ["-c", f"user.name={author}", "-c", f"user.email={author.lower()}@example.org"]
    subprocess.run(["git", "-C", str(root), *who, *args], check=True, capture_output=True)


def versions(d: InProcessDaemon, name: str) -> list[tuple[int, str | None, str | None, int | None]]:
    sql = "SELECT version, git_author, git_commit, git_dirty FROM definition_versions WHERE name = ? ORDER BY version"
    return [tuple(r) for r in d.query(sql, (name,))]  # type: ignore[misc]


async def test_versions_with_git_authors_history_diff_and_explain(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = daemon_factory({"mail.toml": MAIL.format(cooldown="10m")}, extra_config=OFF + SCHED.format(timeout="5m"))
    git(d.root, "init", "-q")
    git(d.root, "add", "config.toml", "watches")
    git(d.root, "commit", "-qm", "first watches")
    await d.start()
    ((v1, author1, commit1, dirty1),) = versions(d, "urgent-mail")
    assert (v1, author1, dirty1) == (1, "Alice <alice@example.org>", 0) and commit1 and len(commit1) == 40
    await d.publish(make_event("mail.received", {"urgent": True}, id="under-v1"))
    await until(lambda: d.decisions("urgent-mail", "fired"), what="the first fire")

    # Bob changes the cooldown and commits: version 2, by Bob.
    d.write_watch("mail.toml", MAIL.format(cooldown="30m"))
    git(d.root, "commit", "-qam", "longer cooldown", author="Bob")
    await until(lambda: len(versions(d, "urgent-mail")) == 2, what="version 2")
    assert versions(d, "urgent-mail")[1][1] == "Bob <bob@example.org>"
    assert len(versions(d, "other")) == 1  # an unchanged watch in the same file keeps its version
    await d.publish(make_event("mail.received", {"urgent": True}, id="under-v2"))  # within the cooldown
    await until(lambda: any(x["event_id"] == "under-v2" for x in d.decisions("urgent-mail")), what="a decision")

    # A change not committed yet: version 3, said to be uncommitted.
    d.write_watch("mail.toml", MAIL.format(cooldown="1h"))
    await until(lambda: len(versions(d, "urgent-mail")) == 3, what="version 3")
    assert versions(d, "urgent-mail")[2][3] == 1

    listed = await d.cli("history", "urgent-mail")
    assert listed.returncode == 0, listed
    assert "watch urgent-mail: 3 versions" in listed.stdout and "3 (current)" in listed.stdout
    assert f"commit {commit1[:7]} by Alice <alice@example.org>" in listed.stdout and "by Bob" in listed.stdout
    assert "uncommitted changes" in listed.stdout and "mail.toml:2" in listed.stdout
    diff = await d.cli("history", "urgent-mail", "--diff", "1", "2")
    assert '-cooldown = "10m"\n+cooldown = "30m"' in diff.stdout and "urgent-mail v1" in diff.stdout
    assert "other" not in diff.stdout.replace("urgent-mail", "")  # the block is this watch's alone
    shown = await d.cli("history", "urgent-mail", "--show", "1")
    assert shown.stdout.splitlines()[1:] == MAIL.format(cooldown="10m").splitlines()[1:7]
    as_json = json.loads((await d.cli("history", "urgent-mail", "--json")).stdout)
    assert [v["version"] for v in as_json] == [1, 2, 3] and as_json[1]["git_author"] == "Bob <bob@example.org>"
    missing = await d.cli("history", "urgent-mail", "--diff", "1", "9")
    assert missing.returncode == 1 and "has no version 9" in missing.stderr
    unknown = await d.cli("history", "nope")
    assert unknown.returncode == 1 and "no history of a watch or schedule named 'nope'" in unknown.stderr

    explained = json.loads((await d.cli("explain", "urgent-mail", "--json")).stdout)
    decided = [(t["event_id"], t["verdict"], t["version"]) for t in explained["timeline"] if t["event_id"]]
    assert decided == [("under-v1", "fired", 1), ("under-v2", "suppressed", 2)]
    assert explained["version"]["version"] == 3 and explained["version"]["git_dirty"] is True
    text = (await d.cli("explain", "urgent-mail")).stdout
    assert "version 3 since" in text and "uncommitted changes" in text
    event = json.loads((await d.cli("explain", "--event", "under-v2", "--json")).stdout)
    assert [(x["watch"], x["version"]) for x in event["decisions"]] == [("urgent-mail", 2)]

    # The schedule's history: its [schedule.report] table, changed in the config.
    d.write_config(OFF + SCHED.format(timeout="9m"))
    git(d.root, "commit", "-qam", "slower report", author="Carol")
    await until(lambda: len(versions(d, "report")) == 2, what="the schedule's version 2")
    sched = await d.cli("history", "report", "--diff", "1", "2")
    assert '-timeout = "5m"\n+timeout = "9m"' in sched.stdout
    report = (await d.cli("explain", "--schedule", "report")).stdout
    assert "version 2 since" in report and "by Carol <carol@example.org>" in report

    async with aiohttp.ClientSession() as s, s.get(d.http_url + "/watches/urgent-mail") as r:
        html = await r.text()
    assert "version 3 since" in html and "uncommitted changes" in html


async def test_outside_a_git_repository_versions_are_kept_without_git(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = await daemon_factory({"mail.toml": MAIL.format(cooldown="10m")}, extra_config=OFF).start()
    ((_, author, commit, dirty),) = versions(d, "urgent-mail")
    assert (author, commit, dirty) == (None, None, None)
    listed = await d.cli("history", "urgent-mail")
    assert listed.returncode == 0 and "1 (current)" in listed.stdout
    # Built-in watches have no file: watchd's rendering of them is kept.
    shown = await d.cli("history", "watchd-canary", "--show", "1")
    assert shown.returncode == 0 and "built in" in shown.stdout and 'kind = "match"' in shown.stdout


def test_blocks_are_cut_at_the_next_table_and_keep_their_sub_tables(tmp_path: Path) -> None:
    text = '[[watch]]\nid = "a"\n[watch.quiet]\nfrom = "22:00"\n\n# about b\n[[watch]]\nid = "b"\n'
    assert watch_block(text, 1) == '[[watch]]\nid = "a"\n[watch.quiet]\nfrom = "22:00"\n'
    assert watch_block(text, 7) == '[[watch]]\nid = "b"\n'
    config = '[schedule.a]\nevery = "5m"\n\n[schedule.ab]\nevery = "1m"\n'
    assert schedule_block(config, "a") == ('[schedule.a]\nevery = "5m"\n', 1)
    assert schedule_block(config, "ab") == ('[schedule.ab]\nevery = "1m"\n', 4)
    assert schedule_block(config, "b") is None
    from watchd.config import Schedule

    out = render("[schedule.x]", Schedule(every="5m", run=["a b", 'c"d']))
    assert 'every = "5m"\n' in out and 'run = ["a b", "c\\"d"]' in out
    (v,) = collect([New("schedule", "x", 1, "d", "c.toml", tmp_path / "missing.toml", None, Schedule(every="1m"))], 5)
    assert v.file is None and v.content.startswith("[schedule.x]\n") and v.git_commit is None


def test_a_literal_ping_url_is_never_kept(tmp_path: Path) -> None:
    from watchd.config import Schedule

    secret = "https://hc-ping.com/0f7e-secret-uuid"
    config = tmp_path / "config.toml"
    config.write_text(f'[schedule.heartbeat]\nevery = "5m"\njob = "heartbeat"\nping_url = "{secret}"\n')
    sched = Schedule(every="5m", job="heartbeat", ping_url=secret)
    on_disk = New("schedule", "heartbeat", 1, "d", "config.toml", config, None, sched)
    built_in = New("schedule", "heartbeat", 1, "d", None, None, None, sched)
    for v in collect([on_disk, built_in], 5):
        assert "secret-uuid" not in v.content and "hc-ping.com" in v.content, v.content
