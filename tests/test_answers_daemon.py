"""Answers through the running daemon (in-process, real NATS, SQLite and HTTP): the command line
and the HTTP API, repeats until acked on the daemon's clock, what `explain` and `status` show, and a
button press from the chat end to end to the edited message on the local Telegram fake."""

from __future__ import annotations

import json
from collections.abc import Callable

import aiohttp
from support.fake_telegram import FakeTelegram
from support.inprocess import InProcessDaemon
from support.waiting import until

from watchd.model import make_event

DISK = """
[[watch]]
id = "disk-full"
kind = "match"
on = { subject = "disk.full", key = "data.host" }
repeat = "1m"
then = ["notify.console"]
"""


def fired(d: InProcessDaemon, watch: str = "disk-full") -> list[dict]:
    return d.handoffs(watch)


async def test_the_command_line_answers_through_the_daemon_and_explain_and_status_show_it(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = await daemon_factory({"w.toml": DISK}).start()
    await d.publish(make_event("disk.full", {"host": "nas"}))
    await until(lambda: fired(d), what="the first handoff")

    code, out, err = await d.cli("mute", "disk-full", "2h", "--key", "nas")
    assert code == 0, err
    assert out.startswith("disk-full [nas]: muted for key nas by ") and "(command line) until " in out
    assert out.rstrip().endswith("; nothing fires when it ends")

    status = json.loads((await d.cli("status", "--json")).stdout)
    (hold,) = next(w for w in status["watches"] if w["id"] == "disk-full")["holds"]
    assert hold["action"] == "mute" and hold["key"] == "nas" and hold["by"].startswith("cli:")
    assert "disk-full: muted for key nas by " in (await d.cli("status")).stdout

    hid = fired(d)[0]["id"]
    code, out, _ = await d.cli("ack", hid[:8])  # a prefix of the handoff id will do
    assert code == 0 and out.startswith("disk-full [nas]: acked by ") and "(no more repeats)" in out

    explained = json.loads((await d.cli("explain", "disk-full", "--json")).stdout)
    assert explained["verdict"].startswith("muted for key nas by ")
    said = {row["verdict"]: row["reason"] for row in explained["timeline"]}
    assert said["muted"].startswith("muted for key nas by ") and "until" in said["muted"]
    assert said["acked"].startswith("acked by ")
    text = (await d.cli("explain", "disk-full")).stdout
    assert "acked by" in text and "muted for key nas by" in text

    code, out, _ = await d.cli("unmute", "disk-full")
    assert code == 0 and "ended early by" in out
    assert not next(
        w for w in json.loads((await d.cli("status", "--json")).stdout)["watches"] if w["id"] == "disk-full"
    )["holds"]


async def test_unknown_targets_and_bad_durations_are_one_clear_line(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = await daemon_factory({"w.toml": DISK}).start()
    code, out, err = await d.cli("snooze", "disk-ful", "1h")
    assert code == 1 and out == ""
    assert err.splitlines()[0] == "error: no watch or handoff named 'disk-ful'"
    assert "watchd status" in err and "Traceback" not in err
    code, _, err = await d.cli("mute", "disk-full", "soon")
    assert code == 1 and err.startswith("error: ") and "soon" in err.splitlines()[0]
    code, _, err = await d.cli("ack", "h_nothing")
    assert code == 1 and "no watch or handoff named 'h_nothing'" in err
    assert d.decisions("disk-full") == []  # nothing was published, so nothing was decided
    code, _, err = await d.cli("snooze", "--help")
    assert code == 0


async def test_the_command_line_says_so_when_no_daemon_runs(daemon_factory: Callable[..., InProcessDaemon]) -> None:
    d = daemon_factory({"w.toml": DISK})
    code, _, err = await d.cli("ack", "disk-full")
    assert code == 1 and err.startswith("error: no watchd answering on ") and "watchd run" in err


async def test_repeats_come_every_interval_until_acked_on_the_daemons_clock(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = await daemon_factory({"w.toml": DISK}).start()
    await d.publish(make_event("disk.full", {"host": "nas"}))
    await until(lambda: len(fired(d)) == 1, what="the first handoff")
    await d.advance_until(lambda: len(fired(d)) == 3, step_s=30, limit_s=300, what="two repeats")
    reasons = [h["reason"] for h in fired(d)]
    assert reasons[1].startswith("repeat 1, not acked since ") and reasons[2].startswith("repeat 2, ")
    assert len({h["id"] for h in fired(d)}) == 3
    code, _, err = await d.cli("ack", "disk-full", "--key", "nas")
    assert code == 0, err
    await d.advance(600)
    await d.advance(1)
    await until(lambda: d.decisions("disk-full", "acked"), what="the ack")
    await d.settle()  # the engine has looked at the clock ten minutes on
    assert len(fired(d)) == 3  # acked: ten minutes on, no more repeats
    await d.publish(make_event("disk.full", {"host": "nas"}))  # a new incident notifies again
    await until(lambda: len(fired(d)) >= 4, what="the new incident's handoff")
    assert fired(d)[3]["reason"] == "disk.full matched"  # and it repeats in turn, until acked


async def test_the_http_api_takes_a_bearer_token_when_one_is_set(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = await daemon_factory(
        {"w.toml": DISK}, extra_config='token = "env:WATCHD_HTTP_TOKEN"', env={"WATCHD_HTTP_TOKEN": "t0ken-xyz"}
    ).start()
    async with aiohttp.ClientSession() as http:
        url = f"{d.http_url}/api/snooze"
        async with http.post(url, json={"target": "disk-full", "duration": "1h"}) as resp:
            assert resp.status == 401
        bearer = {"Authorization": "Bearer t0ken-xyz"}
        body = {"target": "disk-full", "duration": "30m", "by": "http:ops"}
        async with http.post(url, json=body, headers=bearer) as resp:
            assert resp.status == 200
            answer = await resp.json()
        assert answer["applied"] is True
        (said,) = answer["decisions"]
        assert said["verdict"] == "snoozed" and said["reason"].startswith("snoozed by ops (HTTP API) until ")
        async with http.post(f"{d.http_url}/api/ack", json={"target": "nope"}, headers=bearer) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"] == "no watch or handoff named 'nope'"
        async with http.post(url, json={"target": "disk-full", "duration": "-1h"}, headers=bearer) as resp:
            assert resp.status == 400
        # Who answered is the API's caller: a chat identity cannot be claimed here.
        spoof = {"target": "disk-full", "by": "telegram:42"}
        async with http.post(f"{d.http_url}/api/unmute", json=spoof, headers=bearer) as resp:
            assert "telegram user 42" not in json.dumps(await resp.json())


async def test_the_http_api_wants_json_from_a_tokenless_loopback_caller(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = await daemon_factory({"w.toml": DISK}).start()
    async with aiohttp.ClientSession() as http:
        form = {"target": "disk-full"}
        async with http.post(f"{d.http_url}/api/ack", data=form) as resp:  # what a web page could send
            assert resp.status == 415
        async with http.post(f"{d.http_url}/api/ack", json=form, headers={"Origin": "https://evil.example"}) as resp:
            assert resp.status == 403
        async with http.post(f"{d.http_url}/api/ack", json=form) as resp:
            assert resp.status == 200
    assert [r["verdict"] for r in d.decisions("disk-full")] == ["acked"]


TG_CONFIG = """
[notify.phone]
type = "telegram"
token = "env:TG_TOKEN"
chat_id = "42"
api_base = "{api}"

[source.tg]
type = "telegram"
token = "env:TG_TOKEN"
chats = ["42"]
api_base = "{api}"
"""

TG_WATCH = """
[[watch]]
id = "laptop-alive"
kind = "match"
on = { subject = "laptop.down" }
repeat = "1h"
then = ["notify.phone"]
"""


async def test_a_button_press_from_the_chat_acts_and_edits_the_message(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    async with FakeTelegram(token="123:abc") as tg:
        d = await daemon_factory(
            {"w.toml": TG_WATCH}, extra_config=TG_CONFIG.format(api=tg.url), env={"TG_TOKEN": "123:abc"}
        ).start()
        await d.publish(make_event("laptop.down", {}))
        await until(lambda: tg.messages, what="the notification")
        (button,) = [b for b in tg.messages[0]["reply_markup"]["inline_keyboard"][0] if b["text"] == "Mute 24h"]
        action, _, hid = button["callback_data"].partition(":")
        press = {"action": action, "target": hid, "duration": None, "by": "telegram:7", "chat": "42", "message": "1"}
        await d.publish(make_event("chat.answer", {**press, "source": "tg"}, id="tg-1001"))
        await until(lambda: tg.edits, what="the message to be edited")
        (edit,) = tg.edits
        assert edit["chat_id"] == "42" and edit["message_id"] == 1
        assert edit["text"].startswith(tg.messages[0]["text"])
        assert edit["text"].splitlines()[-1].startswith("🔕 Muted by telegram user 7 until ")
        muted = d.decisions("laptop-alive", "muted")
        assert muted[0]["reason"].startswith("muted by telegram user 7 until ")
        # The same press delivered again is stored once, and acted on once.
        await d.publish(make_event("chat.answer", {**press, "source": "tg"}, id="tg-1001"))
        await d.publish(make_event("chat.answer", {**press, "source": "elsewhere"}, id="tg-1002"))
        await until(lambda: d.decisions("", "rejected"), what="the press from an unknown source to be refused")
        (refused,) = d.decisions("", "rejected")
        assert (
            refused["event_id"] == "tg-1002"
            and "'elsewhere' is not a configured telegram or slack source" in refused["reason"]
        )
        assert len(d.decisions("laptop-alive", "muted")) == 1 and len(tg.edits) == 1
        explained = json.loads((await d.cli("explain", "--event", "tg-1002", "--json")).stdout)
        assert explained["rejected"] is True


SILENCE = """
[[watch]]
id = "nas-alive"
kind = "absent"
expect = { subject = "heartbeat.nas" }
for = "10m"
then = ["notify.console"]
"""


async def test_a_snooze_holds_the_fire_and_the_daemon_hands_it_off_when_the_snooze_ends(
    daemon_factory: Callable[..., InProcessDaemon],
) -> None:
    d = await daemon_factory({"w.toml": SILENCE}).start()
    code, out, err = await d.cli("snooze", "nas-alive", "30m")
    assert code == 0, err
    assert out.startswith("nas-alive: snoozed by ") and out.rstrip().endswith("; then judged again")
    await d.advance_until(lambda: d.decisions("nas-alive", "held"), step_s=60, limit_s=1200, what="the held fire")
    assert fired(d, "nas-alive") == []  # silent for 10m, but snoozed: nothing handed off
    await d.advance_until(lambda: fired(d, "nas-alive"), step_s=60, limit_s=1800, what="the fire after the snooze")
    (h,) = fired(d, "nas-alive")
    assert h["reason"].startswith("still open after the snooze (since ")
    assert "no heartbeat.nas for 10m" in h["reason"]
    assert d.decisions("nas-alive", "snooze_ended")
