"""kill -9 of `watchd run` while its telegram or slack source takes a stream of chat messages from a
local Bot API or Socket Mode server: after the restarts every message is in the stream once."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable

from support.fake_telegram import FakeTelegram
from support.processes import DaemonProc
from support.slack_socket import FakeSlackSocket
from support.sources import stored_ids
from support.waiting import wait_until

TOKEN = "8080:AAkillNineToken"
MESSAGES = 240


def test_kill_9_while_telegram_messages_arrive(process_factory: Callable[..., DaemonProc], subreaper: None) -> None:
    seed = int(os.environ.get("WATCHD_TEST_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    with FakeTelegram(token=TOKEN).threaded() as tg:
        source = f'[source.tg]\ntype = "telegram"\ntoken = "env:TG_KILL"\napi_base = "{tg.url}"\nchats = ["5"]\n'
        d = process_factory(extra_config=source, env={"TG_KILL": TOKEN})
        d.start()
        sent: list[int] = []
        kills = sorted(rng.sample(range(20, MESSAGES - 20), 3))
        for n in range(MESSAGES):
            sent.append(tg.threadsafe(tg.push_message, 5, f"message {n}"))
            if n in kills:
                time.sleep(rng.uniform(0.0, 0.3))  # the kill lands before, during or after a publish
                d.kill9()
                d.start()
            elif n % 20 == 0:
                time.sleep(0.05)

        def ids() -> list[str]:
            return asyncio.run(stored_ids(d.nats_url, "chat.>"))

        wait_until(lambda: len(ids()) >= MESSAGES, 60, f"every message stored (seed {seed})")
        time.sleep(0.5)  # anything sent twice would land now
        assert ids() == [f"tg-{u}" for u in sent], f"seed {seed}"


def test_kill_9_while_slack_messages_arrive(process_factory: Callable[..., DaemonProc], subreaper: None) -> None:
    seed = int(os.environ.get("WATCHD_TEST_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    app_token = "xapp-1-A0WATCHD01-1-killNine"
    with FakeSlackSocket(app_token=app_token).threaded() as slack:
        source = f'[source.sl]\ntype = "slack"\napp_token = "env:SL_KILL"\napi_base = "{slack.url}/api"\n'
        d = process_factory(extra_config=source, env={"SL_KILL": app_token})
        d.start()
        wait_until(lambda: slack.threadsafe(lambda: slack.live is not None), 30, "the socket")
        sent = [f"Ev{n:05d}" for n in range(MESSAGES)]
        kills = sorted(rng.sample(range(20, MESSAGES - 20), 3))
        for n, event_id in enumerate(sent):
            slack.threadsafe(slack.send_message, "C0OPS", "U1", f"message {n}", event_id=event_id)
            if n in kills:
                time.sleep(rng.uniform(0.0, 0.3))
                d.kill9()
                d.start()  # Slack sends what was not acknowledged on the new socket
            elif n % 20 == 0:
                time.sleep(0.05)

        def ids() -> list[str]:
            return asyncio.run(stored_ids(d.nats_url, "chat.>"))

        wait_until(lambda: len(set(ids())) >= MESSAGES, 60, f"every message stored (seed {seed})")
        wait_until(lambda: slack.threadsafe(lambda: not slack.pending), 30, "every envelope acknowledged")
        found = ids()
        assert sorted(found) == sent and len(found) == MESSAGES, f"seed {seed}"
