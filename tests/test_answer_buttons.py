"""The answer buttons under Telegram and Slack notifications, and the edit that says who acted,
against the local Bot API and Slack Web API fakes."""

from __future__ import annotations

from support.fake_telegram import FakeTelegram
from support.fakes import FakeSlack

from watchd.config import SlackNotifier as SlackConfig
from watchd.config import TelegramNotifier as TelegramConfig
from watchd.dispatch import Delivered
from watchd.model import Handoff
from watchd.notify.http_client import HttpClient
from watchd.notify.slack import SlackNotifier
from watchd.notify.telegram import TelegramNotifier

HID = "h_0123456789abcdef01234567"  # as long as watchd's own ids


def handoff(trigger: str = "watch") -> Handoff:
    return Handoff(
        id=HID,
        watch="disk-full",
        watch_version=1,
        kind="match",
        key="nas",
        target="notify.phone",
        trigger=trigger,
        reason="disk.full matched",
        fired_at="2026-11-22T12:00:00Z",
    )


async def test_telegram_notification_carries_the_three_buttons_and_is_edited_after_an_answer(http: HttpClient) -> None:
    async with FakeTelegram(token="123:abc") as tg:
        phone = TelegramNotifier(
            TelegramConfig(token="123:abc", chat_id="42", api_base=tg.url), name="notify.phone", http=http
        )
        assert await phone.deliver(handoff()) == Delivered("Telegram message 1")
        (row,) = tg.messages[0]["reply_markup"]["inline_keyboard"]
        assert [(b["text"], b["callback_data"]) for b in row] == [
            ("Ack", f"ack:{HID}"),
            ("Snooze 1h", f"snooze:{HID}"),
            ("Mute 24h", f"mute:{HID}"),
        ]
        assert all(len(b["callback_data"].encode()) <= 64 for b in row)

        assert await phone.edit_answered("42", "1", "🔔 disk-full fired\n\n✅ Acked by telegram user 7") is None
        (edit,) = tg.edits
        assert edit == {"chat_id": "42", "message_id": 1, "text": "🔔 disk-full fired\n\n✅ Acked by telegram user 7"}
        assert "reply_markup" not in edit  # the buttons go: the incident was answered

        refused = await phone.edit_answered("42", "99", "x")  # a message the bot never sent
        assert refused is not None and "message to edit not found" in refused
        assert (
            await phone.edit_answered("42", "not-an-id", "x")
            == "notify.phone: 'not-an-id' is not a Telegram message id"
        )


async def test_buttons_only_for_a_watch_and_only_when_wanted(http: HttpClient) -> None:
    async with FakeTelegram(token="123:abc") as tg:
        cfg = TelegramConfig(token="123:abc", chat_id="42", api_base=tg.url)
        await TelegramNotifier(cfg, http=http).deliver(
            handoff(trigger="schedule")
        )  # a schedule's: no incident to answer
        cfg.buttons = False
        await TelegramNotifier(cfg, http=http).deliver(handoff())
        assert [("reply_markup" in m) for m in tg.messages] == [False, False]


async def test_slack_notification_carries_buttons_and_chat_update_says_who_acted(http: HttpClient) -> None:
    async with FakeSlack(mode="api") as slack:
        cfg = SlackConfig(token=slack.token, channel="C0123", api_base=slack.api_base)
        team = SlackNotifier(cfg, name="notify.team", http=http)
        assert isinstance(await team.deliver(handoff()), Delivered)
        blocks = slack.messages[0]["blocks"]
        actions = next(b for b in blocks if b["type"] == "actions")
        assert [(e["text"]["text"], e["value"]) for e in actions["elements"]] == [
            ("Ack", f"ack:{HID}"),
            ("Snooze 1h", f"snooze:{HID}"),
            ("Mute 24h", f"mute:{HID}"),
        ]
        assert blocks[-1]["type"] == "context"  # the footer stays last
        ts = next(iter(slack.posted_ts))
        assert await team.edit_answered("C0123", ts, "disk-full fired\n\n🔕 Muted by slack user U7") is None
        (update,) = slack.updates
        assert update["channel"] == "C0123" and update["ts"] == ts
        assert "Muted by slack user U7" in update["text"]
        assert all(b["type"] != "actions" for b in update["blocks"])
        missing = await team.edit_answered("C0123", "1.000001", "x")
        assert missing is not None and "message_not_found" in missing


async def test_a_slack_incoming_webhook_cannot_edit_and_says_so(http: HttpClient) -> None:
    async with FakeSlack(mode="webhook") as slack:
        hook = SlackNotifier(SlackConfig(webhook_url=slack.webhook_url), name="notify.team", http=http)
        await hook.deliver(handoff())
        assert any(b["type"] == "actions" for b in slack.messages[0]["blocks"])
        why = await hook.edit_answered("C0123", "1.000001", "x")
        assert why is not None and "cannot edit" in why
        assert slack.updates == []
