"""Release channels and rollback, end to end: the real daemon (in the test's event loop), real NATS and
SQLite, fake Telegram and Slack on loopback, and a fake agent command whose release is whatever
`version.txt` says. Version 2.0 fails its canary: its handoffs are held (pending, no attempt used),
every alert target hears of it once, and a promote, an automatic rollback or a rollback by hand
lets them go."""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from support.fake_telegram import FakeTelegram
from support.fakes import FakeSlack
from support.inprocess import InProcessDaemon
from support.waiting import until

from watchd.agents.release import fingerprint
from watchd.bus import EmbeddedNats
from watchd.config import AnthropicAgent, CommandAgent, NatsAgent
from watchd.model import own_event

TG_TOKEN = "424242:release-SECRET-token"

# The agent: `--version` says its release, `probe` fails for 2.0, `handle` notes which release
# handled which handoff.
AGENT = """#!/bin/sh
dir="$(dirname "$0")"
v="$(cat "$dir/version.txt")"
case "$1" in
  --version) echo "claw $v" ;;
  probe) if [ "$v" = "2.0" ]; then echo "claw $v: cannot load its model"; exit 3; fi; echo "claw $v ready" ;;
  handle) cat > /dev/null; echo "$v $WATCHD_HANDOFF_ID" >> "$dir/handled.txt" ;;
esac
"""
# The rollback: reinstalls 1.0, once `network` exists (so a test can make it fail first).
ROLLBACK = """#!/bin/sh
dir="$(dirname "$0")"
if [ ! -e "$dir/network" ]; then echo "cannot reach the package index"; exit 4; fi
echo 1.0 > "$dir/version.txt"
"""
WATCH = '[[watch]]\nid = "job-done"\nkind = "match"\non = { subject = "job.done" }\nthen = ["agent.claw"]\n'
CLAW = (
    '[agent.claw]\ntype = "command"\ncommand = ["./agent.sh", "handle"]\n'
    'version = ["./agent.sh", "--version"]\nprobe = ["./agent.sh", "probe"]\n'
)


def _script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _project(
    daemon_factory: Callable[..., InProcessDaemon], tg: FakeTelegram, sl: FakeSlack, extra: str = "", **kw: Any
) -> InProcessDaemon:
    d = daemon_factory(
        {"w.toml": WATCH},
        **kw,
        extra_config=CLAW
        + extra
        + f'[notify.phone]\ntype = "telegram"\ntoken = "env:TG_TOKEN"\nchat_id = "42"\napi_base = "{tg.url}"\n'
        + '[notify.team]\ntype = "slack"\nwebhook_url = "env:SLACK_URL"\n',
        env={"TG_TOKEN": TG_TOKEN, "SLACK_URL": sl.webhook_url},
    )
    _script(d.root / "agent.sh", AGENT)
    _script(d.root / "rollback.sh", ROLLBACK)
    (d.root / "version.txt").write_text("1.0\n")
    return d


def handled(d: InProcessDaemon) -> list[str]:
    path = d.root / "handled.txt"
    return path.read_text().splitlines() if path.exists() else []


def record(d: InProcessDaemon) -> dict[str, Any]:
    return json.loads(d.meta("release.agent.claw") or "{}")


