"""A run's transcript as data: each step's request, the model's output, its tool calls with their arguments
and results, tokens, cost and timing — for `watchd runs show` and the dashboard's run page.

Everything a transcript holds came from outside (event data, model output, tool arguments) and is
shown as data: the JSON keeps it as strings, the text form escapes control characters so no byte
of it can move a terminal's cursor or restyle the lines around it, and secrets the config names are
replaced before anything is shown.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable
from typing import Any

from watchd.model import iso
from watchd.notify.http_client import scrub
from watchd.store.runs import Run, StepRecord, run_json


def _tokens(usage: dict[str, int], total: int) -> dict[str, int]:
    return {
        "input": int(usage.get("input_tokens", 0)),
        "output": int(usage.get("output_tokens", 0)),
        "cache_read": int(usage.get("cache_read_input_tokens", 0)),
        "cache_write": int(usage.get("cache_creation_input_tokens", 0)),
        "total": total,
    }


def request_summary(step: StepRecord) -> str:
    """One line on what this call asked: the handoff itself, or the results of the previous step's tools."""
    results = [b for b in step.request if b.get("type") == "tool_result"]
    resumed = step.meta.get("resumed_from")
    if resumed:
        return f"resumes the checkpoint of {resumed} ({len(results)} tool results), then the new handoff"
    if results:
        errors = sum(1 for b in results if b.get("is_error"))
        more = f" ({errors} an error)" if errors == 1 else f" ({errors} errors)" if errors else ""
        return f"results of {len(results)} tool call{'s' if len(results) != 1 else ''}{more}"
    events = next((b["text"] for b in step.request if "<untrusted_event_data" in str(b.get("text", ""))), None)
    count = ""
    if events is not None:
        head = events.split(">", 1)[0]
        count = head.split('count="', 1)[1].split('"', 1)[0] if 'count="' in head else "?"
    return f"the handoff ({count} events)" if count else "the handoff"


def step_json(step: StepRecord) -> dict[str, Any]:
    calls = []
    for b in step.response:
        if b.get("type") != "tool_use":
            continue
        result = step.tool_results.get(str(b.get("id")))
        calls.append(
            {
                "id": b.get("id"),
                "name": b.get("name"),
                "input": b.get("input"),
                "result": None if result is None else result.get("content"),
                "is_error": bool(result and result.get("is_error")),
                "ran": result is not None,
            }
        )
    text = "\n".join(str(b.get("text", "")) for b in step.response if b.get("type") == "text")
    return {
        "n": step.n,
        "run_id": step.run_id,
        "at": iso(step.at),
        "model": step.model,
        "latency_s": round(step.latency_s, 3),
        "tokens": _tokens(step.usage, step.tokens),
        "cost_usd": round(step.cost_usd, 6),
        "request": {
            "summary": request_summary(step),
            "max_tokens": step.meta.get("max_tokens"),
            "messages": step.meta.get("messages"),
            "content": step.request,
        },
        "output": {"text": text, "tool_calls": calls},
        "escalation": step.meta.get("escalation"),
    }


def transcript(runs: list[Run], steps: list[StepRecord], secrets: Iterable[str | None] = ()) -> dict[str, Any]:
    """The transcript of `runs` (all of one handoff): their steps only, and which earlier steps they continue."""
    ids = {r.id for r in runs}
    mine = [s for s in steps if s.run_id in ids]
    first = min((s.n for s in mine), default=None)
    earlier = [s.n for s in steps if s.run_id not in ids and (first is None or s.n < first)]
    body = {
        "handoff_id": runs[0].handoff_id,
        "agent": runs[0].agent,
        "runs": [run_json(r) for r in runs],
        "continues_steps": earlier,  # steps of an earlier run of the handoff that this one read back
        "steps": [step_json(s) for s in mine],
    }
    clean: dict[str, Any] = json.loads(scrub(json.dumps(body), [s for s in secrets if s]))
    return clean


# ---- text ---------------------------------------------------------------------------------------------


def inert(text: str) -> str:
    """Text whose control and format characters (ESC, CR, BiDi overrides, …) are shown as \\uXXXX escapes."""
    return "".join(
        f"\\u{ord(c):04x}" if unicodedata.category(c) in ("Cc", "Cf") and c not in "\n\t" else c for c in text
    )


def _data(obj: Any) -> str:
    return inert(obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False))


def _indent(text: str, pad: str) -> list[str]:
    return [pad + line for line in text.splitlines() or [""]]


def transcript_lines(t: dict[str, Any]) -> list[str]:
    """The transcript as plain lines (no markup): a header per run, then each step."""
    lines = [f"handoff {t['handoff_id']} · {t['agent']}"]
    for r in t["runs"]:
        outcome = r["outcome"] + (f" ({r['limit']})" if r["limit"] else "")
        tok = r["tokens"]
        lines.append(
            f"run {r['id']}: {outcome}, {r['steps']} steps, {tok['total']:,} tokens, ${r['cost_usd']:.4f}, "
            f"started {r['started_at']}" + (f", ended {r['ended_at']}" if r["ended_at"] else "")
        )
        if r.get("escalations"):
            for e in r["escalations"]:
                lines.append(f"  escalated at step {e['step']}: {e['from']} -> {e['to']} ({_data(e['reason'])})")
        if r["detail"]:
            lines.append(f"  {_data(r['detail'])}")
    if t["continues_steps"]:
        n = t["continues_steps"]
        lines.append(f"(continues steps {n[0]}-{n[-1]} of an earlier run of this handoff)")
    for s in t["steps"]:
        tok = s["tokens"]
        lines += [
            "",
            f"step {s['n']} · {s['at']} · {s['model']} · {s['latency_s']:.2f}s · in {tok['input']:,} out "
            f"{tok['output']:,} cache r/w {tok['cache_read']:,}/{tok['cache_write']:,} · ${s['cost_usd']:.4f}",
        ]
        if s["escalation"]:
            e = s["escalation"]
            lines.append(f"  escalated from {e['from']}: {_data(e['reason'])}")
        req = s["request"]
        cap = f" (max_tokens {req['max_tokens']}, {req['messages']} messages)" if req["max_tokens"] else ""
        lines.append(f"  request: {req['summary']}{cap}")
        if s["n"] == 1 or not any(b.get("type") == "tool_result" for b in req["content"]):
            for b in req["content"]:
                if b.get("type") == "text":
                    lines += _indent(_data(b["text"]), "    | ")
        if s["output"]["text"]:
            lines.append("  model:")
            lines += _indent(_data(s["output"]["text"]), "    | ")
        for c in s["output"]["tool_calls"]:
            lines.append(f"  tool {_data(c['name'])} {_data(c['input'])}")
            if not c["ran"]:
                lines.append("    -> (not run yet)")
            else:
                mark = "error: " if c["is_error"] else ""
                lines += _indent(mark + _data(c["result"]), "    -> ")
    return lines
