"""The heartbeat job against a real SQLite state, a virtual clock, a real dispatcher and fake HTTP
servers on loopback: it re-drives only pending work, and pings a dead-man's switch without ever
showing its URL."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support.fakes import FakeServer, FakeWebhook, closed_port_url
from support.handoffs import make_handoff
from support.waiting import until

from watchd import config
from watchd.config import WebhookNotifier as WebhookConfig
from watchd.dispatch import Dispatcher, Target
from watchd.engine import Engine
from watchd.jobs import JobContext, JobResult, heartbeat
from watchd.model import Handoff
from watchd.notify.http_client import HttpClient
from watchd.notify.webhook import WebhookNotifier
from watchd.store import Store, db_path

T0 = 1_800_000_000.0
SECRET_PATH = "/ping/5ec2e7-do-not-leak-4c1d"


@dataclass
class Rig:
    loaded: config.Loaded
    store: Store
    now: float = T0
    wakes: int = 0
    targets: dict[str, Target] = field(default_factory=dict)

    def ctx(self) -> JobContext:
        async def emit(subject: str, data: dict[str, Any]) -> None:
            raise AssertionError(f"the heartbeat publishes nothing itself (got {subject})")

        def wake() -> None:
            self.wakes += 1

        return JobContext(
            name="heartbeat",
            loaded=self.loaded,
            store=self.store,
            clock=lambda: self.now,
            emit=emit,
            targets=self.targets,
            wake_dispatcher=wake,
        )

    async def beat(self) -> JobResult:
        return await heartbeat.run(self.ctx())

    def handoff(self, hid: str, target: str = "notify.hook", at: float | None = None) -> None:
        h = make_handoff(id=hid, target=target, reason="test", fired_at="2027-01-15T08:00:00Z")
        at = self.now if at is None else at
        self.store.commit_step(
            last_seq=None, clock=at, changes=([], [], set()), decisions=[], handoffs=[h], subjects={}, now=at
        )

    def states(self) -> dict[str, str]:
        return dict(self.store.conn.execute("SELECT id, state FROM handoffs").fetchall())


def make_rig(tmp_path: Path, extra: str = "", watches: str | None = None) -> Rig:
    (tmp_path / "watches").mkdir(exist_ok=True)
    if watches:
        (tmp_path / "watches" / "w.toml").write_text(watches)
    path = tmp_path / "config.toml"
    path.write_text(
        f'state_dir = "state"\ntimezone = "UTC"\n{extra}\n'
        '[notify.hook]\ntype = "webhook"\nurl = "http://127.0.0.1:9/hook"\n'
    )
    loaded = config.load(path)
    return Rig(loaded, Store(db_path(loaded.state_dir)))


@pytest.fixture
def rig(tmp_path: Path) -> Any:
    r = make_rig(tmp_path)
    yield r
    r.store.close()


class BatchAgent:
    """A target with batches out (as an anthropic agent in batch mode): `poll_batches` collects them."""

    def __init__(self, results: int = 0) -> None:
        self.results = results
        self.polls = 0

    async def deliver(self, handoff: Handoff) -> Any:
        raise AssertionError("the heartbeat never wakes an agent")

    async def poll_batches(self) -> int:
        self.polls += 1
        return self.results


async def test_nothing_pending_creates_nothing_and_reports_zeros(rig: Rig) -> None:
    agent = BatchAgent()
    rig.targets["agent.batchy"] = agent
    for _ in range(2):
        result = await rig.beat()
        assert result.ok and result.summary == "nothing pending", result
        assert {k: v for k, v in result.data.items() if isinstance(v, int)} == {
            "due_retries": 0,
            "stuck_deliveries": 0,
            "overdue_timers": 0,
            "silent_sources": 0,
            "dead_letters": 0,
            "dead_letters_new": 0,
            "batch_polls": 1,
            "batch_results": 0,
        }
        assert "ping" not in result.data
        rig.now += 300
    assert rig.wakes == 0 and rig.states() == {} and agent.polls == 2
    agent.results = 3
    result = await rig.beat()
    assert result.data["batch_results"] == 3 and result.summary == "3 batch results collected"


async def test_redrives_a_stuck_delivery_and_a_due_retry_and_counts_new_dead_letters(rig: Rig) -> None:
    store = rig.store
    for hid in ("h_stuck", "h_busy", "h_retry", "h_later", "h_dead"):
        rig.handoff(hid)
    store.claim_due(T0)  # all five are `delivering` since T0
    store.finish("h_retry", "retrying", T0 + 1, "500", next_attempt_at=T0 + 60)
    store.finish("h_later", "retrying", T0 + 1, "500", next_attempt_at=T0 + 3600)
    store.finish("h_dead", "dead", T0 + 1, "401")
    lease = heartbeat.lease_s(rig.loaded, "notify.hook")
    rig.now = T0 + lease + 1
    store.finish("h_busy", "delivering", rig.now - 5, None)  # claimed again a moment ago: not stuck
    result = await rig.beat()
    assert result.data["stuck_deliveries"] == 1 and result.data["due_retries"] == 1
    assert result.data["dead_letters"] == 1 and result.data["dead_letters_new"] == 1
    assert rig.states() == {
        "h_stuck": "retrying",
        "h_busy": "delivering",
        "h_retry": "retrying",
        "h_later": "retrying",
        "h_dead": "dead",
    }
    assert rig.wakes == 1
    assert result.summary == "re-drove 1 due retry; re-drove 1 stuck delivery; 1 new dead letter (watchd dlq list)"
    (due,) = store.conn.execute("SELECT next_attempt_at FROM handoffs WHERE id = 'h_stuck'").fetchone()
    assert due == rig.now
    detail = store.conn.execute(
        "SELECT detail FROM transitions WHERE handoff_id = 'h_stuck' ORDER BY id DESC"
    ).fetchone()
    assert detail == ("stuck in delivery past its lease",)
    # The next heartbeat has seen that dead letter already.
    rig.now += 1
    store.finish("h_retry", "delivered", rig.now, None)
    store.finish("h_stuck", "delivered", rig.now, None)
    store.finish("h_busy", "delivered", rig.now, None)
    again = await rig.beat()
    assert again.summary == "nothing pending" and again.data["dead_letters"] == 1 and rig.wakes == 1


async def test_a_stuck_delivery_reaches_the_receiver_through_the_real_dispatcher(
    http: HttpClient, tmp_path: Path
) -> None:
    async with FakeWebhook() as hook:
        r = make_rig(tmp_path)
        r.targets["notify.hook"] = WebhookNotifier(WebhookConfig(url=hook.hook_url), name="notify.hook", http=http)
        dispatcher = Dispatcher(r.store, r.targets)
        stop = asyncio.Event()
        task = asyncio.create_task(dispatcher.run(stop))
        try:
            r.now = time.time()
            await r.store.run(r.handoff, "h_first")  # on the store's own thread, as the daemon writes
            await until(lambda: hook.handoff_ids == ["h_first"])  # the dispatcher is past its start-up recovery

            # A delivery whose outcome was lost 20 minutes ago: nothing but the heartbeat will move it.
            # Made and claimed in one go on the store's thread, so the dispatcher cannot claim it first.
            def lost() -> None:
                r.handoff("h_lost", "notify.hook", r.now - 1200)
                r.store.claim_due(r.now - 1200)

            await r.store.run(lost)
            await asyncio.sleep(0.3)
            assert hook.handoff_ids == ["h_first"]
            result = await heartbeat.run(
                JobContext(
                    name="heartbeat",
                    loaded=r.loaded,
                    store=r.store,
                    clock=lambda: r.now,
                    emit=_no_emit,
                    targets=r.targets,
                    wake_dispatcher=dispatcher.wake,
                )
            )
            assert result.data["stuck_deliveries"] == 1
            await until(lambda: hook.handoff_ids == ["h_first", "h_lost"], timeout_s=1.5)  # woken, not polled
        finally:
            stop.set()
            await task
            r.store.close()


async def test_silent_sources_and_overdue_timers(tmp_path: Path) -> None:
    extra = (
        '[source.gh]\ntype = "webhook"\npath = "/hooks/gh"\nsubject = "github.{header:X-GitHub-Event}"\n'
        'expect_every = "1h"\n'
        '[source.mail]\ntype = "poll"\nurl = "https://mail.example/api"\nevery = "5m"\nexpect_every = "30m"\n'
        'subject = "mail.inbox"\n'
        '[source.chatty]\ntype = "poll"\nurl = "https://x.example"\nsubject = "chatty.page"\n'
    )
    watches = '[[watch]]\nid = "hb"\nkind = "absent"\nexpect = { subject = "hb.ping" }\nfor = "10m"\n'
    r = make_rig(tmp_path, extra, watches)
    try:
        # The engine's state as the daemon left it at T0: the absent watch's timer is due at T0 + 10m.
        engine = Engine("UTC")
        engine.load([(d, 1) for d in r.loaded.watches], T0)
        r.store.commit_step(
            last_seq=None,
            clock=T0,
            changes=engine.take_changes(),
            decisions=[],
            handoffs=[],
            subjects={"github.push": (T0, "http", 1), "other.thing": (T0 - 600, "mail", 1)},
            now=T0,
        )
        first = await r.beat()
        assert first.summary == "nothing pending", first.summary
        r.now = T0 + 45 * 60  # mail (known by the events' source) has said nothing for 55m > 30m
        mid = await r.beat()
        assert [(s["source"], s["silent_s"]) for s in mid.data["silent"]] == [("mail", 55 * 60)]
        assert mid.data["overdue_timers"] == 1 and mid.data["overdue"][0]["watch"] == "hb"
        assert mid.data["overdue"][0]["late_s"] == 35 * 60
        r.now = T0 + 2 * 3600 + 60
        late = await r.beat()
        assert late.data["silent_sources"] == 2 and late.data["overdue_timers"] == 1
        gh = late.data["silent"][0]
        assert gh == {"source": "gh", "last_at": "2027-01-15T08:00:00Z", "silent_s": 7260, "expect_every": "1h"}
        assert "source gh silent for 2h1m" in late.summary and "timer of hb overdue by 1h51m" in late.summary
        assert r.wakes == 0 and r.states() == {}
    finally:
        r.store.close()


async def test_dead_mans_switch_is_pinged_and_its_url_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with FakeServer() as hc:
        url = hc.url + SECRET_PATH
        monkeypatch.setenv("HC_PING_URL", url)
        extra = '[schedule.heartbeat]\nevery = "5m"\njob = "heartbeat"\nping_url = "env:HC_PING_URL"\n'
        r = make_rig(tmp_path, extra)
        try:
            ok = await r.beat()
            assert ok.ok and ok.data["ping"]["ok"] and ok.summary == "nothing pending", ok
            (req,) = hc.requests
            assert (req.method, req.path) == ("GET", SECRET_PATH)
            hc.fail(500, path=SECRET_PATH)
            bad = await r.beat()
            assert not bad.ok and "dead-man's switch ping failed" in bad.summary and "500" in bad.summary
            monkeypatch.setenv("HC_PING_URL", closed_port_url() + SECRET_PATH)
            down = await r.beat()
            assert not down.ok and "connection refused" in down.data["ping"]["detail"]
            monkeypatch.delenv("HC_PING_URL")
            unset = await r.beat()
            assert not unset.ok and "HC_PING_URL is not set" in unset.summary
            shown = [json.dumps(x.data) + x.summary for x in (ok, bad, down, unset)] + [caplog.text]
            assert not any("5ec2e7" in text or "do-not-leak" in text for text in shown), shown
        finally:
            r.store.close()


async def _no_emit(subject: str, data: dict[str, Any]) -> None:
    raise AssertionError(subject)
