"""The state file a `command` agent gets: the current version of its state document, written to a file
under the state dir before the run and read back after it. A changed, valid JSON object becomes the next
version (every version is kept); anything else leaves the state as it was, with a warning.

The path and version reach the program twice, as it may prefer either: in the handoff JSON on stdin
(`"state": {"file", "version", "resume"}`) and as `WATCHD_STATE_FILE` / `WATCHD_STATE_VERSION`. A run that
timed out is checkpointed: the next delivery for the same watch and key (a retry, or the next trigger)
says `"resume": {"handoff_id", "limit"}` so the program knows to pick its work up from the file.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from watchd.agents import memory
from watchd.model import Handoff, stable_hash
from watchd.store import Store, agent_state
from watchd.store.agent_state import Scope

log = logging.getLogger("watchd.agents.state_file")


@dataclass
class Handed:
    scope: Scope
    path: Path
    version: int
    doc: Any
    resume: agent_state.Checkpoint | None


async def hand_over(store: Store, state_dir: Path, mode: memory.StateMode, agent: str, h: Handoff) -> Handed:
    scope = memory.scope_of(mode, agent, h)
    v = await store.call(agent_state.current, scope)
    folder = state_dir / "agent-state" / agent.removeprefix("agent.")
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{stable_hash(scope.watch, scope.key)[:16]}.json"
    doc = {} if v is None else v.doc
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(doc), indent=2))
    os.replace(tmp, path)
    cp = await store.call(agent_state.open_checkpoint, agent, h.watch, h.key or "")
    return Handed(scope, path, 0 if v is None else v.version, doc, cp)


def stdin_of(h: Handoff, handed: Handed | None) -> bytes:
    if handed is None:
        return msgspec.json.encode(h) + b"\n"
    body = msgspec.to_builtins(h)
    resume = (
        None if handed.resume is None else {"handoff_id": handed.resume.handoff_id, "limit": handed.resume.limit_hit}
    )
    body["state"] = {"file": str(handed.path), "version": handed.version, "resume": resume}
    return msgspec.json.encode(body) + b"\n"


def env_of(handed: Handed | None) -> dict[str, str]:
    if handed is None:
        return {}
    return {"WATCHD_STATE_FILE": str(handed.path), "WATCHD_STATE_VERSION": str(handed.version)}


async def take_back(store: Store, handed: Handed, h: Handoff, now: float, *, timed_out: bool) -> None:
    """Keep what the program left in the file as the next version; checkpoint a run that timed out."""
    agent = handed.scope.agent
    if handed.resume is not None:
        await store.call(agent_state.resume_checkpoint(agent, h.watch, h.key or "", handed.resume.handoff_id, h.id))
    try:
        doc = json.loads(handed.path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("%s: state file %s left unchanged: not JSON (%s)", agent, handed.path, type(exc).__name__)
        doc = handed.doc
    if not isinstance(doc, dict):
        log.warning("%s: state file %s left unchanged: not a JSON object", agent, handed.path)
    elif doc != handed.doc:
        note = "written before the run timed out" if timed_out else None
        write_id = stable_hash(h.id, h.attempt, "state")
        await store.call(agent_state.put_version, handed.scope, doc, now, handoff_id=h.id, write_id=write_id, note=note)
    if timed_out:
        await store.call(agent_state.add_checkpoint, agent, h.watch, h.key or "", h.id, h.id, "timeout", now)
