"""The README's journal and chat recipes, taken from the README as written, run end to end in the
daemon: a systemd unit fails (journal: the stand-in, and the real journalctl where it can run; also
fed from "another machine" by `watchd source run`), and a Telegram keyword wakes an agent, whose
notification's Snooze button is pressed (a local Bot API)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.fake_telegram import FakeTelegram
from support.inprocess import InProcessDaemon
from support.journal import Journal, journal_backends, make_journal
from support.readme import console_targets, recipe
from support.waiting import until

from watchd import credentials

TOKEN = "123456789:AAtelegramRecipeToken"
CHAT = 123456
OWNER = 42


@pytest.fixture(params=journal_backends())
def journal(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Journal]:
    j = make_journal(request.param, tmp_path / "journal-root")
    j.write(MESSAGE="before watchd started")
    try:
        yield j
    finally:
        j.stop()


async def test_recipe_a_systemd_unit_fails(journal: Journal, daemon_factory: Callable[..., InProcessDaemon]) -> None:
    source, watches = recipe("a systemd unit fails")
    source += f'directory = "{journal.directory}"\n'
    d = daemon_factory({"units.toml": console_targets(watches)}, extra_config=source, env=journal.env)
    await d.start()
    await until(lambda: (d.state_dir / "sources" / "units.json").exists(), what="the source's starting cursor")
    journal.unit_failed("cron.service")  # not one of the units
    journal.unit_failed("nginx.service", "signal")
    await until(lambda: "nginx.service failed (signal) on " in d.printed(), what="the failure handed off")
    assert "cron.service" not in d.printed()


async def test_recipe_a_telegram_keyword_wakes_an_agent_and_snooze_holds_it(
    daemon_factory: Callable[..., InProcessDaemon], tmp_path: Path
) -> None:
    config, watches = recipe("wake an agent when the chat says a keyword, with Ack and Snooze")
    woke = tmp_path / "woke.jsonl"
    agent = [sys.executable, "-c", f"import sys; open({str(woke)!r}, 'a').write(sys.stdin.read() + '\\n')"]
    async with FakeTelegram(token=TOKEN) as tg:
        config = config.replace(
            'token = "env:WATCHD_TELEGRAM_TOKEN"\n', f'token = "env:WATCHD_TELEGRAM_TOKEN"\napi_base = "{tg.url}"\n'
        )
        config = config.replace('["my-agent", "handle", "--stdin"]', json.dumps(agent))
        d = daemon_factory({"chat.toml": watches}, extra_config=config, env={"WATCHD_TELEGRAM_TOKEN": TOKEN})
        await d.start()
        tg.push_message(CHAT, "good morning", sender_id=OWNER)
        tg.push_message(CHAT, "Deploy FAILED on web-1", sender_id=OWNER)
        tg.push_message(999, "deploy failed (a stranger's chat)", sender_id=7)

        await until(lambda: tg.messages, what="the notification")
        await until(lambda: woke.exists() and woke.read_text().strip(), what="the agent woken")
        handoff = json.loads(woke.read_text().splitlines()[0])
        assert handoff["watch"] == "deploy-trouble"
        assert handoff["evidence"][0]["data"]["text"] == "Deploy FAILED on web-1"
        [note] = tg.messages
        assert "Deploy FAILED on web-1" in note["text"]
        buttons = note["reply_markup"]["inline_keyboard"][0]
        assert [b["text"] for b in buttons] == ["Ack", "Snooze 1h", "Mute 24h"]

        # The owner presses Snooze under the notification.
        tg.push_callback(buttons[1]["callback_data"], sender_id=OWNER, chat_id=CHAT, message_id=tg.message_ids[0])
        await until(lambda: tg.edits, what="the notification edited")
        assert [a.get("text") for a in tg.callback_answers] == ["Snoozed"]
        assert "snoozed" in tg.edits[0]["text"].lower() and "42" in tg.edits[0]["text"]
        await until(lambda: d.decisions("deploy-trouble", "snoozed"), what="the snooze recorded")

        # While snoozed, the keyword again is held, not handed off.
        tg.push_message(CHAT, "deploy stuck again", sender_id=OWNER)
        await until(lambda: d.decisions("deploy-trouble", "held"), what="the fire held")
        assert len(tg.messages) == 1

        # `status` shows the source's health: what it stored, and the stranger's chat it dropped.
        status = await d.cli("status", "--json")
        [health] = [s for s in json.loads(status.stdout)["sources"] if s["name"] == "tg"]
        assert health["type"] == "telegram" and health["rejections"] == {"chat": 1}
        assert health["events"] == 4 and health["last_error"] is None
        assert TOKEN not in status.stdout
        assert [line[:1] for line in woke.read_text().splitlines() if line] == ["{"]  # the one handoff


async def test_a_nas_journal_feeds_the_laptop(
    journal: Journal, daemon_factory: Callable[..., InProcessDaemon], tmp_path: Path
) -> None:
    """`watchd source run` on "another machine": the recipe's journal source alone, publishing with
    the laptop's `publish` URL; the laptop's watch hands the unit's failure off."""
    source, watches = recipe("a systemd unit fails")
    d = daemon_factory({"units.toml": console_targets(watches)})
    await d.start()
    creds = credentials.load(d.state_dir)
    assert creds is not None
    url = creds.url(f"nats://127.0.0.1:{d.nats_port}", "publish")
    nas = tmp_path / "nas"
    nas.mkdir()
    (nas / "config.toml").write_text(source + f'directory = "{journal.directory}"\n')
    argv = [sys.executable, "-m", "watchd", "source", "run", "units", "--config", str(nas / "config.toml")]
    env = {k: v for k, v in os.environ.items() if k != "WATCHD_CONFIG"} | journal.env | {"WATCHD_NATS_URL": url}
    runner = await asyncio.create_subprocess_exec(
        *argv, "--state", str(nas / "state"), env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        await until(lambda: (nas / "state" / "units.json").exists(), what="the runner's starting cursor")
        journal.unit_failed("backup.service", "timeout")
        await until(lambda: "backup.service failed (timeout) on " in d.printed(), what="the failure handed off")
    finally:
        runner.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(runner.communicate(), 30)
    assert runner.returncode == 0, err.decode()
    assert url.split("@")[0] not in err.decode()
