"""Agent state across runs: a nightly data-quality agent (anthropic, against the fake Messages API, real
SQLite) keeps its baseline from one run to the next — in the system prompt's stable prefix and through
`read_state`/`write_state` — every version is kept, a run that hits its step cap checkpoints, and the next
trigger for the same watch and key resumes it instead of starting over. `watchd state` shows and diffs it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from support.anthropic_runs import closing_runners, done, handoff, rows, runner, serve_fake
from support.cli import run_cli
from support.fake_anthropic import FakeAnthropic, api_error, tool_use
from support.project import Project

from watchd.dispatch import Dead, Delivered, Retry
from watchd.store import Store

fake = pytest.fixture(serve_fake)
_closing = pytest.fixture(autouse=True)(closing_runners)


NIGHTLY_DQ = '[[watch]]\nid = "nightly-dq"\nkind = "match"\non = { subject = "dq.night" }\n'


def nightly(n: int) -> Any:
    return handoff(f"h_night{n}", watch="nightly-dq", key="orders", reason=f"nightly check {n}")


def system_text(call: dict[str, Any]) -> str:
    return "\n".join(b["text"] for b in call["system"])


def plain(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages without their cache breakpoints (which move to the newest message each step)."""
    return [
        {**m, "content": [{k: v for k, v in b.items() if k != "cache_control"} for b in m["content"]]} for m in messages
    ]


def user_texts(call: dict[str, Any]) -> str:
    """The text of the call's last user turn: its tool results' and text blocks' contents."""
    return "\n".join(str(b.get("content") or b.get("text")) for b in call["messages"][-1]["content"])


