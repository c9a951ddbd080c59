"""kill -9 of the daemon while its sources work (real processes): nothing lost, nothing published
twice. A source's position is saved only after JetStream stored its events, and its event ids are
deterministic, so what a killed daemon published but did not record is re-sent and stored once."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.client
import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from support.processes import DaemonProc
from support.project import stream_events
from support.waiting import wait_until


def events_of(d: DaemonProc, source: str) -> list[dict[str, Any]]:
    return [e for e in asyncio.run(stream_events(d.nats_url)) if e.get("source") == source]


def test_kill9_during_a_burst_of_files(process_factory: Callable[..., DaemonProc], subreaper: None) -> None:
    seed = int(os.environ.get("WATCHD_TEST_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    extra = '[source.drop]\ntype = "file"\npaths = ["drop/*.dat"]\nsubject = "files.drop"\ndebounce = "50ms"\n'
    d = process_factory(extra_config=extra)
    drop = d.root / "drop"
    drop.mkdir()
    d.start()
    wait_until(lambda: (d.state_dir / "sources" / "drop.json").exists(), what="the first scan")
    written: list[str] = []
    for cycle in range(3):
        for i in range(120):
            path = drop / f"c{cycle}-{i:03d}.dat"
            path.write_text(f"{cycle} {i}")
            written.append(str(path))
            if i % 20 == 0:
                time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.4))  # the kill lands while the batch is published, or after
        d.kill9()
        for i in range(10):  # and more arrive while it is down
            path = drop / f"down{cycle}-{i}.dat"
            path.write_text("while down")
            written.append(str(path))
        d.start()

    def all_in() -> bool:
        return len(events_of(d, "drop")) >= len(written)

    wait_until(all_in, timeout_s=60, what=f"every file announced (seed {seed})")
    time.sleep(0.5)  # anything doubled would arrive now
    created = Counter(e["data"]["path"] for e in events_of(d, "drop") if e["data"]["event"] == "created")
    assert sorted(created) == sorted(written), f"seed {seed}"
    assert set(created.values()) == {1}, f"announced twice (seed {seed}): {[p for p, n in created.items() if n > 1]}"


def test_kill9_while_polling(process_factory: Callable[..., DaemonProc], subreaper: None, tmp_path: Path) -> None:
    seed = int(os.environ.get("WATCHD_TEST_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    value = tmp_path / "version.txt"

    def publish_version(v: int) -> None:  # atomically: a poll never reads a half-written file
        part = value.with_suffix(".part")
        part.write_text(str(v))
        part.replace(value)

    publish_version(0)
    extra = (
        f'[source.ver]\ntype = "poll"\ncommand = ["{sys.executable}", "-c", '
        f'"print(open(\'{value}\').read())"]\nevery = "1s"\nsubject = "app.version"\n'
    )
    d = process_factory(extra_config=extra)
    d.start()
    wait_until(lambda: (d.state_dir / "sources" / "ver.json").exists(), what="the first poll")
    version = 0
    for _ in range(4):
        version += 1
        publish_version(version)
        time.sleep(rng.uniform(0.3, 1.6))  # the kill lands before, during or after the poll sees it
        d.kill9()
        if rng.random() < 0.5:
            version += 1  # and a change while it is down
            publish_version(version)
        d.start()
    final = version + 1
    publish_version(final)
    wait_until(
        lambda: any(e["data"]["current"].strip() == str(final) for e in events_of(d, "ver")),
        timeout_s=30,
        what=f"the last version announced (seed {seed})",
    )
    time.sleep(1.5)
    events = events_of(d, "ver")
    chain = [(e["data"]["previous"].strip(), e["data"]["current"].strip()) for e in events]
    currents = [int(c) for _, c in chain]
    assert currents == sorted(set(currents)), f"a version announced twice or out of order (seed {seed}): {chain}"
    # Each change starts where the one before ended: no change between two announced values was lost.
    assert all(chain[i][0] == chain[i - 1][1] for i in range(1, len(chain))), f"seed {seed}: {chain}"
    assert chain[0][0] == "0" and currents[-1] == final


def test_kill9_while_webhooks_arrive(process_factory: Callable[..., DaemonProc], subreaper: None) -> None:
    """A sender that retries until it gets a 2xx (GitHub redelivers the same X-GitHub-Delivery): a
    kill -9 in the middle of a stream of deliveries loses none, and a delivery the daemon stored
    before it died but never answered is stored once when it comes again."""
    secret = "kill9-webhook-secret"
    extra = (
        '[source.github]\ntype = "webhook"\npath = "/hooks/github"\n'
        'subject = "github.{header:X-GitHub-Event}"\nverify = "github"\nsecret = "env:GH_SECRET"\n'
    )
    d = process_factory(extra_config=extra, env={"GH_SECRET": secret})
    d.start()
    ok_count = [0]

    def deliver(n: int) -> bool:
        body = json.dumps({"action": "opened", "number": n}).encode()
        headers = {
            "Content-Type": "application/json",
            "X-GitHub-Event": "pull_request",
            "X-GitHub-Delivery": f"kill9-{n}",
            "X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
        }
        try:
            conn = http.client.HTTPConnection("127.0.0.1", d.http_port, timeout=5)
            conn.request("POST", "/hooks/github", body, headers)
            ok = conn.getresponse().status == 200
            conn.close()
            ok_count[0] += ok  # a race between threads only blurs when the kill lands
            return ok
        except OSError:
            return False  # the daemon was killed under it: the sender will redeliver

    deliveries = list(range(600))
    with ThreadPoolExecutor(8) as pool:
        sending = pool.map(deliver, deliveries)
        wait_until(lambda: ok_count[0] >= 40, what="the first deliveries stored")
        d.kill9()
        answered = dict(zip(deliveries, sending, strict=True))
    assert 0 < sum(answered.values()) < len(deliveries), "the kill must land among the deliveries"
    d.start()
    for n in [n for n, ok in answered.items() if not ok]:  # the sender's redeliveries
        assert deliver(n), f"delivery {n} refused after the restart"
    stored = Counter(e["id"] for e in events_of(d, "github"))
    assert sorted(stored) == sorted(f"kill9-{n}" for n in deliveries), "a delivery was lost"
    assert set(stored.values()) == {1}, f"stored twice: {[i for i, k in stored.items() if k > 1]}"
