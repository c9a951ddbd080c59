"""kill -9 of `watchd run` while its telegram source takes a stream of chat messages from a local
Bot API: after the restarts every message is in the stream once, in order."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable

from support.fakes import FakeTelegram
from support.processes import DaemonProc
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