async def releases(d: InProcessDaemon) -> dict[str, Any]:
    r = await d.cli("release", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    (row,) = json.loads(r.stdout)
    return dict(row)


async def first_start_on_1_0(d: InProcessDaemon) -> None:
    """Start on 1.0: recorded, canaried in the background (good), and it handles a handoff."""
    await d.start()
    await until(lambda: (record(d).get("last_good") or {}).get("label") == "claw 1.0", what="1.0 as last good")
    await d.publish(own_event("job.done", {"n": 1}, source="test"))
    await until(lambda: handled(d), what="1.0 to handle the first handoff")
    assert handled(d)[0].startswith("1.0 ")


async def restart_on(d: InProcessDaemon, version: str) -> None:
    await d.stop()
    (d.root / "version.txt").write_text(f"{version}\n")
    await d.start()
    await until(lambda: record(d).get("checked_at") and not d.running.releases.checking, what="the release check")


def alerts(tg: FakeTelegram, sl: FakeSlack) -> list[str]:
    return [m["text"] for m in tg.messages if "release" in m["text"]] + [
        m["text"] for m in sl.messages if "release" in m["text"]
    ]


async def test_a_failed_release_holds_its_handoffs_alerts_once_and_a_promote_releases_them(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    async with FakeTelegram(token=TG_TOKEN) as tg, FakeSlack("webhook") as sl:
        d = _project(daemon_factory, tg, sl)
        await first_start_on_1_0(d)
        assert alerts(tg, sl) == []

        await restart_on(d, "2.0")  # the upgrade: 2.0's canary fails
        rec = record(d)
        assert rec["current"]["label"] == "claw 2.0" and rec["last_good"]["label"] == "claw 1.0"
        assert rec["held"]["reason"] == f"probe {d.root}/agent.sh failed with exit 3: claw 2.0: cannot load its model"
        # Every alert target (the two notifiers) hears of it once, with the old and the new release.
        (tg_alert, sl_alert) = await until(lambda: len(alerts(tg, sl)) == 2 and alerts(tg, sl), what="the alerts")
        for text in (tg_alert, sl_alert):
            assert "agent.claw: release claw 2.0 [" in text and "the last good was claw 1.0 [" in text
            assert "watchd release promote|rollback agent.claw" in text

        # A handoff to the held agent waits: pending, release_failed, its first attempt not used up.
        await d.publish(own_event("job.done", {"n": 2}, source="test"))
        h = await until(
            lambda: [h for h in d.handoffs("job-done") if h["state"] == "pending" and h["last_error"]],
            what="the held handoff",
        )
        (held,) = h
        assert held["last_error"].startswith("release_failed: agent.claw's release claw 2.0 [")
        assert held["attempt"] == 1 and len(handled(d)) == 1
        row = await releases(d)
        assert row["held"]["new"]["label"] == "claw 2.0" and row["held"]["old"]["label"] == "claw 1.0"
        assert row["held_handoffs"] == 1
        text = (await d.cli("release")).stdout
        assert "agent.claw: HELD" in text and "1 handoffs waiting (release_failed)" in text
        async with aiohttp.ClientSession() as http, http.get(d.http_url + "/maintenance") as page:
            html = await page.text()
        assert page.status == 200 and "<td>agent.claw</td>" in html and '<span class="bad">held</span>' in html
        assert "1 handoffs waiting" in html and "claw 2.0" in html and "claw 1.0" in html
        status = json.loads((await d.cli("status", "--json")).stdout)
        (h_status,) = status["held_releases"]
        assert (h_status["agent"], h_status["held_handoffs"]) == ("agent.claw", 1)
        assert h_status["release"].startswith("claw 2.0 [")
        status_text = " ".join((await d.cli("status")).stdout.split())
        assert "release: agent.claw HELD since " in status_text and "1 handoff waiting" in status_text
        explained = json.loads((await d.cli("explain", "job-done", "--json")).stdout)
        verdict = explained["verdict"]
        assert f"{held['id']} pending for agent.claw, held: agent.claw's new release failed its canary" in verdict

        # Time passes and watchd restarts on the same release: it stays held, is not alerted again,
        # and the handoff has still used no attempt.
        await d.advance(700)
        await restart_on(d, "2.0")
        await d.advance(700)
        (again,) = [x for x in d.handoffs("job-done") if x["id"] == held["id"]]
        assert (again["state"], again["attempt"]) == ("pending", 1)
        assert len(alerts(tg, sl)) == 2 and len(handled(d)) == 1

        # Promoted by hand: 2.0 is good now, and the held handoff goes to it at once.
        promoted = await d.cli("release", "promote", "claw")
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr
        assert "agent.claw: promoted by cli:" in promoted.stdout
        await until(lambda: len(handled(d)) == 2, what="the released handoff")
        assert handled(d)[1] == f"2.0 {held['id']}"
        row = await releases(d)
        assert row["held"] is None and row["last_good"]["label"] == "claw 2.0" and row["held_handoffs"] == 0
        assert json.loads((await d.cli("status", "--json")).stdout)["held_releases"] == []
        assert [c["what"] for c in row["history"]] == ["seen", "canary_passed", "changed", "canary_failed", "promoted"]
        for out in (d.logged(), d.printed(), json.dumps(row)):
            assert "SECRET" not in out


async def test_a_failed_release_is_rolled_back_and_canaried_in_turn(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    async with FakeTelegram(token=TG_TOKEN) as tg, FakeSlack("webhook") as sl:
        d = _project(daemon_factory, tg, sl, 'rollback = ["./rollback.sh"]\n')
        (d.root / "network").touch()
        await first_start_on_1_0(d)

        await restart_on(d, "2.0")  # fails its canary; the rollback reinstalls 1.0, whose canary passes
        rec = record(d)
        assert rec["held"] is None and rec["current"]["label"] == rec["last_good"]["label"] == "claw 1.0"
        assert [c["what"] for c in rec["history"]][-3:] == ["changed", "canary_failed", "rolled_back"]
        (alert, _) = await until(lambda: len(alerts(tg, sl)) == 2 and alerts(tg, sl), what="the alerts")
        assert "release claw 2.0 [" in alert and "Rolled back (automatic) to claw 1.0 [" in alert
        await d.publish(own_event("job.done", {"n": 2}, source="test"))
        await until(lambda: len(handled(d)) == 2, what="1.0 to handle the next handoff")
        assert handled(d)[1].startswith("1.0 ")


async def test_a_rollback_that_fails_keeps_the_hold_and_one_by_hand_releases_it(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    async with FakeTelegram(token=TG_TOKEN) as tg, FakeSlack("webhook") as sl:
        d = _project(daemon_factory, tg, sl, 'rollback = ["./rollback.sh"]\n')
        await first_start_on_1_0(d)

        await restart_on(d, "2.0")  # no network: the rollback fails, the agent stays held
        rec = record(d)
        assert rec["held"]["rollback"] == "rollback ./rollback.sh failed with exit 4: cannot reach the package index"
        (alert, _) = await until(lambda: len(alerts(tg, sl)) == 2 and alerts(tg, sl), what="the alerts")
        assert "The rollback did not help: rollback ./rollback.sh failed with exit 4" in alert
        await d.publish(own_event("job.done", {"n": 2}, source="test"))
        await until(lambda: [h for h in d.handoffs("job-done") if h["state"] == "pending"], what="the held handoff")

        failed = await d.cli("release", "rollback", "claw")  # still no network: it says so, exit 1
        assert failed.returncode == 1 and "The rollback did not help" in failed.stdout
        # the same from the dashboard: a form with its CSRF token (and refused without one)
        async with aiohttp.ClientSession() as http:
            async with http.get(d.http_url + "/maintenance") as page:
                html = await page.text()
            form = 'action="/actions/releases/agent.claw/rollback"'
            assert form in html
            csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
            assert csrf is not None
            url = d.http_url + "/actions/releases/agent.claw/rollback"
            async with http.post(url, data={}, allow_redirects=False) as refused:
                assert refused.status == 403
            async with http.post(url, data={"csrf": csrf.group(1)}, allow_redirects=False) as done:
                assert done.status == 303 and "did%20not%20help" in done.headers["Location"]

        (d.root / "network").touch()
        rolled = await d.cli("release", "rollback", "claw")
        assert rolled.returncode == 0, rolled.stdout + rolled.stderr
        assert "Rolled back (cli:" in rolled.stdout and ") to claw 1.0 [" in rolled.stdout
        await until(lambda: len(handled(d)) == 2, what="the released handoff")
        assert handled(d)[1].startswith("1.0 ")
        assert len(alerts(tg, sl)) == 2  # the rollbacks by hand alert nobody

        unknown = await d.cli("release", "promote", "nobody")
        assert unknown.returncode == 1 and "no agent agent.nobody in the config" in unknown.stderr


async def test_a_stable_command_serves_while_the_new_release_is_held(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    async with FakeTelegram(token=TG_TOKEN) as tg, FakeSlack("webhook") as sl:
        d = _project(daemon_factory, tg, sl, 'stable_command = ["./stable.sh"]\n')
        _script(d.root / "stable.sh", '#!/bin/sh\necho "stable" >> "$(dirname "$0")/handled.txt"\n')
        await first_start_on_1_0(d)

        await restart_on(d, "2.0")
        rec = record(d)
        assert rec["held"]["new"]["label"] == "claw 2.0" and rec["current"]["channel"] == "stable"
        await d.publish(own_event("job.done", {"n": 2}, source="test"))
        await until(lambda: len(handled(d)) == 2, what="the stable command")
        assert handled(d)[1] == "stable"
        await restart_on(d, "2.0")  # after a restart the stable command still serves
        await d.publish(own_event("job.done", {"n": 3}, source="test"))
        await until(lambda: len(handled(d)) == 3, what="the stable command again")
        assert handled(d)[2] == "stable" and len(alerts(tg, sl)) == 2

        await restart_on(d, "2.1")  # a fixed release passes its canary: back on the release channel
        assert record(d)["held"] is None and record(d)["last_good"]["label"] == "claw 2.1"
        await d.publish(own_event("job.done", {"n": 4}, source="test"))
        await until(lambda: len(handled(d)) == 4, what="2.1")
        assert handled(d)[3].startswith("2.1 ")


async def test_a_reload_checks_a_changed_agent_before_its_next_handoff(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    async with FakeTelegram(token=TG_TOKEN) as tg, FakeSlack("webhook") as sl:
        d = _project(daemon_factory, tg, sl)
        await first_start_on_1_0(d)
        # Upgraded under the running daemon, then a reload (SIGHUP, or a changed file): no restart needed.
        (d.root / "version.txt").write_text("2.0\n")
        assert await d.running.reload()
        await until(lambda: record(d).get("held"), what="the hold after the reload")
        await d.publish(own_event("job.done", {"n": 2}, source="test"))
        await until(lambda: [h for h in d.handoffs("job-done") if h["state"] == "pending"], what="the held handoff")
        assert len(handled(d)) == 1 and len(await until(lambda: len(alerts(tg, sl)) == 2 and alerts(tg, sl))) == 2
        assert [c["what"] for c in record(d)["history"]][-2:] == ["changed", "canary_failed"]
        assert "(reload)" in record(d)["history"][-2]["detail"]

        # The API refuses what it cannot act on, in words, and changes nothing.
        async with aiohttp.ClientSession() as http:
            url = d.http_url + "/api/release"
            async with http.post(url, json={"agent": "claw", "action": "explode"}) as r:
                assert (r.status, (await r.json())["error"]) == (400, '`action` must be "promote" or "rollback"')
            async with http.post(url, data="agent=claw&action=promote") as r:
                assert r.status == 415
            async with http.post(url, json={"agent": "claw", "action": "rollback"}) as r:
                body = await r.json()
                assert r.status == 409 and body["error"] == "agent.claw has neither `rollback` nor `stable_command`"
        assert record(d)["held"] is not None


async def test_on_a_nats_of_ones_own_the_deployments_queue_holds_the_handoff_too(
    nats_server: EmbeddedNats, daemon_factory: Callable[..., InProcessDaemon]
) -> None:
    async with FakeTelegram(token=TG_TOKEN) as tg, FakeSlack("webhook") as sl:
        d = _project(daemon_factory, tg, sl, '[cluster]\ntakeover = "3s"\n', nats_url=nats_server.url)
        await first_start_on_1_0(d)  # delivered from the HANDOFFS queue
        await restart_on(d, "2.0")
        await d.publish(own_event("job.done", {"n": 2}, source="test"))
        (held,) = await until(
            lambda: [h for h in d.handoffs("job-done") if h["state"] == "pending" and h["last_error"]],
            what="the held handoff",
        )
        assert held["last_error"].startswith("release_failed: agent.claw's release claw 2.0 [")
        assert held["attempt"] == 1 and len(handled(d)) == 1


async def test_fingerprints_tell_releases_apart(tmp_path: Path) -> None:
    a = AnthropicAgent(model="claude-haiku-4-5", instructions="triage")
    b = AnthropicAgent(model="claude-haiku-4-5", instructions="triage, gently")
    fa, fb = await fingerprint(a, tmp_path), await fingerprint(b, tmp_path)
    assert fa is not None and fb is not None and fa.digest != fb.digest
    assert fa.label.startswith("claude-haiku-4-5, instructions ")
    assert await fingerprint(NatsAgent(), tmp_path) is None  # nothing of it runs here
    cat = await fingerprint(CommandAgent(command=["cat"]), tmp_path)
    assert cat is not None and cat.parts["binary"].endswith("/cat") and len(cat.parts["sha256"]) == 12
    missing = await fingerprint(CommandAgent(command=["no-such-agent-xyz"]), tmp_path)
    assert missing is not None and missing.label == "not found: no-such-agent-xyz"
