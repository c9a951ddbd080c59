"""An agent's release: what it is made of (its fingerprint), and the record watchd keeps of it.

A release is fingerprinted from what an upgrade changes:

- a command agent: its program as resolved (PATH, symlinks) and a hash of that file, and the first
  line of its `version = [...]` command when it has one;
- an anthropic agent: its model ids (every tier, the fallback) and a hash of its instructions, and
  its `version` output when it has one;
- a nats agent: its `version` output (its code runs elsewhere); without one there is nothing to track.

Each agent has one record, kept in `meta` under `release.agent.<name>` (see `Record`): the release it
runs now (`current`), the last one whose canary passed (`last_good`), and, when the current one
failed its canary, what holds its handoffs (`held`). `watchd release` reads the records from the
state file beside the running daemon; the daemon's release control (watchd/jobs/release.py) writes
them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec

from watchd.config import Agent, AnthropicAgent, CommandAgent, model_tiers
from watchd.cron.proc import run_in_group
from watchd.store.meta import metas_starting

META_PREFIX = "release."
VERSION_TIMEOUT_S = 10.0
HISTORY_KEEP = 20  # the latest changes of an agent's release kept in its record
_HASH_CHUNK = 1 << 20


class Release(msgspec.Struct, kw_only=True):
    """One release of an agent: `digest` identifies it; `label` says it in words."""

    digest: str
    label: str
    parts: dict[str, str] = msgspec.field(default_factory=dict)
    channel: str = "release"  # release: the configured command | stable: the agent's `stable_command`

    def named(self) -> str:
        """How an alert or a line names it: its label and digest."""
        return f"{self.label} [{self.digest}]"


class Held(msgspec.Struct, kw_only=True):
    """Why the agent's handoffs wait: the release that failed its canary, and the one before it."""

    since: str
    reason: str
    new: Release
    old: Release | None = None
    rollback: str | None = None  # what the last rollback did, in words


class Change(msgspec.Struct, kw_only=True):
    at: str
    what: str  # seen | canary_passed | canary_failed | promoted | rolled_back | rollback_failed
    detail: str


class Record(msgspec.Struct, kw_only=True):
    agent: str
    current: Release | None = None
    last_good: Release | None = None
    held: Held | None = None
    checked_at: str | None = None
    history: list[Change] = msgspec.field(default_factory=list)

    def note(self, at: str, what: str, detail: str) -> None:
        self.history = [*self.history, Change(at=at, what=what, detail=detail)][-HISTORY_KEEP:]


_record = msgspec.json.Decoder(Record)


def meta_key(agent: str) -> str:
    return META_PREFIX + agent


def decode_record(raw: str | bytes) -> Record | None:
    with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
        return _record.decode(raw)
    return None


def read_records(conn: sqlite3.Connection) -> dict[str, Record]:
    """Every agent's release record, by target name (`agent.x`)."""
    try:
        rows = metas_starting(conn, META_PREFIX + "agent.")
    except sqlite3.OperationalError:  # a state file from before the meta table
        return {}
    records = {}
    for k, v in rows:
        rec = decode_record(v)
        if rec is not None:
            records[k.removeprefix(META_PREFIX)] = rec
    return records


# ---- fingerprints -------------------------------------------------------------------------------------


def _resolve(argv: list[str], base_dir: Path) -> list[str]:
    if argv and "/" in argv[0] and not os.path.isabs(argv[0]):
        return [str(base_dir / argv[0]), *argv[1:]]
    return list(argv)


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()[:12]


def binary_of(program: str) -> tuple[str, str]:
    """(the program's real path, a hash of its content) — or why it cannot be found or read."""
    found = shutil.which(program)
    if found is None:
        return f"not found: {program}", ""
    real = os.path.realpath(found)
    try:
        return real, _file_sha256(real)
    except OSError as exc:
        return real, f"unreadable ({exc.strerror or type(exc).__name__})"


async def version_output(argv: list[str]) -> str:
    """The first line of a `version` command's output (or why there is none)."""
    try:
        done = await run_in_group(argv, timeout_s=VERSION_TIMEOUT_S, kill_grace_s=1.0)
    except OSError as exc:
        return f"cannot run {argv[0]}: {exc.strerror or type(exc).__name__}"
    if done.code is None:
        return f"{argv[0]} did not answer within {VERSION_TIMEOUT_S:g}s"
    lines = [ln.strip() for ln in done.tail.removeprefix("…").splitlines() if ln.strip()]
    first = lines[0][:120] if lines else "(no output)"
    return first if done.code == 0 else f"exit {done.code}: {first}"


