"""The canary job: a synthetic event through the whole path, and a probe of every notifier and agent.

The path: the job publishes `watchd.canary.ping` (data: a fresh nonce) to the EVENTS stream; the
built-in watch `watchd-canary` fires in the engine; its handoff goes through the outbox and the
dispatcher to the `watchd.canary` sink, whose delivery publishes `watchd.canary.pong.<nonce>` on
core NATS; the job waits for that pong. So one answer proves NATS, the engine, the store and the
dispatcher, exactly as a real watch uses them. It works from the command line too (`watchd
canary`), as long as the daemon runs: the path is the daemon's.

Then each `notify.*` and `agent.*` target is probed with its own `probe()` (Telegram `getMe`,
Slack `auth.test`, a connect check for webhooks, an agent's `probe` command, …) without sending
anyone a message. The canary passes only if the path and every probe pass.

A good canary records a fingerprint of what it checked: watchd's version, a hash of the config,
and each agent's `version` command output. At start the daemon compares it with the present one,
and runs the canary at once when something changed (the release canary): a broken upgrade is
found before the 07:00 digest needs it. With no good canary recorded yet there is nothing to
compare with, and the first good one sets the baseline.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import nats.errors
from nats.aio.client import Client

from watchd import __version__, bus
from watchd.agents.release import version_output
from watchd.config import Loaded
from watchd.dispatch import Dead, Delivered, Outcome, Retry
from watchd.errors import WatchdError
from watchd.jobs import JobContext, JobResult
from watchd.jobs.builtin_watches import CANARY_WATCH, PING_SUBJECT
from watchd.model import Handoff, encode, iso, new_id, own_event
from watchd.store.meta import get_meta

if TYPE_CHECKING:
    from watchd.daemon import Daemon

log = logging.getLogger("watchd.jobs.canary")

PONG_PREFIX = "watchd.canary.pong."
PATH_TIMEOUT_S = 30.0
PROBE_TIMEOUT_S = 20.0
META_LAST = "canary.last"  # the last run: when, ok, summary, failing probes (for `status`)
META_FINGERPRINT = "canary.fingerprint"  # what the last good canary checked
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


# ---- the sink at the end of the path ----------------------------------------------------------------


class CanarySink:
    """The target of the built-in canary watch: answers the ping's nonce on core NATS."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc

    def __repr__(self) -> str:
        return "CanarySink()"

    async def deliver(self, handoff: Handoff) -> Outcome:
        data = handoff.evidence[-1].get("data", {}) if handoff.evidence else {}
        nonce = data.get("nonce") if isinstance(data, dict) else None
        if not isinstance(nonce, str) or not _TOKEN.match(nonce):
            return Dead("a canary ping without a usable nonce (publish watchd.canary.ping only via `watchd canary`)")
        try:
            await self.nc.publish(PONG_PREFIX + nonce, encode({"handoff": handoff.id}))
            await self.nc.flush(timeout=5)
        except (nats.errors.Error, TimeoutError) as exc:
            return Retry(f"cannot answer the canary on NATS ({type(exc).__name__})")
        return Delivered("canary answered")


# ---- the path and the probes ----------------------------------------------------------------------------


