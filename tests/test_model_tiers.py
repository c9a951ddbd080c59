"""Model tiering against the fake Messages API: a run starts on the cheapest model, moves up when the model
calls the built-in `escalate(reason)` or on a failure class `escalate_on` names; each step records its model,
tokens and cost (at its model's price); budgets count every tier; `watchd runs` shows the escalation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.anthropic_runs import closing_runners, done, handoff, rows, runner, serve_fake
from support.cli import run_cli
from support.fake_anthropic import FakeAnthropic, api_error, tool_use
from support.project import Project

from watchd.config import Price, load
from watchd.dispatch import Dead, Delivered, Retry
from watchd.errors import ConfigError
from watchd.store import Store

fake = pytest.fixture(serve_fake)
_closing = pytest.fixture(autouse=True)(closing_runners)

TIERS = ["claude-haiku-4-5", "claude-sonnet-4-5"]
PRICES = {"claude-haiku-4-5": Price(input=1.0, output=5.0), "claude-sonnet-4-5": Price(input=3.0, output=15.0)}
URGENT_MAIL = '[[watch]]\nid = "urgent-mail"\nkind = "match"\non = { subject = "mail.received" }\n'
USAGE = {"input_tokens": 1000, "output_tokens": 100, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


async def test_a_model_that_calls_escalate_hands_the_run_to_the_next_tier(tmp_path: Path, fake: FakeAnthropic) -> None:
    p = Project(tmp_path / "p", {"w.toml": URGENT_MAIL})
    store = Store(p.db_path)
    try:
        store.add_handoffs([handoff()], 0.0)  # in the outbox, as a fire puts it: `explain` lists it
        fake.turns(
            tool_use("escalate", {"reason": "the contract clause needs careful reading"}, usage=USAGE),
            tool_use("notify", {"to": "notify.phone", "message": "clause 7 breached"}, usage=USAGE),
            tool_use("done", {"status": "resolved", "summary": "escalated and handled"}, usage=USAGE),
        )
        r = runner(fake, store, model="", models=TIERS, prices=PRICES, tools=["notify.phone"])
        assert await r.deliver(handoff()) == Delivered("resolved: escalated and handled", state="done")
    finally:
        store.close()
    assert [c["model"] for c in fake.calls] == ["claude-haiku-4-5", "claude-sonnet-4-5", "claude-sonnet-4-5"]
    assert "escalate" in [t["name"] for t in fake.calls[0]["tools"]]
    (result,) = fake.calls[1]["messages"][-1]["content"]
    assert "the next step runs on claude-sonnet-4-5" in result["content"]
    # The whole conversation went up with it.
    assert [m["role"] for m in fake.calls[1]["messages"]] == ["user", "assistant", "user"]
    steps = rows(store, "SELECT n, model, cost_usd, tokens FROM agent_steps ORDER BY n")
    assert [(s["n"], s["model"]) for s in steps] == [(1, TIERS[0]), (2, TIERS[1]), (3, TIERS[1])]
    assert steps[0]["cost_usd"] == pytest.approx((1000 * 1.0 + 100 * 5.0) / 1e6)
    assert steps[1]["cost_usd"] == pytest.approx((1000 * 3.0 + 100 * 15.0) / 1e6)
    (run,) = rows(store, "SELECT model, cost_usd, input_tokens, escalations FROM agent_runs")
    assert run["model"] == TIERS[1] and run["input_tokens"] == 3000
    assert run["cost_usd"] == pytest.approx(sum(s["cost_usd"] for s in steps))
    (esc,) = json.loads(run["escalations"])
    assert esc == {"step": 1, "from": TIERS[0], "to": TIERS[1], "reason": "the contract clause needs careful reading"}

    cfg = ("--config", str(p.config_path))
    (listed,) = json.loads(run_cli("runs", "--json", *cfg).stdout)
    assert listed["escalations"] == [esc]
    table = run_cli("runs", *cfg).stdout
    assert f"{listed['id']}: escalated at step 1 from claude-haiku-4-5 to claude-sonnet-4-5: the contract" in table
    t = json.loads(run_cli("runs", "show", listed["id"], "--json", *cfg).stdout)
    assert [s["model"] for s in t["steps"]] == [TIERS[0], TIERS[1], TIERS[1]]
    assert t["steps"][1]["escalation"]["from"] == TIERS[0]
    assert (
        "escalated at step 1: claude-haiku-4-5 -> claude-sonnet-4-5"
        in run_cli("runs", "show", listed["id"], *cfg).stdout
    )
    # explain names the escalation on the handoff whose run had it
    listed_handoffs = json.loads(run_cli("explain", "urgent-mail", "--json", *cfg).stdout)["handoffs"]
    (h,) = [x for x in listed_handoffs if x["target"] == "agent.triage"]  # (and the notify it queued, no run)
    assert h["run"] == {
        "runs": [listed["id"]],
        "escalations": [esc],
        "checkpoint": None,
        "resumed": None,
        "state_versions": [],
    }
    text = " ".join(run_cli("explain", "urgent-mail", *cfg).stdout.split())  # as wrapped for 80 columns
    assert (
        f"{h['id']}: escalated claude-haiku-4-5 → claude-sonnet-4-5 at step 1 (the contract clause needs careful "
        "reading)" in text
    )


async def test_at_the_top_tier_escalate_is_refused_and_the_run_goes_on(fake: FakeAnthropic, tmp_path: Path) -> None:
    store = Store(tmp_path / "watchd.db")
    try:
        fake.turns(tool_use("escalate", {"reason": "hard"}), tool_use("escalate", {"reason": "harder"}), done("ok"))
        r = runner(fake, store, model="", models=TIERS)
        assert await r.deliver(handoff()) == Delivered("resolved: ok", state="done")
        assert "already the largest model" in fake.last_user_text()
        assert [c["model"] for c in fake.calls] == [TIERS[0], TIERS[1], TIERS[1]]
    finally:
        store.close()


async def test_a_failure_class_named_in_escalate_on_moves_up_instead_of_waiting(
    fake: FakeAnthropic, tmp_path: Path
) -> None:
    store = Store(tmp_path / "watchd.db")
    try:
        fake.turns(api_error(529), done("done on the larger model"))
        r = runner(fake, store, model="", models=TIERS, escalate_on=["overloaded"])
        assert await r.deliver(handoff()) == Delivered("resolved: done on the larger model", state="done")
        assert [c["model"] for c in fake.calls] == TIERS
        (run,) = rows(store, "SELECT escalations FROM agent_runs")
        assert json.loads(run["escalations"])[0]["reason"].startswith("overloaded: agent.triage: HTTP 529")
        # Not named: a 429 is retried by the dispatcher as before, on the same model.
        fake.turns(api_error(429))
        outcome = await runner(fake, store, model="", models=TIERS, escalate_on=["overloaded"]).deliver(
            handoff("h_second")
        )
        assert isinstance(outcome, Retry) and fake.calls[-1]["model"] == TIERS[0]
    finally:
        store.close()


async def test_invalid_tool_arguments_escalate_with_tool_error_and_budgets_span_the_tiers(
    fake: FakeAnthropic, tmp_path: Path
) -> None:
    store = Store(tmp_path / "watchd.db")
    try:
        big = {**USAGE, "input_tokens": 9000}
        fake.turns(tool_use("notify", {"to": "notify.phone"}, usage=big), tool_use("notify", {"x": 1}, usage=big))
        r = runner(fake, store, model="", models=TIERS, escalate_on=["tool_error"], run_token_budget=18_500)
        outcome = await r.deliver(handoff())
        assert [c["model"] for c in fake.calls] == TIERS
        # 18,200 tokens across both tiers: the third call does not fit what is left of the run budget.
        assert isinstance(outcome, Dead) and "limit run_token_budget" in outcome.detail
        (run,) = rows(store, "SELECT escalations, input_tokens FROM agent_runs")
        assert json.loads(run["escalations"])[0]["reason"] == "tool_error: invalid tool arguments"
        assert run["input_tokens"] == 18_000
    finally:
        store.close()


def test_validate_wants_model_or_models_and_tiers_for_escalate_on(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[agent.a]\ntype = "anthropic"\n\n[agent.b]\ntype = "anthropic"\nmodel = "m"\nmodels = ["m", "n"]\n\n'
        '[agent.c]\ntype = "anthropic"\nmodel = "m"\nescalate_on = ["overloaded"]\n'
    )
    with pytest.raises(ConfigError) as caught:
        load(cfg)
    text = "\n".join(str(p) for p in caught.value.problems)
    assert "needs `model` (or `models`" in text and "not both" in text and "at least two tiers" in text