async def test_state_across_three_runs_one_capped_and_resumed_by_the_next_trigger(
    tmp_path: Path, fake: FakeAnthropic
) -> None:
    p = Project(tmp_path / "p", {"w.toml": NIGHTLY_DQ})
    store = Store(p.db_path)
    try:
        store.add_handoffs([nightly(n) for n in (1, 2, 3)], 0.0)  # in the outbox, as fires put them: explain lists them
        r = runner(fake, store, state="per-key", max_steps=3)
        # Night 1: nothing saved yet; it reads, then saves the baseline, then is done.
        fake.turns(
            tool_use("read_state", {}),
            tool_use("write_state", {"state": {"rows": 1000}, "note": "first baseline"}),
            done("baseline set"),
        )
        assert await r.deliver(nightly(1)) == Delivered("resolved: baseline set", state="done")
        first = fake.calls[0]
        assert [t["name"] for t in first["tools"]] == ["notify", "read_state", "write_state", "done"]
        assert 'version="0"' in system_text(first)
        assert first["system"][-1]["cache_control"]["type"] == "ephemeral"  # the state is part of the cached prefix
        assert "no state saved yet" in user_texts(fake.calls[1])

        # Night 2: the baseline is in the prompt; it saves the new count, then runs out of steps mid-work.
        fake.turns(
            tool_use("write_state", {"state": {"rows": 1100, "todo": ["compare nulls"]}}),
            tool_use("read_state", {}),
            tool_use("notify", {"to": "notify.phone", "message": "still comparing"}),
        )
        outcome = await r.deliver(nightly(2))
        assert isinstance(outcome, Dead) and outcome.detail.startswith("limit max_steps")
        assert "checkpointed" in outcome.detail
        night2 = fake.calls[3]
        assert 'version="1"' in system_text(night2) and '{"rows":1000}' in system_text(night2)
        assert len(night2["messages"]) == 1
        assert 'version 2: {"rows":1100' in user_texts(fake.calls[5])
        assert rows(store, "SELECT handoff_id, limit_hit, resumed_by FROM agent_checkpoints")[0][:] == (
            "h_night2",
            "max_steps",
            None,
        )

        # Night 3: resumes night 2's conversation (not a fresh start); an API error after its first step is
        # retried, and the retry still carries the resumed conversation and stores the write once.
        fake.turns(tool_use("write_state", {"state": {"rows": 1200}}), api_error(500))
        assert isinstance(await r.deliver(nightly(3)), Retry)
        fake.turns(done("rows grew 9%"))
        assert await r.deliver(nightly(3)) == Delivered("resolved: rows grew 9%", state="done")
        resumed, retried = fake.calls[6], fake.calls[8]
        assert len(resumed["messages"]) == 7  # night 2's six messages, then the new turn
        assert plain(resumed["messages"][:5]) == plain(fake.calls[5]["messages"])
        assert resumed["messages"][5]["content"][0]["name"] == "notify"  # night 2's last answer
        turn = resumed["messages"][-1]["content"]
        assert turn[0]["type"] == "tool_result" and "queued for notify.phone" in turn[0]["content"]
        assert "stopped at its max_steps limit" in turn[1]["text"] and "nightly check 3" in user_texts(resumed)
        assert 'version="2"' in system_text(resumed)
        assert len(retried["messages"]) == 9 and retried["messages"][:6] == resumed["messages"][:6]
        assert rows(store, "SELECT resumed_by FROM agent_checkpoints")[0][0] == "h_night3"

        versions = rows(store, "SELECT version, doc, handoff_id FROM agent_state ORDER BY version")
        assert [(v[0], json.loads(v[1]), v[2]) for v in versions] == [
            (1, {"rows": 1000}, "h_night1"),
            (2, {"rows": 1100, "todo": ["compare nulls"]}, "h_night2"),
            (3, {"rows": 1200}, "h_night3"),
        ]
        assert {v[0] for v in rows(store, "SELECT watch, key FROM agent_state")} == {"nightly-dq"}

        # Night 4 starts fresh: the checkpoint was resumed once.
        fake.turns(done("fine"))
        await r.deliver(nightly(4))
        assert len(fake.calls[-1]["messages"]) == 1 and 'version="3"' in system_text(fake.calls[-1])
    finally:
        store.close()

    cfg = ("--config", str(p.config_path))
    shown = json.loads(run_cli("state", "show", "triage", "--key", "orders", "--json", *cfg).stdout)
    assert shown["version"] == 3 and shown["state"] == {"rows": 1200} and shown["watch"] == "nightly-dq"
    old = json.loads(run_cli("state", "show", "agent.triage", "--version", "1", "--json", *cfg).stdout)
    assert old["state"] == {"rows": 1000} and old["note"] == "first baseline"
    code, text, _ = run_cli("state", "diff", "triage", "1", "2", *cfg)
    assert code == 0 and '-  "rows": 1000' in text and '+  "rows": 1100,' in text and '+    "compare nulls"' in text
    listing = json.loads(run_cli("state", "--json", *cfg).stdout)
    assert listing == [
        {"agent": "agent.triage", "watch": "nightly-dq", "key": "orders", "version": 3, "at": listing[0]["at"]}
    ]
    history = run_cli("state", "show", "triage", "--history", *cfg).stdout
    assert [line.split()[1] for line in history.splitlines()] == ["1", "2", "3"]
    code, _, err = run_cli("state", "show", "triage", "--key", "nope", *cfg)
    assert code == 1 and "no state for that watch and key" in err and "Traceback" not in err
    transcript = json.loads(run_cli("runs", "show", "h_night3", "--json", *cfg).stdout)
    assert transcript["steps"][0]["request"]["summary"].startswith("resumes the checkpoint of h_night2")

    # explain: each handoff's run with its checkpoint, the resume and the state versions it wrote
    handoffs = json.loads(run_cli("explain", "nightly-dq", "--json", *cfg).stdout)["handoffs"]
    runs = {h["id"]: h.get("run") for h in handoffs}
    assert [h["target"] for h in handoffs if runs[h["id"]] is None] == ["notify.phone"]  # night 2's notify: no run
    state = {"agent": "agent.triage", "watch": "nightly-dq", "key": "orders"}
    assert runs["h_night1"]["state_versions"] == [{**state, "version": 1}]
    assert runs["h_night2"]["checkpoint"] == {"limit": "max_steps", "resumed_by": "h_night3"}
    assert runs["h_night2"]["state_versions"] == [{**state, "version": 2}]
    assert runs["h_night3"]["resumed"] == {"from": "h_night2", "limit": "max_steps"}
    assert runs["h_night3"]["state_versions"] == [{**state, "version": 3}] and len(runs["h_night3"]["runs"]) == 1
    text = " ".join(run_cli("explain", "nightly-dq", *cfg).stdout.split())  # as wrapped for 80 columns
    night2 = "h_night2: checkpointed at max_steps, resumed by h_night3; wrote state agent.triage (nightly-dq, orders) "
    night2 += "v2"
    assert night2 in text
    assert "h_night3: resumed the checkpoint of h_night2 (it stopped at max_steps); wrote state" in text