async def check_path(ctx: JobContext, timeout_s: float = PATH_TIMEOUT_S) -> dict[str, Any]:
    """Ping through NATS → engine → outbox → dispatcher → sink, and wait for the pong."""
    if ctx.nc is None or ctx.js is None:
        return {"ok": False, "detail": "no NATS connection: the path cannot be checked"}
    nonce = new_id()
    loop = asyncio.get_running_loop()
    try:
        sub = await ctx.nc.subscribe(PONG_PREFIX + nonce, max_msgs=1)  # before the ping: a fast answer is kept
    except nats.errors.Error as exc:
        return {"ok": False, "detail": f"cannot subscribe on NATS ({type(exc).__name__})"}
    started = loop.time()
    try:
        await bus.publish_event(ctx.js, own_event(PING_SUBJECT, {"nonce": nonce}, source="canary"))
        msg = await sub.next_msg(timeout=timeout_s)
    except WatchdError as exc:
        return {"ok": False, "detail": f"cannot publish the canary event: {exc.message}"}
    except TimeoutError:
        return {
            "ok": False,
            "nonce": nonce,
            "detail": (
                f"no answer within {timeout_s:g}s: the event did not make it through NATS → engine → handoff → "
                f"delivery (see `watchd explain {CANARY_WATCH}` and `watchd handoffs`)"
            ),
        }
    except nats.errors.Error as exc:
        return {"ok": False, "detail": f"lost NATS while waiting for the answer ({type(exc).__name__})"}
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
    latency_ms = round((loop.time() - started) * 1000)
    handoff = _decode(msg.data).get("handoff")
    return {
        "ok": True,
        "nonce": nonce,
        "handoff": handoff,
        "latency_ms": latency_ms,
        "detail": f"NATS → engine → handoff → delivery in {latency_ms} ms",
    }


def _decode(raw: bytes) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return {}
    return value if isinstance(value, dict) else {}


async def _probe_one(name: str, target: object) -> dict[str, Any]:
    probe = getattr(target, "probe", None)
    if probe is None:
        return {"target": name, "ok": True, "detail": "nothing to probe"}
    try:
        ok, detail = await asyncio.wait_for(probe(), PROBE_TIMEOUT_S)
    except TimeoutError:
        ok, detail = False, f"probe did not finish within {PROBE_TIMEOUT_S:g}s"
    except Exception as exc:  # a probe that breaks is a failing probe, never a crashed canary
        log.warning("%s: probe failed unexpectedly (%s)", name, type(exc).__name__)
        ok, detail = False, f"probe failed unexpectedly ({type(exc).__name__})"
    return {"target": name, "ok": bool(ok), "detail": str(detail)}


async def probe_targets(targets: Mapping[str, object]) -> list[dict[str, Any]]:
    """Every notifier and agent, probed at once: [{target, ok, detail}], sorted by name."""
    names = sorted(n for n in targets if n.startswith(("notify.", "agent.")))
    return list(await asyncio.gather(*(_probe_one(n, targets[n]) for n in names)))


# ---- the release fingerprint --------------------------------------------------------------------------


async def _version_output(argv: list[str], base_dir: Path) -> str:
    """The first line of an agent's `version` command (relative paths from the config file)."""
    if "/" in argv[0] and not os.path.isabs(argv[0]):
        argv = [str(base_dir / argv[0]), *argv[1:]]
    return await version_output(argv)


