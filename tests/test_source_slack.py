"""The slack source against a local Socket Mode server (apps.connections.open, the WebSocket,
envelopes and acks): messages become chat.message events, watchd's button presses chat.answer
events, each envelope is acknowledged once stored, `disconnect` reconnects, the token never shows."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from support.slack_socket import FakeSlackSocket
from support.sources import SourceRun
from support.waiting import until

from watchd import config
from watchd.bus import EmbeddedNats
from watchd.errors import ConfigError

APP_TOKEN = "xapp-1-A0WATCHD01-1-s3cr3tAppToken"


def toml(slack: FakeSlackSocket, extra: str = 'channels = ["C0OPS"]') -> str:
    return f'type = "slack"\napp_token = "env:SLACK_SOURCE_APP_TOKEN"\napi_base = "{slack.url}/api"\n{extra}\n'


@pytest.fixture(autouse=True)
def token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_SOURCE_APP_TOKEN", APP_TOKEN)


async def test_channel_messages_become_events_acked_once_stored(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    async with FakeSlackSocket(app_token=APP_TOKEN) as slack:
        run = await SourceRun(
            nats_server.url, tmp_path, "sl", toml(slack, 'channels = ["C0OPS"]\nsenders = ["U1"]')
        ).start()
        await slack.wait_connected()
        ok = await slack.send_message("C0OPS", "U1", "deploy is stuck", event_id="Ev0001")
        other_channel = await slack.send_message("C0RANDOM", "U1", "lunch?")
        other_sender = await slack.send_message("C0OPS", "U9", "me too")
        bot = await slack.send_message("C0OPS", "U1", "🔔 alert", bot_id="B0WATCHD")
        reply = await slack.send_message("C0OPS", "U1", "looking", thread_ts="1700000000.000100", event_id="Ev0002")
        await until(lambda: all(slack.acked(e) for e in (ok, other_channel, other_sender, bot, reply)), what="acks")
        events = await until(lambda: run.stored(2))
        await run.stop()

    assert [e["id"] for e in events] == ["Ev0001", "Ev0002"]
    first, second = (e["data"] for e in events)
    assert events[0]["subject"] == "chat.message" and events[0]["source"] == "sl"
    assert first["chat"] == "C0OPS" and first["sender"] == "U1" and first["text"] == "deploy is stuck"
    assert first["reply_to"] is None and first["platform"] == "slack"
    assert second["reply_to"] == {"message": "1700000000.000100"}
    assert run.health.rejections == {"chat": 1, "sender": 1}


async def test_a_button_press_becomes_an_answer(
    nats_server: EmbeddedNats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLACK_SOURCE_BOT_TOKEN", "xoxb-source-bot")
    async with FakeSlackSocket(app_token=APP_TOKEN, bot_token="xoxb-source-bot") as slack:
        extra = 'senders = ["U1"]\nbot_token = "env:SLACK_SOURCE_BOT_TOKEN"'
        run = await SourceRun(nats_server.url, tmp_path, "sl", toml(slack, extra)).start()
        await slack.wait_connected()
        press = await slack.send_block_action("mute:h_77aa", user="U1", channel="C0OPS", message_ts="1700000001.000200")
        stranger = await slack.send_block_action("ack:h_77aa", user="U9", channel="C0OPS")
        other_app = await slack.send_block_action("approve:42", user="U1", channel="C0OPS")
        await until(lambda: all(slack.acked(e) for e in (press, stranger, other_app)), what="acks")
        events = await until(lambda: run.stored(1))
        await run.stop()
    [answer] = events
    assert answer["subject"] == "chat.answer" and answer["id"].startswith("slack-")
    assert answer["data"] == {
        "action": "mute",
        "target": "h_77aa",
        "duration": None,
        "by": "slack:U1",
        "chat": "C0OPS",
        "message": "1700000001.000200",
        "source": "sl",
    }
    assert run.health.rejections == {"sender": 1}
    # The stranger alone is told the press did nothing.
    assert slack.ephemerals == [{"channel": "C0OPS", "user": "U9", "text": "You are not allowed to answer this alert."}]


async def test_disconnect_reconnects_and_a_resent_envelope_is_stored_once(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async with FakeSlackSocket(app_token=APP_TOKEN) as slack:
        # Sent before the app is connected: Slack keeps it and sends it on the next socket.
        waiting = await slack.send_message("C0OPS", "U1", "sent while away", event_id="Ev0100")
        run = await SourceRun(nats_server.url, tmp_path, "sl", toml(slack)).start()
        await until(lambda: slack.acked(waiting), what="the held envelope acked")
        await slack.disconnect("refresh_requested")
        await until(lambda: len(slack.connections) == 2 and slack.live is not None, what="a new socket")
        after = await slack.send_message("C0OPS", "U1", "after the refresh", event_id="Ev0101")
        # Slack re-sends an event whose ack it lost; its event_id stores it once.
        again = await slack.send_message("C0OPS", "U1", "after the refresh", event_id="Ev0101")
        await until(lambda: slack.acked(after) and slack.acked(again), what="acks")
        await until(lambda: run.health.duplicates == 1, what="the re-send seen as a duplicate")
        await run.stop()
    events = await run.events()
    assert [e["id"] for e in events] == ["Ev0100", "Ev0101"]


async def test_a_wrong_app_token_stops_the_source_without_showing_it(
    nats_server: EmbeddedNats, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with FakeSlackSocket(app_token="xapp-1-the-right-one") as slack:
        run = await SourceRun(nats_server.url, tmp_path, "sl", toml(slack)).start()
        await until(lambda: run.task is not None and run.task.done(), what="the source to give up")
        failure = run.failed()
        await run.stop()
    assert failure is not None and "Slack refused the app token (invalid_auth)" in str(failure)
    assert "SLACK_SOURCE_APP_TOKEN" in getattr(failure, "hint", "")
    assert APP_TOKEN not in caplog.text


def test_validate_wants_an_app_token_and_slack_ids(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[source.sl]\ntype = "slack"\napp_token = "xoxb-123-bot"\nchannels = ["#ops", "C0123ABCD"]\n'
        'senders = ["@ann"]\n'
    )
    with pytest.raises(ConfigError) as exc:
        config.load(path)
    found = [p.replace(str(path), "config.toml") for p in exc.value.problems]
    assert found == [
        "config.toml:3:1: `app_token` must be an app-level token (xapp-…, with connections:write); "
        "a bot token (xoxb-…) cannot open Socket Mode",
        "config.toml:4:1: '#ops' is not a Slack id (e.g. C0123ABCD): Slack events name them by id",
        "config.toml:5:1: '@ann' is not a Slack id (e.g. U024BE7LH): Slack events name them by id",
    ]


async def test_a_dropped_socket_is_opened_again(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    async with FakeSlackSocket(app_token=APP_TOKEN) as slack:
        run = await SourceRun(nats_server.url, tmp_path, "sl", toml(slack)).start()
        await slack.wait_connected()
        await slack.drop()  # no disconnect message: the network failed
        await until(lambda: len(slack.connections) == 2 and slack.live is not None, what="a new socket")
        env = await slack.send_message("C0OPS", "U1", "still here", event_id="Ev0300")
        await until(lambda: slack.acked(env))
        await run.stop()
    assert [e["id"] for e in await run.events()] == ["Ev0300"]
    assert run.health.last_error is not None and "closed" in run.health.last_error
