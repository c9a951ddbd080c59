"""SQLite state: engine state, decisions, handoff outbox, all under one writer thread.

Commit-then-ack: `commit_step` writes engine state, decisions, new handoffs and the last stream
sequence in one transaction, so a crash either keeps all of a batch or none of it, and a
redelivered message at or below the stored sequence is skipped.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import sqlite_utils

from watchd.config import WatchDef
from watchd.engine import Decision, Engine, KeyState, WatchMeta
from watchd.errors import WatchdError
from watchd.model import Handoff, Window, encode, iso

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT);
CREATE TABLE IF NOT EXISTS watch_versions (watch TEXT PRIMARY KEY, digest TEXT NOT NULL, version INTEGER NOT NULL,
    updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS key_state (watch TEXT NOT NULL, key TEXT NOT NULL, state BLOB NOT NULL,
    PRIMARY KEY (watch, key));
CREATE TABLE IF NOT EXISTS watch_meta (watch TEXT PRIMARY KEY, meta BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (id INTEGER PRIMARY KEY, at REAL NOT NULL, watch TEXT NOT NULL, key TEXT,
    verdict TEXT NOT NULL, reason TEXT NOT NULL, event_id TEXT, seq INTEGER, n INTEGER NOT NULL DEFAULT 1);
CREATE INDEX IF NOT EXISTS decisions_watch_at ON decisions (watch, at);
CREATE INDEX IF NOT EXISTS decisions_event ON decisions (event_id);
CREATE TABLE IF NOT EXISTS subjects (subject TEXT PRIMARY KEY, last_at REAL NOT NULL, last_source TEXT,
    count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS handoffs (id TEXT PRIMARY KEY, watch TEXT NOT NULL, watch_version INTEGER NOT NULL,
    kind TEXT NOT NULL, key TEXT, target TEXT NOT NULL, trigger TEXT NOT NULL, reason TEXT NOT NULL,
    fired_at TEXT NOT NULL, window TEXT, evidence TEXT NOT NULL, message TEXT, attempt INTEGER NOT NULL,
    state TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL, next_attempt_at REAL NOT NULL,
    last_error TEXT);
CREATE INDEX IF NOT EXISTS handoffs_due ON handoffs (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS handoffs_target_due ON handoffs (target, state, next_attempt_at);
CREATE TABLE IF NOT EXISTS transitions (id INTEGER PRIMARY KEY, handoff_id TEXT NOT NULL, at REAL NOT NULL,
    state TEXT NOT NULL, detail TEXT);
CREATE INDEX IF NOT EXISTS transitions_handoff ON transitions (handoff_id);
CREATE TABLE IF NOT EXISTS agent_runs (id TEXT PRIMARY KEY, handoff_id TEXT NOT NULL, agent TEXT NOT NULL,
    model TEXT NOT NULL, started_at REAL NOT NULL, ended_at REAL, outcome TEXT, limit_hit TEXT, detail TEXT,
    steps INTEGER NOT NULL DEFAULT 0, input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens INTEGER NOT NULL DEFAULT 0, cache_write_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0, latency_s REAL NOT NULL DEFAULT 0, active_s REAL NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS agent_runs_handoff ON agent_runs (handoff_id, started_at);
CREATE TABLE IF NOT EXISTS agent_steps (handoff_id TEXT NOT NULL, n INTEGER NOT NULL, run_id TEXT NOT NULL,
    agent TEXT NOT NULL, at REAL NOT NULL, model TEXT NOT NULL, request TEXT NOT NULL, response TEXT NOT NULL,
    usage TEXT NOT NULL, tokens INTEGER NOT NULL, tool_results TEXT NOT NULL DEFAULT '{}', PRIMARY KEY (handoff_id, n));
CREATE INDEX IF NOT EXISTS agent_steps_day ON agent_steps (at, agent);
CREATE TABLE IF NOT EXISTS agent_watches (id TEXT PRIMARY KEY, agent TEXT NOT NULL, handoff_id TEXT NOT NULL,
    definition TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS agent_batches (handoff_id TEXT PRIMARY KEY, agent TEXT NOT NULL, batch_id TEXT,
    state TEXT NOT NULL, params TEXT NOT NULL, queued_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS schedules (name TEXT PRIMARY KEY, digest TEXT NOT NULL, version INTEGER NOT NULL,
    since REAL NOT NULL, completed_at REAL);
CREATE TABLE IF NOT EXISTS schedule_ticks (key TEXT PRIMARY KEY, schedule TEXT NOT NULL, version INTEGER NOT NULL,
    tick_at REAL NOT NULL, state TEXT NOT NULL, reason TEXT, started_at REAL, ended_at REAL, summary TEXT, data TEXT);
CREATE INDEX IF NOT EXISTS schedule_ticks_at ON schedule_ticks (schedule, tick_at);
"""

