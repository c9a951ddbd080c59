"""`watchd dlq`: list, replay (same id) and drop dead letters — through the real daemon (in the test's
event loop), with a command agent that rejects until it is "fixed", while the daemon runs and while it
is stopped."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from support.handoffs import make_handoff
from support.inprocess import InProcessDaemon
from support.waiting import until

from watchd.dispatch import POLL_S
from watchd.model import make_event
from watchd.store import Store, connect_existing
from watchd.store.outbox import drop_dead, replay_dead
from watchd.store.outbox import read_handoffs as stored

WATCH = """
[[watch]]
id = "job-failed"
kind = "match"
on = { subject = "job.failed", key = "data.job" }
then = ["agent.fixer"]
"""

# Rejects (exit 75) until the flag file exists; then records the id and attempt it was given.
AGENT = """
import os, sys
flag, log = sys.argv[1], sys.argv[2]
if not os.path.exists(flag):
    print("not ready: no flag")
    sys.exit(75)
with open(log, "a") as f:
    f.write(os.environ["WATCHD_HANDOFF_ID"] + " " + os.environ["WATCHD_ATTEMPT"] + "\\n")
"""


def states(d: InProcessDaemon) -> dict[str, str]:
    return {h["key"]: h["state"] for h in d.handoffs("job-failed")}


async def test_list_replay_and_drop_dead_letters_through_the_daemon(
    daemon_factory: Callable[..., InProcessDaemon], tmp_path: Path
) -> None:
    script, flag, log = tmp_path / "agent.py", tmp_path / "fixed", tmp_path / "agent.log"
    script.write_text(AGENT)
    cmd = json.dumps([sys.executable, str(script), str(flag), str(log)])
    d = daemon_factory({"w.toml": WATCH}, extra_config=f'[agent.fixer]\ntype = "command"\ncommand = {cmd}\n')
    await d.start()
    await d.publish(make_event("job.failed", {"job": "a"}), make_event("job.failed", {"job": "b"}))
    await until(lambda: states(d) == {"a": "dead", "b": "dead"}, 15, "both handoffs dead-lettered")

    listed_out = await d.cli("dlq", "list", "--json")
    table = await d.cli("dlq")  # no subcommand: the list, as a table
    listed = json.loads(listed_out.stdout)
    assert {h["key"] for h in listed} == {"a", "b"}
    for h in listed:
        assert h["state"] == "dead" and h["target"] == "agent.fixer" and h["attempt"] == 1
        assert h["last_error"] == "rejected by agent: not ready: no flag"
    ids = {h["key"]: h["id"] for h in listed}
    assert ids["a"] in table.stdout and "rejected by agent: not ready: no flag" in table.stdout

    # Fix the agent, replay one dead letter while the daemon runs: same id, from attempt 1. The command
    # only writes the state file; the dispatcher finds the handoff due at its next look.
    flag.touch()
    r = await d.cli("dlq", "replay", ids["a"])
    assert r.returncode == 0, r.stderr
    assert f"replaying {ids['a']}" in r.stdout and "running daemon" in r.stdout
    await d.advance(POLL_S)
    await until(lambda: states(d).get("a") == "done", 10, "the replayed handoff to be done")
    assert log.read_text() == f"{ids['a']} 1\n"
    assert [h["id"] for h in d.handoffs("job-failed") if h["key"] == "a"] == [ids["a"]]
    assert d.transitions(ids["a"])[-4:] == [
        ("dead", "rejected by agent: not ready: no flag"),
        ("retrying", "replayed by user"),
        ("delivering", None),
        ("done", "exit 0 (no output)"),
    ]

    # Drop the other one, by a prefix of its id: terminal, and off the list.
    r = await d.cli("dlq", "drop", ids["b"][:10])
    assert r.returncode == 0 and f"dropped {ids['b']}" in r.stdout, r.stderr
    assert states(d)["b"] == "dropped"
    assert d.transitions(ids["b"])[-1] == ("dropped", "dropped by user")
    # ... and clear errors: an unknown id, and a handoff that is not dead.
    listed_out = await d.cli("dlq", "list", "--json")
    table = await d.cli("dlq", "list")
    unknown = await d.cli("dlq", "replay", "h_nope")
    not_dead = await d.cli("dlq", "drop", ids["a"])
    assert json.loads(listed_out.stdout) == [] and table.stdout.strip() == "no dead letters"
    for r, starts in (
        (unknown, "error: no handoff with id 'h_nope'"),
        (not_dead, f"error: handoff {ids['a']} is done, not dead"),
    ):
        assert r.returncode == 1 and r.stderr.startswith(starts), r.stderr
        assert "watchd dlq list" in r.stderr and "Traceback" not in r.stderr

    # With the daemon stopped, a replay (here of the dropped one) is sent when it starts.
    await d.stop()
    r = await d.cli("dlq", "replay", ids["b"])
    assert r.returncode == 0 and "sent when watchd starts" in r.stdout, r.stderr
    assert states(d)["b"] == "retrying"
    await d.start()
    await until(lambda: states(d).get("b") == "done", 10, "the replayed handoff to be done after the start")
    assert log.read_text().splitlines() == [f"{ids['a']} 1", f"{ids['b']} 1"]


def test_replay_and_drop_in_the_store(tmp_path: Path) -> None:
    store = Store(tmp_path / "w.db")
    h = make_handoff(target="agent.x")
    store.commit_step(last_seq=1, clock=1.0, changes=([], [], set()), decisions=[], handoffs=[h], subjects={}, now=1.0)
    for _ in range(3):
        (claimed,) = store.claim_due(100.0)
        store.finish(claimed.id, "retrying", 2.0, "boom", 3.0)
    store.claim_due(100.0)
    store.finish(h.id, "dead", 4.0, "gave up")
    row = stored(store.conn)[0]
    assert (row.state, row.attempt) == ("dead", 4)
    conn = connect_existing(tmp_path / "w.db")  # as the CLI does, beside the daemon's connection
    replay_dead(conn, "h_01234", 10.0)
    row = stored(store.conn)[0]
    assert (row.state, row.attempt, row.next_attempt_at, row.last_error) == ("retrying", 1, 10.0, "gave up")
    (again,) = store.claim_due(10.0)
    assert again.id == h.id and again.attempt == 1
    store.finish(h.id, "dead", 11.0, "still broken")
    drop_dead(conn, h.id, 12.0)
    assert stored(store.conn)[0].state == "dropped"
    assert store.claim_due(1e12) == [] and store.next_attempt_at() is None
    conn.close()
    store.close()
