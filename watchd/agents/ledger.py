"""The agent runtime's SQLite records: runs, checkpointed steps, follow-up watches, the batch queue.

Every function takes a `sqlite3.Connection` and runs on the store's writer thread
(`await store.run(fn, store.conn, ...)`); a write is one transaction. A step is written as soon as its
model call returns, and each tool result as soon as the tool ran, so a restart resumes after the last
thing that happened, never before it.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from watchd.agents.envelope import Usage, day_start, next_reset
from watchd.config import AnthropicAgent, Config, Watch, WatchDef
from watchd.model import Handoff, encode, iso, stable_hash
from watchd.store import Transaction

_watch = msgspec.json.Decoder(Watch)


# ---- runs and steps ----------------------------------------------------------------------------------------


@dataclass
class Run:
    id: str
    handoff_id: str
    agent: str
    model: str
    started_at: float
    ended_at: float | None
    outcome: str | None
    limit_hit: str | None
    detail: str | None
    steps: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: float
    latency_s: float
    active_s: float

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens


_RUN_COLUMNS = (
    "id, handoff_id, agent, model, started_at, ended_at, outcome, limit_hit, detail, steps, input_tokens, "
    "output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, latency_s, active_s"
)


@dataclass
class Step:
    n: int
    run_id: str
    model: str
    request: list[dict[str, Any]]  # the user turn this call added
    response: list[dict[str, Any]]  # the assistant's content blocks
    tool_results: dict[str, dict[str, Any]]  # tool_use id -> its tool_result block, as each tool finished

    def tool_uses(self) -> list[dict[str, Any]]:
        return [b for b in self.response if b.get("type") == "tool_use"]

    def pending_tools(self) -> list[dict[str, Any]]:
        return [b for b in self.tool_uses() if b["id"] not in self.tool_results]


def last_run(conn: sqlite3.Connection, handoff_id: str) -> Run | None:
    row = conn.execute(
        f"SELECT {_RUN_COLUMNS} FROM agent_runs WHERE handoff_id = ? ORDER BY started_at DESC, rowid DESC LIMIT 1",
        (handoff_id,),
    ).fetchone()
    return Run(*row) if row else None


def new_run(conn: sqlite3.Connection, handoff_id: str, agent: str, model: str, now: float) -> Run:
    """A run continues the handoff's transcript (if an earlier run stopped at a limit) with a fresh envelope."""
    with Transaction(conn):
        (count,) = conn.execute("SELECT COUNT(*) FROM agent_runs WHERE handoff_id = ?", (handoff_id,)).fetchone()
        run_id = "r_" + stable_hash(handoff_id, "run", count)
        conn.execute(
            "INSERT INTO agent_runs (id, handoff_id, agent, model, started_at) VALUES (?, ?, ?, ?, ?)",
            (run_id, handoff_id, agent, model, now),
        )
    run = last_run(conn, handoff_id)
    assert run is not None
    return run


def steps_of(conn: sqlite3.Connection, handoff_id: str) -> list[Step]:
    rows = conn.execute(
        "SELECT n, run_id, model, request, response, tool_results FROM agent_steps WHERE handoff_id = ? ORDER BY n",
        (handoff_id,),
    ).fetchall()
    return [
        Step(n, run, model, msgspec.json.decode(req), msgspec.json.decode(resp), msgspec.json.decode(tools))
        for n, run, model, req, resp, tools in rows
    ]


def record_step(
    conn: sqlite3.Connection,
    run: Run,
    n: int,
    *,
    at: float,
    model: str,
    request: list[dict[str, Any]],
    response: list[dict[str, Any]],
    usage: Usage,
    cost: float,
    latency_s: float,
) -> None:
    """The model call of step n, and the run's counters, in one transaction."""
    with Transaction(conn):
        conn.execute(
            "INSERT INTO agent_steps (handoff_id, n, run_id, agent, at, model, request, response, usage, tokens) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run.handoff_id,
                n,
                run.id,
                run.agent,
                at,
                model,
                encode(request).decode(),
                encode(response).decode(),
                encode(usage.to_json()).decode(),
                usage.total,
            ),
        )
        conn.execute(
            "UPDATE agent_runs SET model = ?, steps = steps + 1, input_tokens = input_tokens + ?, "
            "output_tokens = output_tokens + ?, cache_read_tokens = cache_read_tokens + ?, "
            "cache_write_tokens = cache_write_tokens + ?, cost_usd = cost_usd + ?, latency_s = latency_s + ? "
            "WHERE id = ?",
            (model, usage.input, usage.output, usage.cache_read, usage.cache_write, cost, latency_s, run.id),
        )