_key_state = msgspec.json.Decoder(KeyState)
_watch_meta = msgspec.json.Decoder(WatchMeta)
_key = msgspec.json.Decoder(str | None)
_window = msgspec.json.Decoder(Window | None)
_evidence = msgspec.json.Decoder(list[dict[str, Any]])


def db_path(state_dir: Path) -> Path:
    return state_dir / "watchd.db"


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """WAL + synchronous=NORMAL: durable at each commit's checkpoint, fast on a laptop disk."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=10)
    else:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fresh = not path.exists()
        conn = sqlite3.connect(path, check_same_thread=False, timeout=10, isolation_level=None)
        if fresh:
            os.chmod(path, 0o600)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


class Store:
    """The single writer. Every method runs on its one thread; async callers use `run`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="watchd-store")
        self.conn = connect(path)
        self.db = sqlite_utils.Database(self.conn)
        self.conn.executescript(SCHEMA)
        self._migrate()
        for suffix in ("-wal", "-shm"):
            sidecar = Path(str(path) + suffix)
            if sidecar.exists():
                os.chmod(sidecar, 0o600)

    def _migrate(self) -> None:
        """Columns added since a state db was created (CREATE TABLE IF NOT EXISTS keeps old tables)."""
        columns = {row[1] for row in self.conn.execute("PRAGMA table_info(decisions)")}
        if "n" not in columns:
            self.conn.execute("ALTER TABLE decisions ADD COLUMN n INTEGER NOT NULL DEFAULT 1")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.conn.close()

    # ---- meta ----

    def get_meta(self, k: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT v FROM meta WHERE k = ?", (k,)).fetchone()
        return row[0] if row else default

    def set_meta(self, k: str, v: str) -> None:
        self.conn.execute("INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v", (k, v))

    def last_seq(self) -> int:
        return int(self.get_meta("last_seq", "0") or 0)

    # ---- watch versions ----

    def assign_versions(self, digests: dict[str, str], now: float) -> dict[str, int]:
        """Version = a counter bumped whenever a watch's content hash changes."""
        out: dict[str, int] = {}
        with self._tx():
            for watch, digest in digests.items():
                row = self.conn.execute(
                    "SELECT digest, version FROM watch_versions WHERE watch = ?", (watch,)
                ).fetchone()
                if row and row[0] == digest:
                    out[watch] = row[1]
                    continue
                version = (row[1] + 1) if row else 1
                self.conn.execute(
                    "INSERT INTO watch_versions VALUES (?, ?, ?, ?) ON CONFLICT(watch) DO UPDATE SET "
                    "digest = excluded.digest, version = excluded.version, updated_at = excluded.updated_at",
                    (watch, digest, version, now),
                )
                out[watch] = version
        return out

    # ---- engine state ----

    def load_engine_state(self) -> tuple[dict[str, dict[str | None, KeyState]], dict[str, WatchMeta], float]:
        return self.load_engine_state_from(self.conn)

    @staticmethod
    def load_engine_state_from(
        conn: sqlite3.Connection,
    ) -> tuple[dict[str, dict[str | None, KeyState]], dict[str, WatchMeta], float]:
        keys: dict[str, dict[str | None, KeyState]] = {}
        for watch, key, state in conn.execute("SELECT watch, key, state FROM key_state"):
            keys.setdefault(watch, {})[_key.decode(key)] = _key_state.decode(state)
        meta = {w: _watch_meta.decode(m) for w, m in conn.execute("SELECT watch, meta FROM watch_meta")}
        row = conn.execute("SELECT v FROM meta WHERE k = 'clock'").fetchone()
        return keys, meta, float(row[0]) if row else 0.0

    def commit_step(
        self,
        *,
        last_seq: int | None,
        clock: float,
        changes: tuple[list[tuple[str, str | None, KeyState | None]], list[tuple[str, WatchMeta]], set[str]],
        decisions: list[Decision],
        handoffs: list[Handoff],
        subjects: dict[str, tuple[float, str, int]],
        now: float,
        holds: Mapping[str, float] | None = None,
    ) -> list[str]:
        """One transaction for a whole batch. Returns the ids of handoffs that were new.

        `holds` maps a handoff id to the instant before which it must not be delivered (quiet hours).
        """
        rows, metas, deleted = changes
        new_ids: list[str] = []
        with self._tx():
            c = self.conn
            for watch in deleted:
                c.execute("DELETE FROM key_state WHERE watch = ?", (watch,))
                c.execute("DELETE FROM watch_meta WHERE watch = ?", (watch,))
            upserts = [(w, encode(k).decode(), encode(s)) for w, k, s in rows if s is not None]
            removals = [(w, encode(k).decode()) for w, k, s in rows if s is None]
            if upserts:
                c.executemany("INSERT OR REPLACE INTO key_state VALUES (?, ?, ?)", upserts)
            if removals:
                c.executemany("DELETE FROM key_state WHERE watch = ? AND key = ?", removals)
            if metas:
                c.executemany("INSERT OR REPLACE INTO watch_meta VALUES (?, ?)", [(w, encode(m)) for w, m in metas])
            if decisions:
                c.executemany(
                    "INSERT INTO decisions (at, watch, key, verdict, reason, event_id, seq, n) "
                    "VALUES (?,?,?,?,?,?,?,?)",
                    [(d.at, d.watch, d.key, d.verdict, d.reason, d.event_id, d.seq, d.n) for d in decisions],
                )
            new_ids = self._insert_handoffs(handoffs, now, holds)
            if len(new_ids) < len(handoffs):
                # The same logical fire again (e.g. an event re-sent with its id after the broker's
                # dedup window): its handoff id exists, so nothing is handed off twice. Say so for explain.
                fresh = set(new_ids)
                for h in handoffs:
                    if h.id not in fresh:
                        (first_at,) = c.execute("SELECT fired_at FROM handoffs WHERE id = ?", (h.id,)).fetchone()
                        reason = f"duplicate fire key: {h.id} to {h.target} was already handed off at {first_at}"
                        c.execute(
                            "INSERT INTO decisions (at, watch, key, verdict, reason) VALUES (?,?,?,?,?)",
                            (now, h.watch, h.key, "suppressed", reason),
                        )
            if subjects:
                c.executemany(
                    "INSERT INTO subjects VALUES (?, ?, ?, ?) ON CONFLICT(subject) DO UPDATE SET "
                    "last_at = excluded.last_at, last_source = excluded.last_source, count = count + excluded.count",
                    [(s, at, src, n) for s, (at, src, n) in subjects.items()],
                )
            if last_seq is not None:
                self.set_meta("last_seq", str(last_seq))
            self.set_meta("clock", repr(clock))
        return new_ids

    def add_handoffs(self, handoffs: list[Handoff], now: float) -> list[str]:
        """Insert handoffs made outside the engine (a schedule's `then`) in one transaction; the ids
        that were new (an id already stored is ignored: the same tick never hands off twice)."""
        with self._tx():
            return self._insert_handoffs(handoffs, now, None)

    def _insert_handoffs(self, handoffs: list[Handoff], now: float, holds: Mapping[str, float] | None) -> list[str]:
        new_ids: list[str] = []
        for h in handoffs:
            held = (holds or {}).get(h.id)
            cur = self.conn.execute(
                "INSERT OR IGNORE INTO handoffs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    h.id,
                    h.watch,
                    h.watch_version,
                    h.kind,
                    h.key,
                    h.target,
                    h.trigger,
                    h.reason,
                    h.fired_at,
                    encode(h.window).decode(),
                    encode(h.evidence).decode(),
                    h.message,
                    h.attempt,
                    h.state,
                    now,
                    now,
                    now if held is None else max(now, held),
                    None,
                ),
            )
            if cur.rowcount:
                new_ids.append(h.id)
                detail = None if held is None else f"held for quiet hours until {iso(held)}"
                self.conn.execute(
                    "INSERT INTO transitions (handoff_id, at, state, detail) VALUES (?,?,?,?)",
                    (h.id, now, "pending", detail),
                )
        return new_ids

    # ---- outbox ----

    def recover_in_flight(self, now: float) -> int:
        """A handoff that was being delivered when watchd died is retried, with the same id."""
        ids = [r[0] for r in self.conn.execute("SELECT id FROM handoffs WHERE state = 'delivering'")]
        return self._requeue(ids, now, "watchd restarted during delivery")

    def requeue_stuck(self, ids: Iterable[str], now: float) -> int:
        """Deliveries still `delivering` long past their lease (an outcome that was never recorded)
        are retried now, with the same id."""
        return self._requeue(ids, now, "stuck in delivery past its lease")

    def _requeue(self, ids: Iterable[str], now: float, detail: str) -> int:
        """`delivering` → `retrying`, due now; one that finished meanwhile is left alone."""
        n = 0
        with self._tx():
            for hid in ids:
                row = self.conn.execute("SELECT state FROM handoffs WHERE id = ?", (hid,)).fetchone()
                if row and row[0] == "delivering":
                    self._transition(hid, "retrying", now, detail, next_attempt_at=now)
                    n += 1
        return n

    def claim_due(self, now: float, room: dict[str, int] | None = None, limit: int = 64) -> list[Handoff]:
        """Move due handoffs to `delivering` and return them, at most `room[target]` per target.

        Only what a target can start now is claimed: a stalled target's backlog stays `pending`
        (and costs no attempt if watchd restarts) instead of queueing in memory as `delivering`.
        A target missing from `room` (not configured) gets `limit`, so it dead-letters promptly.
        """
        # A plain read first: the dispatcher looks every few seconds, and an empty look should
        # not take the write lock.
        full = [t for t, n in (room or {}).items() if n <= 0]
        due = self.conn.execute(
            "SELECT target FROM handoffs WHERE state IN ('pending', 'retrying') AND next_attempt_at <= ? "
            f"AND target NOT IN ({','.join('?' * len(full))}) GROUP BY target",
            (now, *full),
        ).fetchall()
        if not due:
            return []
        rows: list[dict[str, Any]] = []
        with self._tx():
            for (target,) in due:
                take = min(limit, (room or {}).get(target, limit))
                rows += self.db.query(
                    "SELECT * FROM handoffs WHERE target = ? AND state IN ('pending', 'retrying') "
                    "AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?",
                    (target, now, take),
                )
            for r in rows:
                self._transition(r["id"], "delivering", now, None)
        return [row_to_handoff(r, state="delivering") for r in rows]

    def next_attempt_at(self, room: dict[str, int] | None = None) -> float | None:
        """The earliest due time among targets that have room (a full one wakes the loop when it frees)."""
        full = [t for t, n in (room or {}).items() if n <= 0]
        row = self.conn.execute(
            "SELECT MIN(next_attempt_at) FROM handoffs WHERE state IN ('pending', 'retrying') "
            f"AND target NOT IN ({','.join('?' * len(full))})",
            full,
        ).fetchone()
        return row[0] if row and row[0] is not None else None

    def finish(
        self, hid: str, state: str, now: float, detail: str | None, next_attempt_at: float | None = None
    ) -> None:
        with self._tx():
            self._transition(hid, state, now, detail, next_attempt_at=next_attempt_at)

    def settle(self, hid: str, state: str, now: float, detail: str | None, only_from: Iterable[str]) -> str | None:
        """Move a handoff to `state` only while it is in one of `only_from` (a remote worker's reply
        that comes after its delivery ended); returns the state it was in, None for an unknown id."""
        with self._tx():
            row = self.conn.execute("SELECT state FROM handoffs WHERE id = ?", (hid,)).fetchone()
            if row is None:
                return None
            if row[0] in set(only_from):
                self._transition(hid, state, now, detail)
            return str(row[0])

    def _transition(
        self, hid: str, state: str, now: float, detail: str | None, *, next_attempt_at: float | None = None
    ) -> None:
        bump = ", attempt = attempt + 1" if state == "retrying" else ""
        self.conn.execute(
            f"UPDATE handoffs SET state = ?, updated_at = ?, last_error = COALESCE(?, last_error), "
            f"next_attempt_at = COALESCE(?, next_attempt_at){bump} WHERE id = ?",
            (state, now, detail if state in ("failed", "retrying", "dead", "pending") else None, next_attempt_at, hid),
        )
        self.conn.execute(
            "INSERT INTO transitions (handoff_id, at, state, detail) VALUES (?,?,?,?)", (hid, now, state, detail)
        )

    def prune_decisions(self, older_than: float, keep_rows: int) -> int:
        with self._tx():
            cur = self.conn.execute("DELETE FROM decisions WHERE at < ?", (older_than,))
            removed = cur.rowcount
            cutoff = older_than if removed else None  # before it, nothing is kept: explain says so
            row = self.conn.execute("SELECT MAX(id) FROM decisions").fetchone()
            if row and row[0] is not None:
                last_id = row[0] - keep_rows
                edge = self.conn.execute("SELECT MAX(at) FROM decisions WHERE id <= ?", (last_id,)).fetchone()
                by_count = self.conn.execute("DELETE FROM decisions WHERE id <= ?", (last_id,)).rowcount
                if by_count and edge[0] is not None:
                    cutoff = max(cutoff or edge[0], edge[0])
                removed += by_count
            if cutoff is not None and cutoff > float(self.get_meta("decisions_kept_from", "0") or 0):
                self.set_meta("decisions_kept_from", repr(cutoff))
        return removed

    def _tx(self) -> Transaction:
        return Transaction(self.conn)


