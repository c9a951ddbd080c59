"""The canary end to end: the real daemon (in the test's event loop), real NATS, fake Telegram and Slack
on loopback, `watchd canary` as a process. The path
passes, a broken notifier fails it and the built-in watch alerts elsewhere, and the release canary
runs on a change of watchd, the config or an agent, never on an unchanged restart."""

from __future__ import annotations

import json
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from support.cli import run_cli
from support.fake_anthropic import FakeAnthropic
from support.fake_telegram import FakeTelegram
from support.fakes import FakeSlack
from support.inprocess import InProcessDaemon
from support.project import Project
from support.waiting import until

from watchd import __version__, config
from watchd.agents.command import CommandRunner
from watchd.config import AbsentWatch, CommandAgent
from watchd.errors import ConfigError
from watchd.jobs.builtin_watches import alert_targets, all_watches
from watchd.jobs.canary import canary_line, changes, probe_targets

TG_TOKEN = "424242:canary-SECRET-token"


async def test_canary_passes_then_a_broken_notifier_fails_it_and_alerts(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    async with FakeTelegram(token=TG_TOKEN) as tg, FakeSlack("webhook") as sl:
        d = daemon_factory(
            extra_config=f'[notify.phone]\ntype = "telegram"\ntoken = "env:TG_TOKEN"\nchat_id = "42"\n'
            f'api_base = "{tg.url}"\n[notify.team]\ntype = "slack"\nwebhook_url = "env:SLACK_URL"\n',
            env={"TG_TOKEN": TG_TOKEN, "SLACK_URL": sl.webhook_url},
        )
        d.config_path.write_text('alert = ["notify.team"]\n' + d.config_path.read_text())
        await d.start()

        passed = await d.cli_process("canary", "--json")
        assert passed.returncode == 0, passed.stdout + passed.stderr
        report = json.loads(passed.stdout)
        assert report["ok"] and report["path"]["ok"] and report["failing"] == [] and report["trigger"] == "manual"
        probes = {p["target"]: p for p in report["probes"]}
        assert set(probes) == {"notify.console", "notify.phone", "notify.team"}
        assert all(p["ok"] for p in probes.values()) and "@watchd_test_bot" in probes["notify.phone"]["detail"]
        (h,) = d.handoffs("watchd-canary")
        assert (h["target"], h["state"]) == ("watchd.canary", "delivered") and h["id"] == report["path"]["handoff"]
        assert tg.messages == [] and sl.messages == []  # probes send nobody anything
        assert [r.path for r in tg.requests] == [f"/bot{TG_TOKEN}/getMe"]

        status = json.loads((await d.cli("status", "--json")).stdout)
        assert status["last_canary"]["ok"] is True
        builtin = {w["id"]: w for w in status["watches"] if w["file"].startswith("<built-in>")}
        # (the default nightly backup schedule brings watchd-backup-missing, an absent watch: 26 h)
        assert set(builtin) == {
            "watchd-canary",
            "watchd-canary-failed",
            "watchd-backup-failed",
            "watchd-backup-missing",
        }
        missing = builtin["watchd-backup-missing"]
        assert (missing["kind"], missing["state"], missing["next_due"] is not None) == ("absent", "ok", True)
        assert builtin["watchd-canary"]["last_fired"] is not None

        await tg.stop()  # Telegram goes away
        failed = await d.cli_process("canary")
        assert failed.returncode == 1, failed.stdout + failed.stderr
        lines = failed.stdout.splitlines()
        assert lines[0].startswith("ok     path: NATS → engine → handoff → delivery in ")
        assert lines[1:4] == [
            "ok     notify.console: nothing to probe",
            "FAILED notify.phone: cannot connect to Telegram at 127.0.0.1: connection refused",
            "ok     notify.team: the Slack webhook host at 127.0.0.1 accepts connections (the webhook itself is not "
            "checked without posting; its host is 127.0.0.1, not hooks.slack.com)",
        ]
        assert lines[4] == "canary failed: notify.phone: cannot connect to Telegram at 127.0.0.1: connection refused"

        # The failed job event fires the built-in watch, which alerts through the working notifier.
        (alert,) = await until(lambda: sl.messages, what="the alert")
        assert "watchd canary failed: canary failed: notify.phone: cannot connect" in alert["text"]
        status_out = await d.cli("status", "--json")
        explain_out = await d.cli("explain", "watchd-canary-failed", "--json")
        last = json.loads(status_out.stdout)["last_canary"]
        assert (last["ok"], last["failing"], last["path_ok"]) == (False, ["notify.phone"], True)
        assert json.loads(explain_out.stdout)["fired"] is True
        await d.stop()
        for out in (passed.stdout, failed.stdout, status_out.stdout, explain_out.stdout, d.printed(), d.logged()):
            assert "SECRET" not in out and "testhook" not in out  # the bot token, the Slack webhook's path


async def test_canary_from_the_command_line_probes_an_anthropic_agent(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    """Built without the state store, the agent was a stand-in that failed every probe: each
    `watchd canary` failed and alerted every notifier."""
    async with FakeAnthropic() as api:
        d = daemon_factory(
            extra_config=f'[agent.triage]\ntype = "anthropic"\nmodel = "claude-haiku-4-5"\napi_key = "env:AK"\n'
            f'base_url = "{api.url}"\n',
            env={"AK": api.api_key},
        )
        await d.start()
        r = await d.cli_process("canary", "--json")
        report = json.loads(r.stdout)
        probes = {p["target"]: p for p in report["probes"]}
        assert probes["agent.triage"]["ok"], probes["agent.triage"]
        assert r.returncode == 0 and report["ok"] and report["failing"] == [], r.stdout + r.stderr
        await d.stop()


def test_canary_needs_the_daemon(tmp_path: Path) -> None:
    p = Project(tmp_path)
    r = run_cli("canary", "--config", str(p.config_path))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "running daemon" in r.stderr and "watchd run" in r.stderr


AGENT_VERSION = '#!/bin/sh\ncat "$(dirname "$0")/version.txt"\n'


async def test_release_canary_runs_on_a_change_and_not_on_an_unchanged_restart(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    agent = '[agent.claw]\ntype = "command"\ncommand = ["cat"]\nversion = ["./agent-version.sh"]\n'
    d = daemon_factory(extra_config=agent)
    script = d.root / "agent-version.sh"
    script.write_text(AGENT_VERSION)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    (d.root / "version.txt").write_text("claw 1.0\n")

    async def restart(expect: str) -> None:
        if d.daemon is not None:
            await d.stop()
        mark = len(d.logged())
        await d.start()
        await until(lambda: expect in d.logged()[mark:], what=expect)

    def canaries() -> int:
        return len(d.handoffs("watchd-canary"))

    await restart("no good canary recorded yet")  # nothing to compare with: no canary at the first start
    assert (await d.cli_process("canary")).returncode == 0  # the first good canary sets the baseline
    fingerprint = json.loads(d.meta("canary.fingerprint") or "{}")
    assert fingerprint["watchd"] == __version__ and fingerprint["agents"] == {"agent.claw": "claw 1.0"}

    await restart("release canary: nothing changed")
    assert canaries() == 1

    # The agent was upgraded, the last good canary was by an older watchd, and the new config gives the
    # agent a probe that fails: the release canary runs at once, fails, and the built-in watch alerts
    # (on the console, the only notifier). The baseline stays, so the next start tries again.
    (d.root / "version.txt").write_text("claw 1.1\n")
    await d.stop()
    conn = sqlite3.connect(d.db_path)
    with conn:
        conn.execute("UPDATE meta SET v = json_set(v, '$.watchd', '0.0.1') WHERE k = 'canary.fingerprint'")
    conn.close()
    baseline = json.loads(d.meta("canary.fingerprint") or "{}")
    d.write_config(agent + 'probe = ["sh", "-c", "echo model gone; exit 3"]\n')
    await restart(
        f"release canary: watchd 0.0.1 → {__version__}, the config, agent.claw version 'claw 1.0' → 'claw 1.1' changed"
    )
    await until(lambda: "watchd canary failed" in d.printed(), what="the alert on the console")
    assert "agent.claw: probe sh failed with exit 3: model gone" in d.printed()
    assert canaries() == 2 and "release canary: canary failed" in d.logged()
    assert json.loads(d.meta("canary.last") or "{}")["failing"] == ["agent.claw"]
    assert json.loads(d.meta("canary.fingerprint") or "{}") == baseline


def test_canary_line_for_status() -> None:
    assert canary_line(None).startswith("canary: never run")
    assert canary_line({"at": "2027-01-15T08:00:00Z", "ok": True}) == "canary: ok at 2027-01-15T08:00:00Z"
    failed = {"at": "2027-01-15T08:00:00Z", "ok": False, "failing": ["notify.phone"], "path_ok": False}
    assert canary_line(failed) == "canary: FAILED at 2027-01-15T08:00:00Z (the event path, notify.phone)"


def test_fingerprint_changes_in_words() -> None:
    old = {"watchd": "0.1.0", "config": "aaa", "agents": {"agent.a": "1", "agent.b": "2"}}
    assert changes(old, dict(old)) == []
    new = {"watchd": "0.2.0", "config": "bbb", "agents": {"agent.a": "1", "agent.c": "3"}}
    assert changes(old, new) == [
        "watchd 0.1.0 → 0.2.0",
        "the config",
        "agent.b version '2' → '(none)'",
        "agent.c version '(none)' → '3'",
    ]


def test_alert_targets_are_validated_and_builtin_ids_reserved(tmp_path: Path) -> None:
    (tmp_path / "watches").mkdir()
    (tmp_path / "watches" / "w.toml").write_text(
        '[[watch]]\nid = "watchd-canary-failed"\nkind = "match"\non = { subject = "x" }\n'
    )
    cfg = tmp_path / "config.toml"
    cfg.write_text('alert = ["notify.console", "notify.pager"]\n[notify.phone]\ntype = "console"\n')
    with pytest.raises(ConfigError) as caught:
        config.load(cfg)
    problems = caught.value.problems
    assert any(p.startswith(f"{cfg}:1:") and "unknown target 'notify.pager' in alert" in p for p in problems)
    assert any("w.toml:2:" in p and "built-in watches" in p for p in problems), problems

    (tmp_path / "watches" / "w.toml").write_text('[[watch]]\nid = "mine"\nkind = "match"\non = { subject = "x" }\n')
    cfg.write_text('[notify.phone]\ntype = "console"\n[schedule.backup]\ncron = "0 4 * * 0"\njob = "backup"\n')
    loaded = config.load(cfg)
    assert alert_targets(loaded) == ["notify.console"]  # no notifier but consoles: the console
    defs = {d.watch.id: d for d in all_watches(loaded)}
    assert list(defs) == [
        "mine",
        "watchd-canary",
        "watchd-canary-failed",
        "watchd-backup-failed",
        "watchd-backup-missing",
    ]
    missing = defs["watchd-backup-missing"].watch
    assert isinstance(missing, AbsentWatch) and missing.for_ == "7d2h"  # a weekly backup: a week and 2 h
    assert defs["watchd-canary-failed"].watch.then == ["notify.console"] and defs["mine"].file.endswith("w.toml")
    cfg.write_text('[notify.tg]\ntype = "telegram"\ntoken = "x"\nchat_id = "1"\n[schedule.backup]\nenabled = false\n')
    loaded = config.load(cfg)
    assert alert_targets(loaded) == ["notify.tg"]
    assert "watchd-backup-missing" not in {d.watch.id for d in all_watches(loaded)}


async def test_probes_of_command_agents_and_odd_targets(tmp_path: Path) -> None:
    ready = CommandRunner(
        CommandAgent(command=["cat"], probe=["./probe.sh", "--quick"]), name="agent.a", base_dir=tmp_path
    )
    script = tmp_path / "probe.sh"
    script.write_text('#!/bin/sh\necho "checking $1"\necho ready\n')
    script.chmod(0o700)
    missing = CommandRunner(CommandAgent(command=["no-such-agent-xyz"]), name="agent.b")

    class Broken:
        async def probe(self) -> tuple[bool, str]:
            raise RuntimeError("boom")

    probes = await probe_targets({"agent.a": ready, "agent.b": missing, "notify.x": Broken(), "watchd.canary": None})
    assert probes == [
        {"target": "agent.a", "ok": True, "detail": "probe ./probe.sh: exit 0: ready".replace("./", f"{tmp_path}/")},
        {"target": "agent.b", "ok": False, "detail": "command not found: no-such-agent-xyz"},
        {"target": "notify.x", "ok": False, "detail": "probe failed unexpectedly (RuntimeError)"},
    ]
