"""A fake Anthropic API on loopback: the Messages API and the Message Batches API, real aiohttp.

The real `anthropic` SDK (AsyncAnthropic) talks to it with `base_url=fake.url` and `api_key=fake.api_key`.
What the model answers is scripted: queue turns with `fake.turns(...)`, or give a function of the
request body with `fake.model = lambda body: ...`; HTTP failures (429, 529, 500, 400, 401, slow
answers) use the scripting of `FakeServer` (`fail`, `rate_limit`, `stall`, `script`). Every request is
recorded (`fake.calls` holds the bodies of `POST /v1/messages`).

    async with FakeAnthropic() as fake:
        fake.turns(tool_use("notify", {"to": "notify.phone", "message": "hi"}), text("all done"))
        fake.rate_limit(retry_after=3)        # the first call gets 429 first

Usage is reported like the API does: `input_tokens` ≈ len(request text) / 4 (the uncached part),
`cache_creation_input_tokens` / `cache_read_input_tokens` for the prefix up to a `cache_control`
breakpoint (a write the first time a prefix is seen, a read after), and `output_tokens` ≈ len(answer) / 4.
`FakeAnthropic.threaded()` runs one on its own thread, for a daemon in a subprocess to call.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from support.fakes import FakeServer, Reply, Request

MESSAGES = "/v1/messages"
BATCHES = "/v1/messages/batches"


def tokens(text: str) -> int:
    return max(1, len(text) // 4)


@dataclass
class Turn:
    """One scripted assistant message: content blocks, and usage when the test wants exact numbers."""

    content: list[dict[str, Any]]
    stop_reason: str | None = None
    usage: dict[str, int] | None = None
    delay_s: float = 0.0


def text(body: str, **kw: Any) -> Turn:
    return Turn([{"type": "text", "text": body}], **kw)


_ids = itertools.count(1)


def tool_use(name: str, args: dict[str, Any], *more: tuple[str, dict[str, Any]], **kw: Any) -> Turn:
    """A turn calling `name(args)` (and any further `(name, args)` pairs), with deterministic ids."""
    calls = ((name, args), *more)
    blocks = [{"type": "tool_use", "id": f"toolu_{next(_ids):04d}", "name": n, "input": a} for n, a in calls]
    return Turn(blocks, **kw)


def api_error(status: int, message: str | None = None) -> Reply:
    kinds = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        500: "api_error",
        529: "overloaded_error",
    }
    kind = kinds.get(status, "api_error")
    return Reply(status, json={"type": "error", "error": {"type": kind, "message": message or kind.replace("_", " ")}})


def too_long() -> Reply:
    return api_error(400, "prompt is too long: 214312 tokens > 200000 maximum")


@dataclass
class Batch:
    id: str
    requests: list[dict[str, Any]]
    created: float
    ended: bool = False
    results: list[dict[str, Any]] = field(default_factory=list)


class FakeAnthropic(FakeServer):
    default_path = MESSAGES

    def __init__(self, api_key: str = "sk-ant-test-0123456789", *, models: set[str] | None = None) -> None:
        super().__init__()
        self.api_key = api_key
        self.models = models  # None: every model exists
        self.calls: list[dict[str, Any]] = []
        self.model: Callable[[dict[str, Any]], Turn | Reply] | None = None
        self.batches: dict[str, Batch] = {}
        self.auto_end_batches = True  # a batch ends on the first poll after it was created
        self._turns: deque[Turn | Reply] = deque()
        self._cached: set[str] = set()
        self._batch_ids = itertools.count(1)
        self._msg_ids = itertools.count(1)

    # -- scripting --

    def turns(self, *items: Turn | Reply) -> None:
        """Queue the model's next answers (a Reply is an HTTP answer instead, e.g. `api_error(400)`)."""
        self._turns.extend(items)

    def error_reply(self, status: int) -> Reply:
        return api_error(status)

    def rate_limit_reply(self, retry_after: float) -> Reply:
        reply = api_error(429, "Number of request tokens has exceeded your per-minute rate limit")
        reply.headers["retry-after"] = f"{retry_after:g}"
        return reply

    def end_batch(self, batch_id: str | None = None) -> None:
        for b in self.batches.values():
            if batch_id in (None, b.id):
                self._finish(b)

    # -- inspection --

    def last_user_text(self, i: int = -1) -> str:
        """The text of the last user turn of call `i` (tool results included, as JSON)."""
        content = self.calls[i]["messages"][-1]["content"]
        return content if isinstance(content, str) else json.dumps(content)

    # -- the service --

    async def respond(self, req: Request) -> Reply:
        # The SDK sends the key as x-api-key, or (newer versions) as a bearer token.
        if self.api_key not in (req.headers.get("x-api-key"), req.headers.get("Authorization", "")[len("Bearer ") :]):
            return api_error(401, "invalid x-api-key")
        if req.path == MESSAGES and req.method == "POST":
            if not isinstance(req.json, dict):
                return api_error(400, "body is not JSON")
            self.calls.append(req.json)
            return await self.answer(req.json)
        if req.path.startswith("/v1/models/"):
            model = req.path.rsplit("/", 1)[1]
            if self.models is not None and model not in self.models:
                return api_error(404, f"model: {model}")
            return Reply(
                json={"type": "model", "id": model, "display_name": model, "created_at": "2025-10-01T00:00:00Z"}
            )
        if req.path == BATCHES and req.method == "POST":
            return self._create_batch(req.json)
        if req.path.startswith(BATCHES + "/"):
            rest = req.path[len(BATCHES) + 1 :].split("/")
            batch = self.batches.get(rest[0])
            if batch is None:
                return api_error(404, "batch not found")
            if len(rest) == 1:
                if self.auto_end_batches and not batch.ended and req.method == "GET":
                    self._finish(batch)
                return Reply(json=self._batch_json(batch))
            if rest[1] == "results" and batch.ended:
                body = "\n".join(json.dumps(r) for r in batch.results) + "\n"
                return Reply(text=body, headers={"Content-Type": "application/binary"})
        return api_error(404, f"no route {req.method} {req.path}")

    async def answer(self, body: dict[str, Any]) -> Reply:
        item: Turn | Reply
        if self._turns:
            item = self._turns.popleft()
        elif self.model is not None:
            item = self.model(body)
        else:
            item = text("nothing to do")
        if isinstance(item, Reply):
            return item
        if item.delay_s:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), item.delay_s)
        return Reply(json=self.message(body, item))

    def message(self, body: dict[str, Any], turn: Turn) -> dict[str, Any]:
        has_tool = any(b.get("type") == "tool_use" for b in turn.content)
        return {
            "id": f"msg_{next(self._msg_ids):06d}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model"),
            "content": turn.content,
            "stop_reason": turn.stop_reason or ("tool_use" if has_tool else "end_turn"),
            "stop_sequence": None,
            "usage": turn.usage or self.usage(body, turn),
        }

    def usage(self, body: dict[str, Any], turn: Turn) -> dict[str, int]:
        """Input tokens ≈ len/4. The prefix up to the last cache breakpoint is a cache read as far as an
        earlier request wrote it (the longest prefix at any breakpoint), and a cache write beyond that."""
        prefixes, rest = _split_at_breakpoints(body)
        key = str(body.get("model")) + "\x1f"
        hit = max((len(p) for p in prefixes if key + p in self._cached), default=0)
        self._cached.update(key + p for p in prefixes)
        whole = len(prefixes[-1]) if prefixes else 0
        read = tokens("x" * hit) if hit else 0
        write = tokens("x" * (whole - hit)) if whole > hit else 0
        return {
            "input_tokens": tokens(rest),
            "output_tokens": tokens(json.dumps(turn.content)),
            "cache_creation_input_tokens": write,
            "cache_read_input_tokens": read,
        }

    # -- batches --

    def _create_batch(self, body: Any) -> Reply:
        if not isinstance(body, dict) or not isinstance(body.get("requests"), list) or not body["requests"]:
            return api_error(400, "requests: field required")
        batch = Batch(f"msgbatch_{next(self._batch_ids):04d}", body["requests"], time.time())
        self.batches[batch.id] = batch
        return Reply(json=self._batch_json(batch))

    def _finish(self, batch: Batch) -> None:
        if batch.ended:
            return
        for r in batch.requests:
            params = r["params"]
            item = self._turns.popleft() if self._turns else (self.model(params) if self.model else text("ok"))
            if isinstance(item, Reply):
                error = item.json["error"] if isinstance(item.json, dict) else {"type": "api_error", "message": "?"}
                result: dict[str, Any] = {"type": "errored", "error": {"type": "error", "error": error}}
            else:
                result = {"type": "succeeded", "message": self.message(params, item)}
            batch.results.append({"custom_id": r["custom_id"], "result": result})
        batch.ended = True

    def _batch_json(self, b: Batch) -> dict[str, Any]:
        n = len(b.requests)
        ok = sum(1 for r in b.results if r["result"]["type"] == "succeeded")
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(b.created))
        return {
            "id": b.id,
            "type": "message_batch",
            "processing_status": "ended" if b.ended else "in_progress",
            "request_counts": {
                "processing": 0 if b.ended else n,
                "succeeded": ok,
                "errored": len(b.results) - ok,
                "canceled": 0,
                "expired": 0,
            },
            "created_at": created,
            "expires_at": created,
            "ended_at": created if b.ended else None,
            "archived_at": None,
            "cancel_initiated_at": None,
            "results_url": f"{self.url}{BATCHES}/{b.id}/results" if b.ended else None,
        }


def _split_at_breakpoints(body: dict[str, Any]) -> tuple[list[str], str]:
    """The request as text (tools, system, messages, in the API's order): the prefix ending at each block
    that carries `cache_control`, and what follows the last one. A block's text leaves its cache_control
    out, so a breakpoint that moves on (a conversation growing) still finds the prefix it wrote."""
    blocks: list[Any] = list(body.get("tools") or [])
    system = body.get("system")
    blocks += [system] if isinstance(system, str) else list(system or [])
    for m in body.get("messages") or []:
        content = m.get("content")
        blocks += [content] if isinstance(content, str) else list(content or [])
    parts: list[tuple[str, bool]] = []
    for b in blocks:
        if isinstance(b, dict):
            parts.append((json.dumps({k: v for k, v in b.items() if k != "cache_control"}), "cache_control" in b))
        else:
            parts.append((str(b), False))
    marks = [i for i, (_, bp) in enumerate(parts) if bp]
    prefixes = ["".join(p for p, _ in parts[: i + 1]) for i in marks]
    last = marks[-1] if marks else -1
    return prefixes, "".join(p for p, _ in parts[last + 1 :])