class Transaction:
    """`with Transaction(conn):` one IMMEDIATE transaction, rolled back if the block raises."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


def engine_view(conn: sqlite3.Connection, defs: list[WatchDef], zone: str, now: float) -> Engine:
    """The engine as the stored state leaves it, read-only: for next due times and timers in
    `status` and `explain`, whether or not the daemon runs."""
    engine = Engine(zone)
    engine.restore(*Store.load_engine_state_from(conn))
    versions = dict(conn.execute("SELECT watch, version FROM watch_versions").fetchall())
    engine.load([(d, versions.get(d.watch.id, 1)) for d in defs], now)
    return engine


def row_to_handoff(r: dict[str, Any], state: str | None = None) -> Handoff:
    return Handoff(
        id=r["id"],
        watch=r["watch"],
        watch_version=r["watch_version"],
        kind=r["kind"],
        key=r["key"],
        target=r["target"],
        trigger=r["trigger"],
        reason=r["reason"],
        fired_at=r["fired_at"],
        window=_window.decode(r["window"]) if r["window"] else None,
        evidence=_evidence.decode(r["evidence"]),
        attempt=r["attempt"],
        message=r["message"],
        state=state or r["state"],  # type: ignore[arg-type]
    )


def read_handoffs(conn: sqlite3.Connection, state: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    db = sqlite_utils.Database(conn)
    where, params = ("WHERE state = ?", [state]) if state else ("", [])
    rows = db.query(f"SELECT * FROM handoffs {where} ORDER BY created_at DESC LIMIT ?", [*params, limit])
    return list(rows)


def transitions_of(conn: sqlite3.Connection, ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    db = sqlite_utils.Database(conn)
    for hid in ids:
        out[hid] = list(db.query("SELECT at, state, detail FROM transitions WHERE handoff_id = ? ORDER BY id", [hid]))
    return out


# ---- dead letters (`watchd dlq`): short write transactions from the CLI, beside the running daemon ----


def open_readonly(state_dir: Path) -> sqlite3.Connection | None:
    """The state db read-only (safe beside a running daemon), or None when watchd has not run yet."""
    path = db_path(state_dir)
    return connect(path, readonly=True) if path.exists() else None


def connect_existing(path: Path) -> sqlite3.Connection:
    """A read-write connection to a state file that must already exist (WAL: the daemon may be running)."""
    if not path.exists():
        raise WatchdError(f"no watchd state at {path}", hint="has watchd run with this config? check state_dir")
    return connect(path)


def find_handoff(conn: sqlite3.Connection, ref: str) -> dict[str, Any]:
    """A handoff by its id, or by an unambiguous prefix of it (ids are long to type)."""
    db = sqlite_utils.Database(conn)
    rows = list(db.query("SELECT * FROM handoffs WHERE id = ?", [ref]))
    if not rows and len(ref) >= 4:
        pattern = ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = list(db.query("SELECT * FROM handoffs WHERE id LIKE ? ESCAPE '\\' LIMIT 2", [pattern]))
    if not rows:
        raise WatchdError(f"no handoff with id {ref!r}", hint="see dead letters and their ids with `watchd dlq list`")
    if len(rows) > 1:
        raise WatchdError(f"handoff id {ref!r} is ambiguous", hint="give more of the id; see `watchd dlq list`")
    return rows[0]


def replay_dead(conn: sqlite3.Connection, ref: str, now: float) -> dict[str, Any]:
    """Send a dead (or dropped) handoff again, with the same id: `retrying`, due now, attempt 1.

    The same id keeps delivery deduplicated downstream. A running dispatcher sees it within its
    poll interval; a stopped one on start.
    """
    with Transaction(conn):
        row = find_handoff(conn, ref)
        if row["state"] not in ("dead", "dropped"):
            raise WatchdError(
                f"handoff {row['id']} is {row['state']}, not dead",
                hint="only dead (or dropped) handoffs can be replayed; see `watchd dlq list`",
            )
        conn.execute(
            "UPDATE handoffs SET state = 'retrying', attempt = 1, next_attempt_at = ?, updated_at = ? WHERE id = ?",
            (now, now, row["id"]),
        )
        conn.execute(
            "INSERT INTO transitions (handoff_id, at, state, detail) VALUES (?,?,?,?)",
            (row["id"], now, "retrying", "replayed by user"),
        )
    return row


def drop_dead(conn: sqlite3.Connection, ref: str, now: float) -> dict[str, Any]:
    """Give up on a dead handoff for good: `dropped` is terminal and leaves the dead-letter list."""
    with Transaction(conn):
        row = find_handoff(conn, ref)
        if row["state"] != "dead":
            raise WatchdError(
                f"handoff {row['id']} is {row['state']}, not dead",
                hint="only dead handoffs can be dropped; see `watchd dlq list`",
            )
        conn.execute("UPDATE handoffs SET state = 'dropped', updated_at = ? WHERE id = ?", (now, row["id"]))
        conn.execute(
            "INSERT INTO transitions (handoff_id, at, state, detail) VALUES (?,?,?,?)",
            (row["id"], now, "dropped", "dropped by user"),
        )
    return row