async def test_one_document_per_agent_is_shared_by_every_watch_and_key(tmp_path: Path, fake: FakeAnthropic) -> None:
    store = Store(tmp_path / "watchd.db")
    try:
        r = runner(fake, store, state="agent")
        fake.turns(tool_use("write_state", {"state": {"seen": 1}}), done("ok"), done("ok"))
        await r.deliver(handoff("h_a", watch="w1", key="k1"))
        await r.deliver(handoff("h_b", watch="w2", key="k2"))
        assert '{"seen":1}' in system_text(fake.calls[-1])
        assert [tuple(r) for r in rows(store, "SELECT watch, key FROM agent_state")] == [("", "")]
    finally:
        store.close()


async def test_an_oversized_or_malformed_state_goes_back_to_the_model_as_an_error(
    tmp_path: Path, fake: FakeAnthropic
) -> None:
    store = Store(tmp_path / "watchd.db")
    try:
        fake.turns(
            tool_use("write_state", {"state": {"blob": "x" * 70_000}}, ("write_state", {"state": "not an object"})),
            done("gave up"),
        )
        await runner(fake, store, state="agent", run_token_budget=200_000).deliver(handoff())
        results = json.loads(fake.last_user_text())
        assert all(b["is_error"] for b in results) and "over the limit" in results[0]["content"]
        assert rows(store, "SELECT 1 FROM agent_state") == []
    finally:
        store.close()


async def test_an_agent_without_state_is_offered_no_state_tools_and_a_capped_run_is_not_resumed(
    tmp_path: Path, fake: FakeAnthropic
) -> None:
    store = Store(tmp_path / "watchd.db")
    try:
        fake.model = lambda body: tool_use("notify", {"to": "notify.phone", "message": "x"})
        r = runner(fake, store, max_steps=1)
        assert isinstance(await r.deliver(nightly(1)), Dead)
        fake.model = None
        fake.turns(tool_use("read_state", {}), done("ok"))
        await r.deliver(nightly(2))
        assert len(fake.calls[1]["messages"]) == 1  # a fresh start
        assert "read_state" not in [t["name"] for t in fake.calls[1]["tools"]]
        (results,) = rows(store, "SELECT tool_results FROM agent_steps WHERE handoff_id = 'h_night2'")
        assert "refused: tool 'read_state' is not available" in results[0]
        assert rows(store, "SELECT 1 FROM agent_checkpoints") == []
    finally:
        store.close()


# ---- command agents ------------------------------------------------------------------------------------------

COUNTER = """
import json, os, sys, time
h = json.load(sys.stdin)
path = os.environ["WATCHD_STATE_FILE"]
assert h["state"]["file"] == path and str(h["state"]["version"]) == os.environ["WATCHD_STATE_VERSION"]
state = json.load(open(path))
state["runs"] = state.get("runs", 0) + 1
state.setdefault("seen", []).append(h["id"])
if h["state"]["resume"]:
    state["resumed"] = h["state"]["resume"]
json.dump(state, open(path, "w"))
if h["id"] == "h_slow":
    time.sleep(30)
"""


async def test_a_command_agent_keeps_its_state_file_across_runs_and_resumes_after_a_timeout(tmp_path: Path) -> None:
    from watchd.agents.command import CommandRunner
    from watchd.config import CommandAgent

    store = Store(tmp_path / "state" / "watchd.db")
    try:
        agent = CommandAgent(command=[sys.executable, "-c", COUNTER], state="per-key", timeout="2s")
        r = CommandRunner(agent, name="agent.counter", store=store, state_dir=tmp_path / "state", kill_grace_s=0.5)
        assert isinstance(await r.deliver(handoff("h_one", watch="w", key="k")), Delivered)
        outcome = await r.deliver(handoff("h_slow", watch="w", key="k"))  # saves, then runs past its timeout
        assert isinstance(outcome, Retry) and outcome.detail.startswith("timed out")
        assert isinstance(await r.deliver(handoff("h_three", watch="w", key="k")), Delivered)
        assert isinstance(await r.deliver(handoff("h_other", watch="w", key="k2")), Delivered)
        docs = [
            (r_[0], r_[1], json.loads(r_[2]), r_[3])
            for r_ in rows(store, "SELECT key, version, doc, note FROM agent_state ORDER BY key, version")
        ]
    finally:
        store.close()
    assert docs == [
        ("k", 1, {"runs": 1, "seen": ["h_one"]}, None),
        ("k", 2, {"runs": 2, "seen": ["h_one", "h_slow"]}, "written before the run timed out"),
        (
            "k",
            3,
            {
                "runs": 3,
                "seen": ["h_one", "h_slow", "h_three"],
                "resumed": {"handoff_id": "h_slow", "limit": "timeout"},
            },
            None,
        ),
        ("k2", 1, {"runs": 1, "seen": ["h_other"]}, None),
    ]