async def fingerprint(loaded: Loaded) -> dict[str, Any]:
    """What a release changes: watchd's version, the config (hashed), each agent's version output."""
    agents = {f"agent.{name}": a.version for name, a in sorted(loaded.config.agent.items()) if a.version}
    outputs = await asyncio.gather(*(_version_output(argv, loaded.base_dir) for argv in agents.values()))
    return {
        "watchd": __version__,
        "config": hashlib.sha256(msgspec.json.encode(loaded.config)).hexdigest()[:16],
        "agents": dict(zip(agents, outputs, strict=True)),
    }


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two fingerprints, in words."""
    out = []
    if old.get("watchd") != new["watchd"]:
        out.append(f"watchd {old.get('watchd', '?')} → {new['watchd']}")
    if old.get("config") != new["config"]:
        out.append("the config")
    before: dict[str, str] = old.get("agents") or {}
    for name in sorted(set(before) | set(new["agents"])):
        if before.get(name) != new["agents"].get(name):
            out.append(f"{name} version {before.get(name, '(none)')!r} → {new['agents'].get(name, '(none)')!r}")
    return out


# ---- the job ----------------------------------------------------------------------------------------------


async def run(ctx: JobContext) -> JobResult:
    path = await check_path(ctx, min(PATH_TIMEOUT_S, ctx.timeout_s))
    probes = await probe_targets(ctx.targets)
    failing = [p for p in probes if not p["ok"]]
    ok = bool(path["ok"]) and not failing
    if ok:
        summary = f"canary ok: {path['detail']}; {len(probes)} {'probe' if len(probes) == 1 else 'probes'} passed"
    else:
        problems = ([] if path["ok"] else [f"path: {path['detail']}"]) + [
            p["detail"] if p["detail"].startswith(p["target"]) else f"{p['target']}: {p['detail']}" for p in failing
        ]
        summary = "canary failed: " + "; ".join(problems)
    data = {"summary": summary, "path": path, "probes": probes, "failing": [p["target"] for p in failing]}
    now = ctx.clock()
    last = {"at": iso(now), "ok": ok, "summary": summary, "failing": data["failing"], "path_ok": path["ok"]}
    writes = [(META_LAST, json.dumps(last))]
    if ok:  # only a good canary sets the baseline the release canary compares with
        writes.append((META_FINGERPRINT, json.dumps(await fingerprint(ctx.loaded))))
    for k, v in writes:
        await ctx.store.run(ctx.store.set_meta, k, v)
    return JobResult(ok, summary, data)


async def run_and_report(ctx: JobContext, trigger: str, extra: dict[str, Any] | None = None) -> JobResult:
    """Run the canary outside the scheduler (`watchd canary`, the release canary) and publish its
    outcome as the scheduler does: `watchd.job.canary.done|failed`, which the built-in
    `watchd-canary-failed` watch alerts on."""
    result = await run(ctx)
    result.data.update({"trigger": trigger, **(extra or {})})
    await ctx.emit(f"watchd.job.canary.{'done' if result.ok else 'failed'}", result.data)
    return result


async def release_canary(daemon: Daemon) -> None:
    """At start: run the canary now if watchd, the config or an agent changed since the last good one."""
    try:
        store, dispatcher = daemon.store, daemon.dispatcher
        if store is None or dispatcher is None:
            return
        raw = await store.run(store.get_meta, META_FINGERPRINT)
        if raw is None:
            log.info("no good canary recorded yet: the first one sets the baseline for release canaries")
            return
        changed = changes(json.loads(raw), await fingerprint(daemon.loaded))
        if not changed:
            log.info("release canary: nothing changed since the last good canary")
            return
        log.info("release canary: %s changed since the last good canary; running it now", ", ".join(changed))
        ctx = JobContext(
            name="canary",
            loaded=daemon.loaded,
            store=store,
            clock=daemon.clock,
            emit=daemon.emit,
            nc=daemon.nc,
            js=daemon.js,
            targets=dispatcher.targets,
            wake_dispatcher=dispatcher.wake,
            in_daemon=True,
            http=daemon.http,
        )
        result = await run_and_report(ctx, "release", {"changed": changed})
        (log.info if result.ok else log.error)("release canary: %s", result.summary)
    except Exception:  # the canary reports trouble; it must never take the daemon down
        log.exception("release canary could not run")


def last_canary(conn: sqlite3.Connection) -> dict[str, Any] | None:
    """The last canary run as `status` shows it: {at, ok, summary, failing, path_ok}."""
    try:
        raw = get_meta(conn, META_LAST)
    except sqlite3.OperationalError:
        return None
    if raw is None:
        return None
    with contextlib.suppress(ValueError):
        value = json.loads(raw)
        if isinstance(value, dict):
            return value
    return None


def canary_line(last: dict[str, Any] | None) -> str:
    """One line for `watchd status`."""
    if last is None:
        return "canary: never run (`watchd canary` runs one now)"
    if last.get("ok"):
        return f"canary: ok at {last.get('at')}"
    failing = list(last.get("failing") or [])
    if not last.get("path_ok", True):
        failing.insert(0, "the event path")
    return f"canary: FAILED at {last.get('at')} ({', '.join(failing) or 'see watchd explain watchd-canary-failed'})"
