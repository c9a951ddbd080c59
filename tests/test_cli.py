"""The command line through its entry point, in this process: one-line errors and exit codes,
`validate` positions, `emit` and `exec` with and without a running daemon (in the test's loop)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from support.cli import CliResult, run_cli
from support.inprocess import InProcessDaemon
from support.project import Project, free_port
from support.waiting import until

SUB_WATCH = """
[[watch]]
id = "subs"
kind = "match"
on = { subject = "sub.>" }
then = ["notify.console"]
"""


def cli(p: Project, command: str, *args: str) -> CliResult:
    """`watchd COMMAND --config <the project's config> ARGS…`."""
    return run_cli(command, "--config", str(p.config_path), *args)


def _one_clear_error(stderr: str, starts: str) -> None:
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr, stderr
    assert lines and lines[0].startswith(f"error: {starts}"), stderr
    assert len(lines) <= 2 and all(ln.startswith(("error:", "hint:")) for ln in lines), stderr


def test_emit_bad_subject_is_one_line_error(tmp_path: Path) -> None:
    p = Project(tmp_path)
    for subject in ("bad subject!", "a..b", "watchd.events.x", ""):
        r = cli(p, "emit", subject)
        assert r.returncode != 0
        _one_clear_error(r.stderr, "bad subject")
    r = cli(p, "emit", "ok.subject", "novalue")
    assert r.returncode != 0
    _one_clear_error(r.stderr, "bad field 'novalue'")
    r = cli(p, "emit", "ok.subject", "--json", "[1]")
    assert r.returncode != 0
    _one_clear_error(r.stderr, "--json must be a JSON object")
    r = cli(p, "emit", "ok.subject", "--json", "{nope")
    assert r.returncode != 0
    _one_clear_error(r.stderr, "--json is not valid JSON")


def test_emit_without_daemon_fails_fast_and_clearly(tmp_path: Path) -> None:
    p = Project(tmp_path)  # configured, never started: nothing listens on its NATS port
    started = time.monotonic()
    r = cli(p, "emit", "job.done", "x=1")
    assert time.monotonic() - started < 3
    assert r.returncode == 1
    _one_clear_error(r.stderr, f"cannot reach NATS at {p.nats_url}")
    assert "hint: is `watchd run` running? Otherwise check [nats] url" in r.stderr  # [nats] survives rich markup


def test_validate_reports_file_line_col_and_exits_1(tmp_path: Path) -> None:
    (tmp_path / "watches").mkdir()
    config = tmp_path / "config.toml"
    config.write_text('watches = ["watches/"]\nstate_dir = "state"\n[http]\nlisten = "127.0.0.1:1"\nbogus = 1\n')
    (tmp_path / "watches" / "syntax.toml").write_text('[[watch]]\nid = "a"\nkind = "match"\non = { subject = "x" \n')
    (tmp_path / "watches" / "fields.toml").write_text("""[[watch]]
id = "fine"
kind = "match"
on = { subject = "x" }

[[watch]]
id = "bad-dur"
kind = "absent"
expect = { subject = "hb.*" }
for = "15 minutes"
then = ["notify.nowhere"]

[[watch]]
id = "bad-cel"
kind = "match"
on = { subject = "x", where = "data.a ==" }

