"""The state database's tables, and the columns added since a state file could have been created.

A schema change is made here and nowhere else: a new table or index goes into `SCHEMA` (created
when missing), a new column into its CREATE TABLE and into `ADDED_COLUMNS`, which adds it to
the tables of older state files.
"""

from __future__ import annotations

import sqlite3

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
    last_error TEXT, queued_seq INTEGER, decided_by TEXT);
CREATE INDEX IF NOT EXISTS handoffs_due ON handoffs (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS handoffs_target_due ON handoffs (target, state, next_attempt_at);
CREATE TABLE IF NOT EXISTS transitions (id INTEGER PRIMARY KEY, handoff_id TEXT NOT NULL, at REAL NOT NULL,
    state TEXT NOT NULL, detail TEXT);
CREATE INDEX IF NOT EXISTS transitions_handoff ON transitions (handoff_id);
CREATE TABLE IF NOT EXISTS agent_runs (id TEXT PRIMARY KEY, handoff_id TEXT NOT NULL, agent TEXT NOT NULL,
    model TEXT NOT NULL, started_at REAL NOT NULL, ended_at REAL, outcome TEXT, limit_hit TEXT, detail TEXT,
    steps INTEGER NOT NULL DEFAULT 0, input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens INTEGER NOT NULL DEFAULT 0, cache_write_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0, latency_s REAL NOT NULL DEFAULT 0, active_s REAL NOT NULL DEFAULT 0,
    escalations TEXT NOT NULL DEFAULT '[]');
CREATE INDEX IF NOT EXISTS agent_runs_handoff ON agent_runs (handoff_id, started_at);
CREATE TABLE IF NOT EXISTS agent_steps (handoff_id TEXT NOT NULL, n INTEGER NOT NULL, run_id TEXT NOT NULL,
    agent TEXT NOT NULL, at REAL NOT NULL, model TEXT NOT NULL, request TEXT NOT NULL, response TEXT NOT NULL,
    usage TEXT NOT NULL, tokens INTEGER NOT NULL, tool_results TEXT NOT NULL DEFAULT '{}',
    cost_usd REAL NOT NULL DEFAULT 0, latency_s REAL NOT NULL DEFAULT 0, meta TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (handoff_id, n));
CREATE INDEX IF NOT EXISTS agent_steps_day ON agent_steps (at, agent);
CREATE TABLE IF NOT EXISTS agent_watches (id TEXT PRIMARY KEY, agent TEXT NOT NULL, handoff_id TEXT NOT NULL,
    definition TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS agent_batches (handoff_id TEXT PRIMARY KEY, agent TEXT NOT NULL, batch_id TEXT,
    state TEXT NOT NULL, params TEXT NOT NULL, queued_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS agent_state (agent TEXT NOT NULL, watch TEXT NOT NULL, key TEXT NOT NULL,
    version INTEGER NOT NULL, doc TEXT NOT NULL, at REAL NOT NULL, handoff_id TEXT, write_id TEXT UNIQUE, note TEXT,
    PRIMARY KEY (agent, watch, key, version));
CREATE TABLE IF NOT EXISTS agent_checkpoints (agent TEXT NOT NULL, watch TEXT NOT NULL, key TEXT NOT NULL,
    handoff_id TEXT NOT NULL, run_id TEXT NOT NULL, limit_hit TEXT NOT NULL, at REAL NOT NULL, resumed_by TEXT,
    PRIMARY KEY (agent, watch, key, handoff_id));
CREATE INDEX IF NOT EXISTS agent_checkpoints_handoff ON agent_checkpoints (handoff_id);
CREATE INDEX IF NOT EXISTS agent_checkpoints_resumed ON agent_checkpoints (resumed_by);
CREATE INDEX IF NOT EXISTS agent_state_handoff ON agent_state (handoff_id);
CREATE TABLE IF NOT EXISTS schedules (name TEXT PRIMARY KEY, digest TEXT NOT NULL, version INTEGER NOT NULL,
    since REAL NOT NULL, completed_at REAL);
CREATE TABLE IF NOT EXISTS schedule_ticks (key TEXT PRIMARY KEY, schedule TEXT NOT NULL, version INTEGER NOT NULL,
    tick_at REAL NOT NULL, state TEXT NOT NULL, reason TEXT, started_at REAL, ended_at REAL, summary TEXT, data TEXT,
    trigger TEXT NOT NULL DEFAULT 'schedule', attempt INTEGER NOT NULL DEFAULT 1, next_attempt_at REAL,
    payload TEXT);
CREATE INDEX IF NOT EXISTS schedule_ticks_at ON schedule_ticks (schedule, tick_at);
CREATE TABLE IF NOT EXISTS definition_versions (kind TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL,
    digest TEXT NOT NULL, content TEXT NOT NULL, file TEXT, line INTEGER, at REAL NOT NULL, git_commit TEXT,
    git_author TEXT, git_time TEXT, git_dirty INTEGER, PRIMARY KEY (kind, name, version));
"""

# (table, column, declaration): columns added after their table first shipped. CREATE TABLE IF NOT
# EXISTS leaves an older table as it was, so each is added to it here.
ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("decisions", "n", "INTEGER NOT NULL DEFAULT 1"),
    ("agent_steps", "cost_usd", "REAL NOT NULL DEFAULT 0"),
    ("agent_steps", "latency_s", "REAL NOT NULL DEFAULT 0"),
    ("agent_steps", "meta", "TEXT NOT NULL DEFAULT '{}'"),
    ("agent_runs", "escalations", "TEXT NOT NULL DEFAULT '[]'"),
    ("schedule_ticks", "trigger", "TEXT NOT NULL DEFAULT 'schedule'"),  # schedule | manual | after
    ("schedule_ticks", "attempt", "INTEGER NOT NULL DEFAULT 1"),
    ("schedule_ticks", "next_attempt_at", "REAL"),  # state retrying: when the next attempt is due
    ("schedule_ticks", "payload", "TEXT"),  # JSON: trigger, by, period, upstream (what a retry needs)
    ("handoffs", "queued_seq", "INTEGER"),  # its message in the HANDOFFS stream, once queued there (a cluster)
    ("handoffs", "decided_by", "TEXT"),  # the instance that decided it (a cluster): for explain
)


def create(conn: sqlite3.Connection) -> None:
    """Every table and index that is missing, and every added column an older table lacks."""
    conn.executescript(SCHEMA)
    for table, column, declaration in ADDED_COLUMNS:
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in columns:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