def record_tool_result(
    conn: sqlite3.Connection,
    handoff_id: str,
    n: int,
    tool_use_id: str,
    result: dict[str, Any],
    effect: Callable[[sqlite3.Connection], None] | None = None,
) -> None:
    """A tool's result — and its effect, when the effect is itself a write here — in one transaction."""
    with Transaction(conn):
        if effect is not None:
            effect(conn)
        (raw,) = conn.execute(
            "SELECT tool_results FROM agent_steps WHERE handoff_id = ? AND n = ?", (handoff_id, n)
        ).fetchone()
        results = msgspec.json.decode(raw)
        results[tool_use_id] = result
        conn.execute(
            "UPDATE agent_steps SET tool_results = ? WHERE handoff_id = ? AND n = ?",
            (encode(results).decode(), handoff_id, n),
        )


def close_run(
    conn: sqlite3.Connection, run_id: str, now: float, outcome: str, detail: str, limit_hit: str | None = None
) -> None:
    conn.execute(
        "UPDATE agent_runs SET ended_at = ?, outcome = ?, detail = ?, limit_hit = ? WHERE id = ?",
        (now, outcome, detail, limit_hit, run_id),
    )


def note_run(
    conn: sqlite3.Connection, run_id: str, *, active_s: float, detail: str | None = None, limit_hit: str | None = None
) -> None:
    """Time spent in this delivery, and why an open run paused (a daily budget, a retryable error)."""
    conn.execute("UPDATE agent_runs SET active_s = active_s + ? WHERE id = ?", (active_s, run_id))
    if detail is not None:
        conn.execute("UPDATE agent_runs SET detail = ?, limit_hit = ? WHERE id = ?", (detail, limit_hit, run_id))


def tokens_since(conn: sqlite3.Connection, since: float, agent: str | None = None) -> int:
    sql, params = "SELECT COALESCE(SUM(tokens), 0) FROM agent_steps WHERE at >= ?", list[object]([since])
    if agent is not None:
        sql, params = sql + " AND agent = ?", [*params, agent]
    return int(conn.execute(sql, params).fetchone()[0])


def tokens_by_agent(conn: sqlite3.Connection, since: float) -> dict[str, int]:
    rows = conn.execute("SELECT agent, SUM(tokens) FROM agent_steps WHERE at >= ? GROUP BY agent", (since,))
    return {agent: int(n) for agent, n in rows}


def list_runs(conn: sqlite3.Connection, limit: int) -> list[Run]:
    rows = conn.execute(
        f"SELECT {_RUN_COLUMNS} FROM agent_runs ORDER BY started_at DESC, rowid DESC LIMIT ?", (limit,)
    ).fetchall()
    return [Run(*r) for r in rows]


# ---- effects of tools ----------------------------------------------------------------------------------


def enqueue_handoff(h: Handoff, now: float) -> Callable[[sqlite3.Connection], None]:
    """A handoff into the outbox, as the engine's fires go there; a second insert of the same id does nothing."""

    def write(conn: sqlite3.Connection) -> None:
        cur = conn.execute(
            "INSERT OR IGNORE INTO handoffs (id, watch, watch_version, kind, key, target, trigger, reason, fired_at, "
            "window, evidence, message, attempt, state, created_at, updated_at, next_attempt_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
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
                now,
                now,
                now,
            ),
        )
        if cur.rowcount:
            conn.execute(
                "INSERT INTO transitions (handoff_id, at, state, detail) VALUES (?, ?, 'pending', ?)",
                (h.id, now, f"from {h.trigger}"),
            )

    return write


def add_watch(
    watch: Watch,
    agent: str,
    handoff_id: str,
    now: float,
    expires_at: float,
) -> Callable[[sqlite3.Connection], None]:
    def write(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT OR IGNORE INTO agent_watches VALUES (?, ?, ?, ?, ?, ?)",
            (watch.id, agent, handoff_id, encode(watch).decode(), now, expires_at),
        )

    return write


def active_watch_defs(conn: sqlite3.Connection, now: float) -> list[WatchDef]:
    """Follow-up watches agents created that have not expired, as definitions for the engine."""
    defs = []
    rows = conn.execute(
        "SELECT definition, agent, handoff_id FROM agent_watches WHERE expires_at > ? ORDER BY created_at", (now,)
    )
    for definition, agent, handoff_id in rows:
        watch = _watch.decode(definition)
        digest = hashlib.sha256(definition.encode()).hexdigest()[:16]
        defs.append(WatchDef(watch, f"{agent} (handoff {handoff_id})", 0, digest))
    return defs


