"""Agent runs and their checkpointed steps (`agent_runs`, `agent_steps`).

A step is written as soon as its model call returns, and each tool result as soon as the tool ran,
so a restart resumes after the last thing that happened, never before it. A write is one
transaction.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from watchd.model import encode, iso, stable_hash
from watchd.store.db import Transaction, Write

if TYPE_CHECKING:
    from watchd.agents.envelope import Usage


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
    escalations_json: str = "[]"

    @property
    def escalations(self) -> list[dict[str, Any]]:
        """Each move to a larger model: {"step", "from", "to", "reason"}."""
        found: list[dict[str, Any]] = msgspec.json.decode(self.escalations_json)
        return found

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens


_RUN_COLUMNS = (
    "id, handoff_id, agent, model, started_at, ended_at, outcome, limit_hit, detail, steps, input_tokens, "
    "output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, latency_s, active_s, escalations"
)


@dataclass
class Step:
    n: int
    run_id: str
    model: str
    request: list[dict[str, Any]]  # the user turn this call added
    response: list[dict[str, Any]]  # the assistant's content blocks
    tool_results: dict[str, dict[str, Any]]  # tool_use id -> its tool_result block, as each tool finished
    meta: dict[str, Any] = field(default_factory=dict)  # the request's shape; a checkpoint it resumed

    def tool_uses(self) -> list[dict[str, Any]]:
        return [b for b in self.response if b.get("type") == "tool_use"]

    def pending_tools(self) -> list[dict[str, Any]]:
        return [b for b in self.tool_uses() if b["id"] not in self.tool_results]


@dataclass
class StepRecord:
    """A step as the transcript shows it: the call, its answer, the tools' results, and what it cost."""

    n: int
    run_id: str
    at: float
    model: str
    request: list[dict[str, Any]]
    response: list[dict[str, Any]]
    tool_results: dict[str, dict[str, Any]]
    usage: dict[str, int]
    tokens: int
    cost_usd: float
    latency_s: float
    meta: dict[str, Any]


def step_records(conn: sqlite3.Connection, handoff_id: str) -> list[StepRecord]:
    """Every step of a handoff's transcript, whichever run made it, in order."""
    rows = conn.execute(
        "SELECT n, run_id, at, model, request, response, tool_results, usage, tokens, cost_usd, latency_s, meta "
        "FROM agent_steps WHERE handoff_id = ? ORDER BY n",
        (handoff_id,),
    ).fetchall()
    dec = msgspec.json.decode
    return [
        StepRecord(n, run, at, model, dec(req), dec(resp), dec(tools), dec(usage), tokens, cost, latency, dec(meta))
        for n, run, at, model, req, resp, tools, usage, tokens, cost, latency, meta in rows
    ]


def find_runs(conn: sqlite3.Connection, ref: str) -> list[Run]:
    """The runs `ref` names: a run id (or a prefix of one), or a handoff id (each of its runs), oldest first."""
    rows = conn.execute(
        f"SELECT {_RUN_COLUMNS} FROM agent_runs WHERE id = ? OR handoff_id = ? ORDER BY started_at, rowid",
        (ref, ref),
    ).fetchall()
    if not rows:
        escaped = ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = conn.execute(
            f"SELECT {_RUN_COLUMNS} FROM agent_runs WHERE id LIKE ? ESCAPE '\\' ORDER BY started_at, rowid",
            (escaped + "%",),
        ).fetchall()
    return [Run(*r) for r in rows]


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
        "SELECT n, run_id, model, request, response, tool_results, meta FROM agent_steps WHERE handoff_id = ? "
        "ORDER BY n",
        (handoff_id,),
    ).fetchall()
    dec = msgspec.json.decode
    return [
        Step(n, run, model, dec(req), dec(resp), dec(tools), dec(meta))
        for n, run, model, req, resp, tools, meta in rows
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
    meta: dict[str, Any] | None = None,
    effect: Write | None = None,
) -> None:
    """The model call of step n, and the run's counters, in one transaction. `meta` says what the
    request was beyond its new turn (the output cap, the conversation's length, an escalation)."""
    with Transaction(conn):
        if effect is not None:
            effect(conn)
        conn.execute(
            "INSERT INTO agent_steps (handoff_id, n, run_id, agent, at, model, request, response, usage, tokens, "
            "cost_usd, latency_s, meta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                cost,
                latency_s,
                encode(meta or {}).decode(),
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
    effect: Write | None = None,
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


def escalate(run_id: str, step: int, old: str, new: str, reason: str) -> Write:
    """The run moves to a larger model from its next call on (inside the caller's transaction)."""

    def write(conn: sqlite3.Connection) -> None:
        (raw,) = conn.execute("SELECT escalations FROM agent_runs WHERE id = ?", (run_id,)).fetchone()
        done = msgspec.json.decode(raw)
        done.append({"step": step, "from": old, "to": new, "reason": reason})
        conn.execute(
            "UPDATE agent_runs SET model = ?, escalations = ? WHERE id = ?", (new, encode(done).decode(), run_id)
        )

    return write


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


def run_json(r: Run) -> dict[str, Any]:
    return {
        "id": r.id,
        "handoff_id": r.handoff_id,
        "agent": r.agent,
        "model": r.model,
        "started_at": iso(r.started_at),
        "ended_at": iso(r.ended_at),
        "outcome": r.outcome or "running",
        "limit": r.limit_hit,
        "detail": r.detail,
        "steps": r.steps,
        "tokens": {
            "input": r.input_tokens,
            "output": r.output_tokens,
            "cache_read": r.cache_read_tokens,
            "cache_write": r.cache_write_tokens,
            "total": r.tokens,
        },
        "cost_usd": round(r.cost_usd, 6),
        "latency_s": round(r.latency_s, 3),
        "escalations": r.escalations,
    }


def totals_by_agent(conn: sqlite3.Connection) -> list[tuple[str, str, str, int, int, int, float]]:
    """(agent, model, outcome, runs, input tokens, output tokens, cost in USD) over the kept runs."""
    return conn.execute(
        "SELECT agent, model, COALESCE(outcome, 'running'), COUNT(*), SUM(input_tokens + cache_read_tokens + "
        "cache_write_tokens), SUM(output_tokens), SUM(cost_usd) FROM agent_runs GROUP BY agent, model, 3"
    ).fetchall()
