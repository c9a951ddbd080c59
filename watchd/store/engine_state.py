"""The engine's state: per-key state, per-watch meta and the clock; watch versions; the subjects heard.

Commit-then-ack: `commit_step` writes engine state, decisions, new handoffs, the subjects heard and
the last stream sequence in one transaction, so a crash either keeps all of a batch or none of it,
and a redelivered message at or below the stored sequence is skipped.
"""

from __future__ import annotations

import gc
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import msgspec

from watchd.config import WatchDef
from watchd.engine import Decision, Engine, KeyState, Verdict, WatchMeta
from watchd.engine.base import NO_EVIDENCE, STORED, Kept
from watchd.model import Handoff, encode
from watchd.store.db import Transaction
from watchd.store.decisions import insert_decisions
from watchd.store.meta import get_float, set_meta
from watchd.store.outbox import fired_at, insert_handoffs

# (watch, key, state or None when the key's state is gone), (watch, meta), watches removed
Changes = tuple[list[tuple[str, str | None, KeyState | None]], list[tuple[str, WatchMeta]], set[str]]
EngineState = tuple[dict[str, dict[str | None, KeyState]], dict[str, WatchMeta], float]

_watch_meta = msgspec.json.Decoder(WatchMeta)
_keys = msgspec.json.Decoder(list[str | None])
_key_states = msgspec.json.Decoder(list[KeyState])
_key_state = msgspec.json.Decoder(KeyState)
LOAD_CHUNK = 1024  # rows read and decoded at a time when the state is read (4,096: +22 B a key in RSS)


@dataclass(frozen=True)
class Heard:
    """A row of the `subjects` table: when a subject was last heard, and from which source."""

    subject: str
    last_at: float
    last_source: str | None
    count: int


def load_engine_state(
    conn: sqlite3.Connection,
    keep: Callable[[str], bool] | None = None,
    clock_key: str = "clock",
    *,
    lazy_evidence: bool = False,
) -> EngineState:
    """(per-key state by watch, meta by watch, the engine's clock) as the last commit left them.
    `keep`: only the watches of one shard (watchd/shards.py), with that shard's clock.

    `lazy_evidence`: an absent key's evidence (a key with `last_seen`: the absent kind's field) is
    left here, `STORED` in its place, for an engine given `stored_evidence` to read when the key
    fires: most keys of an absent watch wait and never show it (−200 B a key of 100,000). The
    evidence kept in memory is copied out of the rows read, so their buffer is not held by it."""
    keys: dict[str, dict[str | None, KeyState]] = {}
    rows = conn.execute("SELECT watch, key, state FROM key_state")
    # One decode of a chunk of rows as a JSON array, not one per row: a restart with many keys
    # spends its time here. Chunks, not all the rows at once: what a chunk reads is freed before
    # the next is read, and reused by it, where 100,000 rows read at once left ~200 B a key of
    # freed memory behind, which the process kept. The objects made are all kept, so the cyclic
    # collector, which would walk them again and again as they are made, is paused meanwhile.
    was_on = gc.isenabled()
    gc.disable()
    try:
        while chunk := rows.fetchmany(LOAD_CHUNK):
            if keep is not None:
                chunk = [row for row in chunk if keep(row[0])]
            if chunk:
                _load_chunk(chunk, keys, lazy_evidence)
            del chunk
    finally:
        if was_on:
            gc.enable()
    meta = {
        w: _watch_meta.decode(m)
        for w, m in conn.execute("SELECT watch, meta FROM watch_meta")
        if keep is None or keep(w)
    }
    return keys, meta, get_float(conn, clock_key) or 0.0


def _load_chunk(
    rows: list[tuple[str, str, bytes]], keys: dict[str, dict[str | None, KeyState]], lazy_evidence: bool
) -> None:
    key_values = _keys.decode("[" + ",".join(key for _, key, _ in rows) + "]")
    states = _key_states.decode(b"[" + b",".join(bytes(state) for _, _, state in rows) + b"]")
    for state in states:
        if state.evidence:
            if lazy_evidence and state.last_seen is not None:
                state.evidence = STORED
            else:  # copied out, so the chunk's buffer goes with the chunk
                state.evidence = tuple(msgspec.Raw(bytes(raw)) for raw in state.evidence)
    for (watch, _, _), key_value, state in zip(rows, key_values, states, strict=True):
        keyed = keys.get(watch)
        if keyed is None:
            keyed = keys[watch] = {}
        keyed[key_value] = state


def stored_evidence(conn: sqlite3.Connection, watch: str, key: str | None) -> Kept:
    """The evidence a key's stored state holds (none when it has no row)."""
    row = conn.execute(
        "SELECT state FROM key_state WHERE watch = ? AND key = ?", (watch, encode(key).decode())
    ).fetchone()
    if row is None:
        return NO_EVIDENCE
    return tuple(msgspec.Raw(bytes(raw)) for raw in _key_state.decode(row[0]).evidence)


def _as_stored(conn: sqlite3.Connection, watch: str, key: str | None, state: KeyState) -> bytes:
    """A key's state as its row holds it: evidence left in the database (`STORED`) stays as it is."""
    if state.evidence is STORED:
        state = msgspec.structs.replace(state, evidence=stored_evidence(conn, watch, key))
    return encode(state)