def next_watch_expiry(conn: sqlite3.Connection, now: float) -> float | None:
    row = conn.execute("SELECT MIN(expires_at) FROM agent_watches WHERE expires_at > ?", (now,)).fetchone()
    return float(row[0]) if row and row[0] is not None else None


# ---- the batch queue --------------------------------------------------------------------------------------


def queue_batch_item(conn: sqlite3.Connection, handoff_id: str, agent: str, params: dict[str, Any], now: float) -> str:
    """Queue a request (again, after a failed batch); returns its state: queued, submitted or done."""
    with Transaction(conn):
        row = conn.execute("SELECT state FROM agent_batches WHERE handoff_id = ?", (handoff_id,)).fetchone()
        if row is not None and row[0] in ("queued", "submitted", "done"):
            return str(row[0])
        conn.execute(
            "INSERT OR REPLACE INTO agent_batches VALUES (?, ?, NULL, 'queued', ?, ?, ?)",
            (handoff_id, agent, encode(params).decode(), now, now),
        )
    return "queued"


def queued_items(conn: sqlite3.Connection, agent: str) -> list[tuple[str, dict[str, Any]]]:
    rows = conn.execute(
        "SELECT handoff_id, params FROM agent_batches WHERE agent = ? AND state = 'queued' ORDER BY queued_at", (agent,)
    )
    return [(hid, msgspec.json.decode(params)) for hid, params in rows]


def submitted_items(conn: sqlite3.Connection) -> list[tuple[str, dict[str, Any]]]:
    """(agent, params) of every request in a batch whose results have not been settled yet."""
    rows = conn.execute("SELECT agent, params FROM agent_batches WHERE state = 'submitted'")
    return [(agent, msgspec.json.decode(params)) for agent, params in rows]


def mark_submitted(conn: sqlite3.Connection, handoff_ids: list[str], batch_id: str, now: float) -> None:
    with Transaction(conn):
        conn.executemany(
            "UPDATE agent_batches SET state = 'submitted', batch_id = ?, updated_at = ? WHERE handoff_id = ?",
            [(batch_id, now, hid) for hid in handoff_ids],
        )


def open_batches(conn: sqlite3.Connection, agent: str) -> list[str]:
    rows = conn.execute("SELECT DISTINCT batch_id FROM agent_batches WHERE agent = ? AND state = 'submitted'", (agent,))
    return [r[0] for r in rows]


def set_batch_item(conn: sqlite3.Connection, handoff_id: str, state: str, now: float) -> None:
    conn.execute("UPDATE agent_batches SET state = ?, updated_at = ? WHERE handoff_id = ?", (state, now, handoff_id))


# ---- today's tokens (`watchd status`) ---------------------------------------------------------------------


def budget_report(config: Config, conn: sqlite3.Connection | None, now: float) -> dict[str, Any]:
    """Tokens spent today (UTC) per anthropic agent against its budget, the global budget, and how many
    handoffs wait for tomorrow's budget (`budget_exhausted`)."""
    since = day_start(now)
    used: dict[str, int] = {}
    waiting: dict[str, int] = {}
    if conn is not None:
        with contextlib.suppress(sqlite3.OperationalError):  # a state file from before these tables
            used = tokens_by_agent(conn, since)
            waiting = dict(
                conn.execute(
                    "SELECT target, COUNT(*) FROM handoffs WHERE state = 'pending' "
                    "AND last_error LIKE 'budget_exhausted:%' GROUP BY target"
                ).fetchall()
            )
    agents = [
        {
            "agent": f"agent.{name}",
            "tokens": used.get(f"agent.{name}", 0),
            "daily_token_budget": a.daily_token_budget,
            "budget_exhausted": waiting.get(f"agent.{name}", 0),
        }
        for name, a in sorted(config.agent.items())
        if isinstance(a, AnthropicAgent)
    ]
    return {
        "day": iso(since),
        "resets_at": iso(next_reset(now)),
        "tokens": sum(used.values()),
        "daily_tokens": config.budget.daily_tokens,
        "budget_exhausted": sum(waiting.values()),
        "agents": agents,
    }


def budget_lines(report: dict[str, Any]) -> list[str]:
    if not report["agents"]:
        return []
    cap = report["daily_tokens"]
    head = f"tokens today (UTC, resets {report['resets_at']}): {report['tokens']:,}" + (f" of {cap:,}" if cap else "")
    lines = [head]
    for a in report["agents"]:
        waiting = f", {a['budget_exhausted']} handoffs budget_exhausted" if a["budget_exhausted"] else ""
        lines.append(f"  {a['agent']}: {a['tokens']:,} of {a['daily_token_budget']:,}{waiting}")
    return lines