[[watch]]
id = "bad-kind"
kind = "sometimes"
""")
    r = run_cli("validate", "--config", str(config))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    problems = [ln for ln in lines if not ln.startswith(("error:", "hint:"))]
    assert all(re.match(r"^\S+\.toml:\d+:\d+: \S", ln) for ln in problems), problems
    expected = [
        r"config\.toml:5:\d+: unknown field `bogus`",
        r"watches/fields\.toml:10:\d+: invalid duration '15 minutes'",
        r"watches/fields\.toml:11:\d+: unknown target 'notify\.nowhere'",
        r"watches/fields\.toml:16:\d+: CEL where does not compile",
        r"watches/fields\.toml:20:\d+: `kind` must be one of match, absent, deadline, not the string 'sometimes'",
        r"watches/syntax\.toml:4:\d+: TOML syntax error",
    ]
    for pattern, line in zip(expected, problems, strict=True):  # in file order
        assert re.search(pattern, line), (pattern, problems)
    assert lines[-2] == f"error: {len(expected)} problem(s) found"

    for name in ("syntax.toml", "fields.toml"):
        (tmp_path / "watches" / name).unlink()
    config.write_text(config.read_text().replace("bogus = 1\n", ""))
    (tmp_path / "watches" / "ok.toml").write_text(SUB_WATCH)
    ok = run_cli("validate", "--config", str(config))
    assert ok.returncode == 0 and ok.stdout.startswith("ok: 1 watches in 1 files"), ok.stdout + ok.stderr


def test_exec_without_daemon_runs_the_command_and_warns(tmp_path: Path) -> None:
    p = Project(tmp_path)
    started = time.monotonic()
    r = cli(p, "exec", "sub", "--", "false")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "warning: could not publish sub.started" in r.stderr
    assert "warning: could not publish sub.failed" in r.stderr
    r = cli(p, "exec", "sub", "--", "sh", "-c", "echo out-line; exit 7")
    assert r.returncode == 7 and r.stdout == "out-line\n"
    r = cli(p, "exec", "sub", "--", "no-such-command-xyz")
    assert r.returncode == 127 and "cannot run no-such-command-xyz" in r.stderr
    assert time.monotonic() - started < 6, "exec waited for an absent NATS"

    # A broken config does not stop the wrapped job either.
    p.config_path.write_text(p.config_path.read_text() + "\nbogus = 1\n")
    r = cli(p, "exec", "sub", "--", "sh", "-c", "echo ran")
    assert r.returncode == 0 and r.stdout == "ran\n"
    assert "warning: cannot load the config" in r.stderr and "Traceback" not in r.stderr


async def test_exec_and_emit_with_daemon(daemon_factory: Callable[..., InProcessDaemon]) -> None:
    keyed = SUB_WATCH.replace('"subs"', '"keyed"').replace('"sub.>"', '"sub.keyed", key = "data.host"')
    d = await daemon_factory({"subs.toml": SUB_WATCH, "keyed.toml": keyed}).start()
    r = await d.cli("exec", "sub.backup", "--", "sh", "-c", "echo hello; echo world >&2; exit 3")
    assert r.returncode == 3, r.stderr
    assert "hello" in r.stdout and "warning" not in r.stderr

    def events() -> dict[str, dict[str, object]]:
        return {h["evidence"][0]["subject"]: h["evidence"][0] for h in d.handoffs("subs")}

    got = await until(
        lambda: (e := events()) and {"sub.backup.started", "sub.backup.failed"} <= set(e) and e,
        what="started and failed events",
    )
    assert got["sub.backup.started"]["data"] == {"command": ["sh", "-c", "echo hello; echo world >&2; exit 3"]}
    failed = got["sub.backup.failed"]["data"]
    assert isinstance(failed, dict)
    assert failed["exit_code"] == 3 and failed["output_tail"] == "hello\nworld\n"
    assert isinstance(failed["duration_s"], float | int) and 0 <= failed["duration_s"] < 10

    r = await d.cli("exec", "sub.ok", "--", "true")
    assert r.returncode == 0
    done = await until(lambda: events().get("sub.ok.done"), what="the done event")
    assert done["data"]["exit_code"] == 0 and done["data"]["output_tail"] == ""  # type: ignore[index]

    # emit: k=v values parse as JSON, a.b nests, --json merges, --id is stored once
    r = await d.cli("emit", "sub.emit", "n=5", "ok=true", "name=box", "a.b=1", "--json", '{"x": [1]}', "--id", "emit-1")
    assert r.returncode == 0 and r.stdout.startswith("emit-1 sub.emit seq ")
    again = await d.cli("emit", "sub.emit", "--id", "emit-1")
    assert again.returncode == 0 and "(duplicate: already stored)" in again.stdout
    ev = await until(lambda: events().get("sub.emit"), what="the emitted event")
    assert ev["data"] == {"x": [1], "n": 5, "ok": True, "name": "box", "a": {"b": 1}}
    assert ev["id"] == "emit-1"
    assert (await d.stream_event(int(r.stdout.split(" seq ")[1])))["source"] == "cli"
    await asyncio.sleep(0.2)
    assert [h["evidence"][0]["id"] for h in d.handoffs("subs")].count("emit-1") == 1

    # a key from event data that looks like rich markup is shown as written
    r = await d.cli("emit", "sub.keyed", "host=[/]x[i]")
    assert r.returncode == 0, r.stderr
    await until(lambda: any(h["key"] == "[/]x[i]" for h in d.handoffs("keyed")), what="the keyed fire")
    table = await d.cli("handoffs")
    assert table.returncode == 0 and "[/]x[i]" in table.stdout, table.stdout + table.stderr

    listed = json.loads((await d.cli("handoffs", "--json", "--state", "delivered", "--limit", "5")).stdout)
    assert len(d.handoffs("subs")) == 6  # backup started+failed, ok started+done, emit, keyed
    assert len(listed) == 5 and {h["state"] for h in listed} == {"delivered"}
    assert json.loads((await d.cli("handoffs", "--json", "--state", "dead")).stdout) == []
    await d.stop()


HEAVY = ("nats", "aiohttp", "cel", "croniter", "rich", "watchd.bus")


async def test_emit_goes_through_the_running_daemon_without_loading_a_nats_client(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = await daemon_factory({"subs.toml": SUB_WATCH}).start()
    probe = (
        "import sys\nfrom watchd.cli import main\n"
        f"sys.argv = ['watchd', 'emit', 'sub.light', 'n=1', '--source', 'probe', '--config', {str(d.config_path)!r}]\n"
        f"main()\nprint([m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]", done.stdout
    seq = int(done.stdout.splitlines()[0].split(" seq ")[1].split()[0])
    stored = await d.stream_event(seq)
    assert stored["subject"] == "sub.light" and stored["source"] == "probe" and stored["data"] == {"n": 1}


async def test_emit_falls_back_to_nats_when_no_daemon_answers_over_http(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = await daemon_factory({"subs.toml": SUB_WATCH}).start()
    # the same deployment seen through a config whose [http] listen points where nothing listens
    elsewhere = d.config_path.with_name("elsewhere.toml")
    listen = f"127.0.0.1:{d.http_port}"
    elsewhere.write_text(d.config_path.read_text().replace(listen, f"127.0.0.1:{free_port()}"))
    r = await asyncio.to_thread(run_cli, "emit", "sub.fallback", "--id", "fb-1", "--config", str(elsewhere))
    assert r.returncode == 0 and r.stdout.startswith("fb-1 sub.fallback seq "), r.stderr
    await until(
        lambda: any(h["evidence"][0]["id"] == "fb-1" for h in d.handoffs("subs")), what="the event published to NATS"
    )


def test_validate_and_check_speak_json(tmp_path: Path) -> None:
    p = Project(tmp_path, {"good.toml": SUB_WATCH})
    ok = cli(p, "validate", "--json")
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["ok"] is True and report["watches"] == 1 and report["files"] == 1 and report["problems"] == []

    p.write_watch(
        "bad.toml", SUB_WATCH.replace('"subs"', '"other"').replace('kind = "match"', 'kind = "match"\nwithin = 5')
    )
    bad = cli(p, "validate", "--json")
    assert bad.returncode == 1 and bad.stderr == ""
    report = json.loads(bad.stdout)
    (problem,) = report["problems"]
    assert report["ok"] is False and problem["file"].endswith("bad.toml") and problem["line"] == 5
    assert "`within`" in problem["message"] and isinstance(problem["col"], int)

    down = cli(p, "check", "--json")  # configured, never started; a broken watch file does not matter here
    assert down.returncode == 1
    assert json.loads(down.stdout) | {"error": None} == {"ok": False, "running": False, "error": None}


async def test_check_and_emit_json_with_a_daemon(daemon_factory: Callable[..., InProcessDaemon]) -> None:
    d = await daemon_factory({"subs.toml": SUB_WATCH}).start()
    r = await d.cli("check", "--json")
    health = json.loads(r.stdout)
    assert r.returncode == 0 and health["ok"] is True and health["running"] is True and health["pid"] == d.pid
    r = await d.cli("emit", "sub.x", "--id", "j-1", "--output", "json")
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout)
    assert first["id"] == "j-1" and first["subject"] == "sub.x" and first["duplicate"] is False and first["seq"] > 0
    again = json.loads((await d.cli("emit", "sub.x", "--id", "j-1", "--output", "json")).stdout)
    assert again == {**first, "duplicate": True}
