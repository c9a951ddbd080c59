"""`watchd source test` of a chat source shows what would be published and takes nothing from the
daemon: Telegram is sent no offset past the saved one (its updates stay for the daemon) and no
press is answered; Slack envelopes are not acknowledged (Slack keeps them for the daemon)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from support.cli import run_cli
from support.fake_telegram import FakeTelegram
from support.project import Project
from support.slack_socket import FakeSlackSocket

TOKEN = "5555:AAdryRunToken"
APP_TOKEN = "xapp-1-A0WATCHD01-1-dryRunToken"


async def test_source_test_of_telegram_confirms_and_answers_nothing(tmp_path: Path) -> None:
    async with FakeTelegram(token=TOKEN) as tg:
        source = f'[source.tg]\ntype = "telegram"\ntoken = "env:TG_DRY"\napi_base = "{tg.url}"\nchats = ["1"]\n'
        project = Project(tmp_path, extra_config=source)
        message = tg.push_message(1, "hello")
        tg.push_callback("ack:h_1", sender_id=1, chat_id=1)
        args = ("source", "test", "tg", "--for", "3s", "--config", str(project.config_path))
        result = await asyncio.to_thread(run_cli, *args, env={"TG_DRY": TOKEN})
        assert result.returncode == 0, result.stderr
        printed = [json.loads(line) for line in result.stdout.splitlines()]
        assert [(e["subject"], e["id"]) for e in printed] == [
            ("chat.message", f"tg-{message}"),
            ("chat.answer", f"tg-{message + 1}"),
        ]  # each once, however many polls
        assert tg.polls >= 2 and tg.confirmed_offset == 0 and len(tg.updates) == 2
        assert tg.callback_answers == []
        assert TOKEN not in result.stdout + result.stderr


async def test_source_test_of_slack_acknowledges_nothing(tmp_path: Path) -> None:
    async with FakeSlackSocket(app_token=APP_TOKEN) as slack:
        project = Project(
            tmp_path,
            extra_config=f'[source.sl]\ntype = "slack"\napp_token = "env:SL_DRY"\napi_base = "{slack.url}/api"\n',
        )
        envelope = await slack.send_message("C1", "U1", "hello", event_id="Ev9")
        args = ("source", "test", "sl", "--for", "2s", "--config", str(project.config_path))
        result = await asyncio.to_thread(run_cli, *args, env={"SL_DRY": APP_TOKEN})
        assert result.returncode == 0, result.stderr
        assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == ["Ev9"]
        assert not slack.acked(envelope) and envelope in slack.pending