def drop_watch_state(conn: sqlite3.Connection, keep: Callable[[str], bool]) -> int:
    """Forget the stored per-key state and meta of the watches `keep` selects (one shard's, whose
    copy here is not at any cursor of that shard: watchd/shard_engine.py); the number of watches."""
    watches = {w for (w,) in conn.execute("SELECT DISTINCT watch FROM key_state") if keep(w)}
    watches |= {w for (w,) in conn.execute("SELECT watch FROM watch_meta") if keep(w)}
    with Transaction(conn):
        conn.executemany("DELETE FROM key_state WHERE watch = ?", [(w,) for w in watches])
        conn.executemany("DELETE FROM watch_meta WHERE watch = ?", [(w,) for w in watches])
    return len(watches)


def assign_versions(conn: sqlite3.Connection, digests: dict[str, str], now: float) -> dict[str, int]:
    """Version = a counter bumped whenever a watch's content hash changes."""
    out: dict[str, int] = {}
    with Transaction(conn):
        for watch, digest in digests.items():
            row = conn.execute("SELECT digest, version FROM watch_versions WHERE watch = ?", (watch,)).fetchone()
            if row and row[0] == digest:
                out[watch] = row[1]
                continue
            version = (row[1] + 1) if row else 1
            conn.execute(
                "INSERT INTO watch_versions VALUES (?, ?, ?, ?) ON CONFLICT(watch) DO UPDATE SET "
                "digest = excluded.digest, version = excluded.version, updated_at = excluded.updated_at",
                (watch, digest, version, now),
            )
            out[watch] = version
    return out


def engine_view(conn: sqlite3.Connection, defs: list[WatchDef], zone: str, now: float) -> Engine:
    """The engine as the stored state leaves it, read-only: for next due times and timers in
    `status` and `explain`, whether or not the daemon runs."""
    engine = Engine(zone)
    # A view never fires: an absent key's evidence stays in the file (read: emptiness only).
    engine.restore(*load_engine_state(conn, lazy_evidence=True))
    versions = watch_versions(conn)
    engine.load([(d, versions.get(d.watch.id, 1)) for d in defs], now)
    return engine


def commit_step(
    conn: sqlite3.Connection,
    *,
    last_seq: int | None,
    clock: float,
    changes: Changes,
    decisions: list[Decision],
    handoffs: list[Handoff],
    subjects: dict[str, tuple[float, str, int]],
    now: float,
    holds: Mapping[str, float] | None = None,
    cursor_key: str = "last_seq",
    clock_key: str = "clock",
) -> list[str]:
    """One transaction for a whole batch. Returns the ids of handoffs that were new.

    `holds` maps a handoff id to the instant before which it must not be delivered (quiet hours).
    `cursor_key` and `clock_key`: the meta rows of the shard that stepped (watchd/shards.py).
    """
    rows, metas, deleted = changes
    with Transaction(conn):
        for watch in deleted:
            conn.execute("DELETE FROM key_state WHERE watch = ?", (watch,))
            conn.execute("DELETE FROM watch_meta WHERE watch = ?", (watch,))
        upserts = [(w, encode(k).decode(), _as_stored(conn, w, k, s)) for w, k, s in rows if s is not None]
        removals = [(w, encode(k).decode()) for w, k, s in rows if s is None]
        if upserts:
            conn.executemany("INSERT OR REPLACE INTO key_state VALUES (?, ?, ?)", upserts)
        if removals:
            conn.executemany("DELETE FROM key_state WHERE watch = ? AND key = ?", removals)
        if metas:
            conn.executemany("INSERT OR REPLACE INTO watch_meta VALUES (?, ?)", [(w, encode(m)) for w, m in metas])
        insert_decisions(conn, decisions)
        new_ids = insert_handoffs(conn, handoffs, now, holds)
        if len(new_ids) < len(handoffs):
            # The same logical fire again (e.g. an event re-sent with its id after the broker's
            # dedup window): its handoff id exists, so nothing is handed off twice. Say so for explain.
            fresh = set(new_ids)
            insert_decisions(conn, [_duplicate(conn, h, now) for h in handoffs if h.id not in fresh])
        if subjects:
            conn.executemany(
                "INSERT INTO subjects VALUES (?, ?, ?, ?) ON CONFLICT(subject) DO UPDATE SET "
                "last_at = excluded.last_at, last_source = excluded.last_source, count = count + excluded.count",
                [(s, at, src, n) for s, (at, src, n) in subjects.items()],
            )
        if last_seq is not None:
            set_meta(conn, cursor_key, str(last_seq))
        set_meta(conn, clock_key, repr(clock))
    return new_ids


def _duplicate(conn: sqlite3.Connection, h: Handoff, now: float) -> Decision:
    first_at = fired_at(conn, h.id)
    reason = f"duplicate fire key: {h.id} to {h.target} was already handed off at {first_at}"
    return Decision(now, h.watch, h.key, Verdict.SUPPRESSED, reason)


def watch_versions(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT watch, version FROM watch_versions").fetchall())


def heard(conn: sqlite3.Connection) -> list[Heard]:
    return [Heard(*r) for r in conn.execute("SELECT subject, last_at, last_source, count FROM subjects")]