def _digest(parts: dict[str, str]) -> str:
    return hashlib.sha256(msgspec.json.encode(sorted(parts.items()))).hexdigest()[:12]


async def fingerprint(agent: Agent, base_dir: Path, *, stable: bool = False) -> Release | None:
    """The release `agent` runs now (with `stable`: its `stable_command`); None when nothing of it can
    be told apart (a nats agent without `version`)."""
    parts: dict[str, str] = {}
    if isinstance(agent, CommandAgent):
        argv = _resolve(agent.stable_command if stable and agent.stable_command else agent.command, base_dir)
        if argv:
            path, sha = await asyncio.to_thread(binary_of, argv[0])
            parts["binary"] = path
            if sha:
                parts["sha256"] = sha
    elif isinstance(agent, AnthropicAgent):
        tiers = model_tiers(agent) + ([agent.fallback_model] if agent.fallback_model else [])
        parts["model"] = " < ".join(tiers)
        parts["instructions"] = hashlib.sha256(agent.instructions.encode()).hexdigest()[:12]
    if agent.version and not stable:
        parts["version"] = await version_output(_resolve(agent.version, base_dir))
    if not parts:
        return None
    if "version" in parts:
        label = parts["version"]
    elif "model" in parts:
        label = f"{parts['model']}, instructions {parts['instructions']}"
    else:
        label = f"{parts['binary']}" + (f" sha256:{parts['sha256']}" if "sha256" in parts else "")
    return Release(digest=_digest(parts), label=label, parts=parts, channel="stable" if stable else "release")


# ---- for `watchd release`, `watchd status` and the dashboard --------------------------------------------


def release_rows(configured: Iterable[str], conn: sqlite3.Connection | None) -> list[dict[str, Any]]:
    """One object per agent (`configured` target names, and any recorded one no longer configured), by
    name: as `watchd release --json` prints it."""
    records: dict[str, Record] = {}
    waiting: dict[str, int] = {}
    if conn is not None:
        from watchd.store.outbox import pending_by_target

        records = read_records(conn)
        with contextlib.suppress(sqlite3.OperationalError):
            waiting = pending_by_target(conn, "release_failed:")
    names = set(configured)
    rows = []
    for name in sorted(names | set(records)):
        rec = records.get(name)
        plain: dict[str, Any] = msgspec.to_builtins(rec) if rec is not None else {}
        rows.append(
            {
                "agent": name,
                "configured": name in names,
                "current": plain.get("current"),
                "last_good": plain.get("last_good"),
                "held": plain.get("held"),
                "held_handoffs": waiting.get(name, 0),
                "checked_at": plain.get("checked_at"),
                "history": plain.get("history", []),
            }
        )
    return rows


# ---- for `watchd status` ----------------------------------------------------------------------------


def held_releases(conn: sqlite3.Connection) -> list[dict[str, object]]:
    """The agents whose release is held: {agent, release, since, reason, held_handoffs}, by name."""
    from watchd.store.outbox import pending_by_target

    held = {name: rec for name, rec in read_records(conn).items() if rec.held is not None}
    if not held:
        return []
    try:
        waiting = pending_by_target(conn, "release_failed:")
    except sqlite3.OperationalError:
        waiting = {}
    return [
        {
            "agent": name,
            "release": rec.held.new.named(),
            "since": rec.held.since,
            "reason": rec.held.reason,
            "held_handoffs": waiting.get(name, 0),
        }
        for name, rec in sorted(held.items())
        if rec.held is not None
    ]


def release_lines(held: list[dict[str, object]]) -> list[str]:
    """One line per held agent, for `watchd status`."""
    return [
        f"release: {h['agent']} HELD since {h['since']}: {h['release']} failed its canary; "
        f"{h['held_handoffs']} handoff{'' if h['held_handoffs'] == 1 else 's'} waiting "
        f"(`watchd release promote|rollback {h['agent']}`)"
        for h in held
    ]
