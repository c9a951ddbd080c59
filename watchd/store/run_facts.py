"""What an agent's run of a handoff did beyond its outcome, for `explain`: the model escalations, a
checkpoint it left (and which handoff resumed it), the checkpoint it resumed, and the state versions it
wrote. Read from `agent_runs`, `agent_checkpoints` and `agent_state`, for many handoffs at once."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

_CHUNK = 500  # ids per IN (...) list: well under SQLite's bound on parameters


@dataclass
class RunFacts:
    runs: list[str] = field(default_factory=list)  # the runs' ids, oldest first
    escalations: list[dict[str, Any]] = field(default_factory=list)  # {"step", "from", "to", "reason"}
    checkpoint: dict[str, Any] | None = None  # {"limit", "resumed_by"}: it stopped with work left
    resumed: dict[str, Any] | None = None  # {"from", "limit"}: it went on from another handoff's checkpoint
    state_versions: list[dict[str, Any]] = field(default_factory=list)  # {"agent", "watch", "key", "version"}

    def notable(self) -> bool:
        return bool(self.escalations or self.checkpoint or self.resumed or self.state_versions)

    def to_json(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "escalations": self.escalations,
            "checkpoint": self.checkpoint,
            "resumed": self.resumed,
            "state_versions": self.state_versions,
        }

    def words(self) -> str:
        """One line: `escalated claude-haiku-4-5 → claude-sonnet-4-5 at step 2 (…); checkpointed at …`."""
        parts = [
            f"escalated {e.get('from')} → {e.get('to')} at step {e.get('step')}"
            + (f" ({e['reason']})" if e.get("reason") else "")
            for e in self.escalations
        ]
        if self.resumed:
            parts.append(f"resumed the checkpoint of {self.resumed['from']} (it stopped at {self.resumed['limit']})")
        if self.checkpoint:
            by = self.checkpoint.get("resumed_by")
            then = f", resumed by {by}" if by else ", waiting for the next trigger of the same watch and key"
            parts.append(f"checkpointed at {self.checkpoint['limit']}{then}")
        if self.state_versions:
            parts.append("wrote state " + ", ".join(_state_words(s) for s in self.state_versions))
        return "; ".join(parts)


def _state_words(s: dict[str, Any]) -> str:
    scope = f" ({s['watch']}, {s['key']})" if s["watch"] or s["key"] else ""
    return f"{s['agent']}{scope} v{s['version']}"


def _chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    for i in range(0, len(ids), _CHUNK):
        yield ids[i : i + _CHUNK]


def run_facts(conn: sqlite3.Connection, handoff_ids: Sequence[str]) -> dict[str, RunFacts]:
    """The facts of the handoffs that had a run, by handoff id (a state file from before these tables:
    none)."""
    facts: dict[str, RunFacts] = {}

    def of(hid: str) -> RunFacts:
        return facts.setdefault(hid, RunFacts())

    try:
        for ids in _chunks(list(handoff_ids)):
            marks = ",".join("?" * len(ids))
            for hid, rid, escalations in conn.execute(
                f"SELECT handoff_id, id, escalations FROM agent_runs WHERE handoff_id IN ({marks}) ORDER BY started_at",
                ids,
            ):
                f = of(hid)
                f.runs.append(rid)
                found = msgspec.json.decode(escalations or "[]")
                f.escalations += [e for e in found if isinstance(e, dict)] if isinstance(found, list) else []
            for hid, limit, by in conn.execute(
                f"SELECT handoff_id, limit_hit, resumed_by FROM agent_checkpoints WHERE handoff_id IN ({marks}) "
                "ORDER BY at",
                ids,
            ):
                of(hid).checkpoint = {"limit": limit, "resumed_by": by}
            for by, hid, limit in conn.execute(
                f"SELECT resumed_by, handoff_id, limit_hit FROM agent_checkpoints WHERE resumed_by IN ({marks})", ids
            ):
                of(by).resumed = {"from": hid, "limit": limit}
            for hid, agent, watch, key, version in conn.execute(
                f"SELECT handoff_id, agent, watch, key, version FROM agent_state WHERE handoff_id IN ({marks}) "
                "ORDER BY at, version",
                ids,
            ):
                of(hid).state_versions.append({"agent": agent, "watch": watch, "key": key, "version": version})
    except sqlite3.OperationalError:  # a state file from before agent runs (or their escalations)
        return {}
    return facts
