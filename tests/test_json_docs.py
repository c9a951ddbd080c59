"""The README's "JSON output" list is true: each example given there (`… --json` and one example
in backticks after "For example") is checked against what the command prints for a daemon with a
fire, an open incident, a dead letter, a schedule, a source and an agent run: every key the
example shows is there, at the same place, holding the same kind of value."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.cli import run_cli
from support.inprocess import InProcessDaemon
from support.waiting import until

from watchd.model import make_event
from watchd.store.runs import close_run, new_run

README = Path(__file__).resolve().parent.parent / "README.md"

WATCHES = {
    "w.toml": """
[[watch]]
id = "disk-full"
kind = "match"
on = { subject = "disk.full", key = "data.host" }
repeat = "1h"
then = ["notify.console"]

[[watch]]
id = "job-failed"
kind = "match"
on = { subject = "job.failed", key = "data.job" }
then = ["agent.fixer"]
""",
}


def examples() -> dict[str, Any]:
    """{command as written in the README: its example, decoded}."""
    section = README.read_text().split("### JSON output", 1)[1].split("\n## ", 1)[0]
    found: dict[str, Any] = {}
    for item in re.split(r"\n- ", section):
        command = re.match(r"`([^`]+)`", item.strip("- \n"))
        example = re.search(r"For example\s+`(\{.*?\}|\[.*?\])`(?=[.,;:)\s])", item, re.S)
        if command and example:
            found[command.group(1)] = json.loads(example.group(1).replace("\n  ", " "))
    return found


def agrees(example: Any, real: Any, where: str = "") -> list[str]:
    """Where `example` shows something `real` does not have, or holds another kind of value."""
    if example is None or real is None or where.endswith(".data"):
        return []  # null stands for "may be absent"; an event's data is whatever it was sent with
    if isinstance(example, dict):
        if not isinstance(real, dict):
            return [f"{where or '.'}: an object in the example, {type(real).__name__} in the output"]
        wrong = [f"{where}.{k}: not in the output" for k in example if k not in real]
        for k in example:
            if k in real:
                wrong += agrees(example[k], real[k], f"{where}.{k}")
        return wrong
    if isinstance(example, list):
        if not isinstance(real, list):
            return [f"{where}: an array in the example, {type(real).__name__} in the output"]
        return agrees(example[0], real[0], f"{where}[0]") if example and real else []
    kinds = (bool,) if isinstance(example, bool) else (int, float) if isinstance(example, int | float) else (str,)
    if (isinstance(real, bool) and kinds != (bool,)) or not isinstance(real, kinds):
        return [f"{where}: {type(example).__name__} in the example, {type(real).__name__} in the output"]
    return []


async def test_every_json_example_in_the_readme_matches_the_commands_output(
    daemon_factory: Callable[..., InProcessDaemon], tmp_path: Path
) -> None:
    script = tmp_path / "agent.py"
    script.write_text("import sys\nprint('not ready')\nsys.exit(75)\n")
    poll = tmp_path / "poll.py"
    poll.write_text("print('{\"free_gb\": 3}')\n")
    extra = (
        f'[agent.fixer]\ntype = "command"\ncommand = {json.dumps([sys.executable, str(script)])}\n'
        f'[source.disk]\ntype = "poll"\ncommand = {json.dumps([sys.executable, str(poll)])}\nevery = "1h"\n'
        'subject = "disk.free"\nselect = "data"\nemit = "always"\n'
        '[schedule.nightly-report]\ncron = "30 7 * * *"\nrun = ["true"]\n'
    )
    d = await daemon_factory(WATCHES, extra_config="\n" + extra).start()
    await d.publish(make_event("disk.full", {"host": "nas"}), make_event("job.failed", {"job": "sync"}))
    await until(lambda: [h["state"] for h in d.handoffs("job-failed")] == ["dead"], 15, "a dead letter")
    hid = d.handoffs("job-failed")[0]["id"]
    conn = sqlite3.connect(d.db_path)
    try:
        run = new_run(conn, hid, "agent.fixer", "claude-haiku-4-5", 1_795_000_000.0)
        close_run(conn, run.id, 1_795_000_030.0, "done", "fixed")
        conn.commit()
    finally:
        conn.close()

    # the agent's release: recorded at start, and last good once its first canary passed
    await until(lambda: json.loads(d.meta("release.agent.fixer") or "{}").get("last_good"), 15, "a good release")
    commands = {
        "status --json": ("status", "--json"),
        "dlq list --json": ("dlq", "list", "--json"),
        "handoffs --json": ("handoffs", "--json"),
        "schedules --json": ("schedules", "--json"),
        "runs --json": ("runs", "--json"),
        "release --json": ("release", "--json"),
        "history NAME --json": ("history", "disk-full", "--json"),
        "source test NAME --json": ("source",),
        "explain WATCH --json": ("explain", "disk-full", "--json"),
        "check --json": ("check", "--json"),
        "validate --json": ("validate", "--json"),
    }
    documented = examples()
    documented["dlq list --json"] = documented.get("handoffs --json")  # one item documents both
    missing = sorted(set(commands) - set(documented))
    assert not missing, f"no example in the README for: {missing}"
    wrong: list[str] = []
    for name, args in commands.items():
        if args[0] == "source":  # --config goes after its subcommand
            config = ("--config", str(d.config_path))
            result = await asyncio.to_thread(run_cli, "source", "test", "disk", "--json", *config)
        else:
            result = await d.cli(*args)
        assert result.returncode == 0, (name, result.stderr)
        wrong += [f"{name}: {w}" for w in agrees(documented[name], json.loads(result.stdout))]
    assert not wrong, "\n".join(wrong)


def test_the_check_catches_a_wrong_example() -> None:
    assert agrees({"a": 1, "b": [{"c": "x"}]}, {"a": 2, "b": [{"c": "y", "d": 1}], "e": 0}) == []
    wrong = agrees({"a": 1, "z": 2}, {"a": "1"})
    assert wrong == [".z: not in the output", ".a: int in the example, str in the output"]
    assert agrees([{"id": "x"}], [{"key": "y"}]) == ["[0].id: not in the output"]
    assert agrees({"ok": True}, {"ok": 1}) == [".ok: bool in the example, int in the output"]
