"""The telegram source against a local server speaking the Bot API (getUpdates long polling,
answerCallbackQuery): messages become chat.message events, button presses chat.answer events, the
allow-lists drop the rest, the offset persists after the publish, the token never shows."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import pytest
from support.fake_telegram import FakeTelegram
from support.sources import SourceRun
from support.waiting import until

from watchd import bus, config
from watchd.bus import EmbeddedNats
from watchd.errors import ConfigError


async def stream_time(url: str, seq: int) -> float:
    nc = await bus.connect(url, name="watchd-test")
    try:
        msg = await nc.jetstream().get_msg(bus.EVENTS_STREAM, seq)
        return float(datetime.fromisoformat(str(msg.time).replace("Z", "+00:00")).timestamp())
    finally:
        await nc.close()


TOKEN = "424242:AAsecretTOKENvalue"
CHAT = 1001
OWNER = 77


def toml(tg: FakeTelegram, extra: str = 'chats = ["1001"]') -> str:
    return f'type = "telegram"\ntoken = "env:TG_SOURCE_TOKEN"\napi_base = "{tg.url}"\n{extra}\n'


@pytest.fixture(autouse=True)
def token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TG_SOURCE_TOKEN", TOKEN)


async def test_messages_from_allowed_chats_become_events_and_the_rest_is_dropped(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async with FakeTelegram(token=TOKEN) as tg:
        run = await SourceRun(
            nats_server.url, tmp_path, "tg", toml(tg, 'chats = ["1001", "-1002"]\nsenders = ["77", "@Bob_ops"]')
        ).start()
        first = tg.push_message(CHAT, "wake up, disk full", sender_id=OWNER)
        tg.push_message(555, "spam from a stranger's chat", sender_id=OWNER)
        tg.push_message(CHAT, "not a listed sender", sender_id=99)
        alert = {"message_id": 9, "from": {"id": 424242, "is_bot": True, "first_name": "watchd"}, "text": "🔔 disk"}
        reply = tg.push_message(-1002, "on it", sender_id=5, username="bob_ops", chat_type="group", reply_to=alert)
        events = await until(lambda: run.stored(2), what="two events")
        await until(lambda: tg.confirmed_offset == reply + 1, what="the updates confirmed")
        await run.stop()

    assert [e["id"] for e in events] == [f"tg-{first}", f"tg-{reply}"]
    one, two = (e["data"] for e in events)
    assert events[0]["subject"] == "chat.message" and events[0]["source"] == "tg"
    assert one["chat"] == "1001" and one["sender"] == "77" and one["text"] == "wake up, disk full"
    assert one["reply_to"] is None and one["platform"] == "telegram"
    assert two["chat"] == "-1002" and two["sender_username"] == "bob_ops" and two["chat_type"] == "group"
    assert two["reply_to"] == {"message": "9", "sender": "424242", "from_bot": True, "text": "🔔 disk"}
    assert run.health.rejections == {"chat": 1, "sender": 1}
    assert run.position() == {"offset": reply + 1}


async def test_a_button_press_becomes_an_answer_and_is_answered_once_stored(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async with FakeTelegram(token=TOKEN) as tg:
        run = await SourceRun(nats_server.url, tmp_path, "tg", toml(tg, 'chats = ["1001"]\nsenders = ["77"]')).start()
        press = tg.push_callback("snooze:h_3f9a0c", sender_id=OWNER, chat_id=CHAT, message_id=321)
        tg.push_callback("mute:h_3f9a0c", sender_id=99, chat_id=CHAT, message_id=321)  # not in senders
        tg.push_callback("vote:yes", sender_id=OWNER, chat_id=CHAT, message_id=322)  # another bot's button
        events = await until(lambda: run.stored(1))
        await until(lambda: len(tg.callback_answers) == 3, what="three presses answered")
        await run.stop()

    [answer] = events
    assert answer["subject"] == "chat.answer" and answer["id"] == f"tg-{press}"
    assert answer["data"] == {
        "action": "snooze",
        "target": "h_3f9a0c",
        "duration": None,
        "by": "telegram:77",
        "chat": "1001",
        "message": "321",
        "source": "tg",
    }
    answered_at = next(r.at for r in tg.requests if r.path == tg.method_path("answerCallbackQuery"))
    assert await stream_time(nats_server.url, 1) <= answered_at  # the press was stored first
    shown = [a.get("text") for a in tg.callback_answers]
    assert shown == ["Snoozed", "You are not allowed to answer this alert.", None]
    assert run.health.rejections == {"sender": 1}


async def test_a_restart_resumes_at_the_offset_and_a_lost_offset_stores_each_update_once(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async with FakeTelegram(token=TOKEN) as tg:
        run = await SourceRun(nats_server.url, tmp_path, "tg", toml(tg)).start()
        tg.push_message(CHAT, "one")
        await until(lambda: run.stored(1))
        await run.stop()
        tg.push_message(CHAT, "two, while down")
        run = await SourceRun(nats_server.url, tmp_path, "tg", toml(tg)).start()
        await until(lambda: run.stored(2))
        await run.stop()
        assert run.health.duplicates == 0

        # A crash after JetStream stored updates but before their offset was written: Telegram still
        # has them (no later offset confirmed them), they come again and are stored once.
        pending = tg.push_message(CHAT, "three")
        run = await SourceRun(nats_server.url, tmp_path, "tg", toml(tg)).start()
        await until(lambda: run.stored(3))
        await run.stop()
        run.positions.save("tg", {"offset": pending})
        tg.updates = [
            {
                "update_id": pending,
                "message": {"message_id": 50, "chat": {"id": CHAT}, "from": {"id": CHAT}, "date": 1, "text": "three"},
            }
        ]
        run = await SourceRun(nats_server.url, tmp_path, "tg", toml(tg)).start()
        await until(lambda: run.health.duplicates == 1, what="the re-sent update")
        await run.stop()
    events = await run.events()
    assert [e["data"]["text"] for e in events] == ["one", "two, while down", "three"]


async def test_failures_are_retried_and_reported_without_the_token(
    nats_server: EmbeddedNats, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with FakeTelegram(token=TOKEN) as tg:
        tg.fail(502, times=1, path=tg.method_path("getUpdates"))
        run = await SourceRun(nats_server.url, tmp_path, "tg", toml(tg)).start()
        tg.push_message(CHAT, "after the outage")
        await until(lambda: run.stored(1), what="the event after a 502")
        assert run.health.last_error is not None and "502" in run.health.last_error
        await run.stop()

    async with FakeTelegram(token="999:other") as wrong:
        run = await SourceRun(nats_server.url, tmp_path / "w", "tg", toml(wrong)).start()
        await until(lambda: run.task is not None and run.task.done(), what="the source to give up")
        failure = run.failed()
        await run.stop()
    assert failure is not None and "rejected the bot token (401)" in str(failure)
    assert "TG_SOURCE_TOKEN" in getattr(failure, "hint", "")
    assert TOKEN not in caplog.text and TOKEN.split(":")[1] not in str(failure)


def test_validate_wants_an_allow_list_and_telegram_ids(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[source.open]\ntype = "telegram"\ntoken = "env:T"\n'
        '[source.odd]\ntype = "telegram"\ntoken = "env:T"\nchats = ["my group"]\nsenders = ["@ab"]\n'
    )
    with pytest.raises(ConfigError) as exc:
        config.load(path)
    found = [p.replace(str(path), "config.toml") for p in exc.value.problems]
    assert found == [
        'config.toml:1:1: a telegram source needs `chats` (e.g. chats = ["123456"]) or `senders` (user ids)',
        "config.toml:7:1: 'my group' is not a Telegram id (e.g. 123456, -1001234567890) or @username",
        "config.toml:8:1: '@ab' is not a Telegram id (e.g. 123456, -1001234567890) or @username",
    ]


async def test_an_allowed_group_that_became_a_supergroup_is_reported(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    async with FakeTelegram(token=TOKEN) as tg:
        run = await SourceRun(nats_server.url, tmp_path, "tg", toml(tg, 'chats = ["-300"]')).start()
        tg.push_update(
            {
                "message": {
                    "message_id": 1,
                    "from": tg.user(OWNER),
                    "chat": tg.chat(-300, "group", "Ops"),
                    "date": 1,
                    "migrate_to_chat_id": -1001234567890,
                }
            }
        )
        await until(lambda: run.health.last_error, what="the move reported")
        await run.stop()
    assert run.health.last_error == "source tg: chat -300 became a supergroup: add -1001234567890 to `chats`"
    assert await run.events() == []
