"""The anthropic agent inside the real daemon: a run killed with SIGKILL mid-step resumes after its last
completed step on restart — no model call repeated for a completed step, no side effect twice — and the
follow-up watch it created is loaded into the engine. Then `watchd runs` and `watchd status` report it."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from support.fake_anthropic import FakeAnthropic, Turn, tool_use
from support.processes import DaemonProc
from support.waiting import wait_until

from watchd.model import make_event

WATCHES = {
    "mail.toml": """
[[watch]]
id = "urgent-mail"
kind = "match"
on = { subject = "mail.received" }
then = ["agent.triage"]
"""
}


def agent_config(url: str) -> str:
    return f"""
[agent.triage]
type = "anthropic"
model = "claude-haiku-4-5"
api_key = "env:WATCHD_TEST_ANTHROPIC_KEY"
base_url = "{url}"
instructions = "Triage urgent mail."
tools = ["notify.console", "emit", "watch"]
max_steps = 6
timeout = "2m"
watch_mode = "live"
"""


pytestmark = pytest.mark.usefixtures("subreaper")  # kill -9 leaves nats-server orphans to reap


class Script:
    """Step 1 emits and notifies; step 2 creates a follow-up watch, slowly the first time (the kill lands
    while it is in flight); step 3 is done. Decided by the request's length, so a resumed run gets the
    same answers."""

    def __init__(self) -> None:
        self.slow_once = True
        self.step2_started = False

    def __call__(self, body: dict[str, Any]) -> Turn:
        n = len(body["messages"])
        if n == 1:
            return tool_use(
                "emit",
                {"subject": "triage.started", "data": {"mail": "m1"}},
                ("notify", {"to": "notify.console", "message": "looking into the CEO's mail"}),
            )
        if n == 3:
            self.step2_started = True
            slow, self.slow_once = self.slow_once, False
            return tool_use(
                "watch",
                {"kind": "absent", "subject": "mail.reply", "within": "2d", "where": 'data.thread == "m1"'},
                delay_s=30 if slow else 0,
            )
        return tool_use("done", {"status": "escalated", "summary": "told the user, watching for a reply"})


def test_a_run_killed_mid_step_resumes_after_its_last_completed_step(
    process_factory: Callable[..., DaemonProc],
) -> None:
    fake = FakeAnthropic()
    script = Script()
    fake.model = script
    with fake.threaded():
        d = process_factory(
            WATCHES, extra_config=agent_config(fake.url), env={"WATCHD_TEST_ANTHROPIC_KEY": fake.api_key}
        ).start()
        d.publish(make_event("mail.received", {"from": "ceo@bigcustomer.com"}, id="mail-1"))
        wait_until(lambda: script.step2_started, timeout_s=60, what="step 2's model call in flight")
        # Step 1 is checkpointed with both tool results before step 2 was asked.
        (results,) = wait_until(lambda: d.query("SELECT tool_results FROM agent_steps WHERE n = 1"), what="step 1")
        assert len(json.loads(results[0])) == 2
        d.kill9()
        d.start()

        def agent_state() -> str | None:
            rows = d.query("SELECT state FROM handoffs WHERE target = 'agent.triage'")
            return rows[0][0] if rows and rows[0][0] == "done" else None

        try:
            wait_until(agent_state, timeout_s=30, what="the resumed run to finish")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}; calls {[len(c['messages']) for c in fake.calls]}; "
                f"handoffs {d.query('SELECT target, state, last_error FROM handoffs')}\n"
                f"{d.stderr()[-4000:]}"
            ) from None
        (wid,) = d.query("SELECT id FROM agent_watches")[0]
        wait_until(lambda: d.query("SELECT 1 FROM watch_meta WHERE watch = ?", (wid,)), what="the follow-up watch")
        wait_until(
            lambda: d.query("SELECT count FROM subjects WHERE subject = 'triage.started'"), what="the emitted event"
        )
        runs = d.cli("runs", "--json")
        (hid,) = d.query("SELECT id FROM handoffs WHERE target = 'agent.triage'")[0]
        shown = d.cli("runs", "show", hid, "--json")
        status = d.cli("status", "--json")
        explained = d.cli("explain", wid, "--json")
        d.term()

    sizes = [len(c["messages"]) for c in fake.calls]
    assert sizes.count(1) == 1, sizes  # the completed step 1 was never asked again
    assert sizes.count(3) == 2, sizes  # the interrupted step 2 was asked again (it never completed)
    assert sizes.count(5) == 1, sizes
    # Each side effect happened once.
    assert d.query("SELECT count FROM subjects WHERE subject = 'triage.started'") == [(1,)]
    notes = d.query("SELECT trigger, message FROM handoffs WHERE target = 'notify.console'")
    assert notes == [("agent", "[agent.triage] looking into the CEO's mail")]
    assert len(d.query("SELECT 1 FROM agent_watches")) == 1
    assert d.query("SELECT steps, outcome FROM agent_runs") == [(3, "done")]
    (run,) = json.loads(runs.stdout)
    assert run["outcome"] == "done" and run["steps"] == 3 and run["tokens"]["total"] > 0 and run["cost_usd"] > 0
    # The transcript after the crash: each step once, step 2 as it completed after the restart, every
    # tool call with its one result, and the steps' tokens adding up to the run's.
    t = json.loads(shown.stdout)
    assert [s["n"] for s in t["steps"]] == [1, 2, 3] and [r["id"] for r in t["runs"]] == [run["id"]]
    calls = [[c["name"] for c in s["output"]["tool_calls"]] for s in t["steps"]]
    assert calls == [["emit", "notify"], ["watch"], ["done"]]
    assert all(c["ran"] and not c["is_error"] for s in t["steps"] for c in s["output"]["tool_calls"])
    assert t["steps"][1]["output"]["tool_calls"][0]["result"].startswith(f"watch {wid} (live)")
    assert sum(s["tokens"]["total"] for s in t["steps"]) == run["tokens"]["total"]
    (follow_up,) = [w for w in json.loads(status.stdout)["watches"] if w["id"] == wid]  # listed while it lives
    assert follow_up["file"].startswith("agent.triage (handoff ") and follow_up["mode"] == "live"
    assert explained.returncode == 0 and json.loads(explained.stdout)["watch"] == wid
    today = json.loads(status.stdout)["tokens_today"]
    (agent,) = today["agents"]
    assert agent["agent"] == "agent.triage" and agent["tokens"] == run["tokens"]["total"]
    assert agent["daily_token_budget"] == 200_000 and today["budget_exhausted"] == 0
    assert fake.api_key not in d.stderr() + d.stdout() + runs.stdout + status.stdout
