"""Release channels and rollback: what happens when an agent's new release fails its canary.

At start (and after each reload) the daemon fingerprints every agent's release (watchd/agents/
release.py). A release seen for the first time is recorded and canaried in the background (a pass
makes it `last_good`). A release that changed since the last start is canaried *before* any handoff
reaches it: the dispatcher claims nothing for the agent meanwhile. Then:

- the canary passes: it becomes the agent's last-good release;
- it fails: the agent is **held**. Its handoffs wait `pending` with a reason starting
  `release_failed:` (a wait, as a spent budget is: no attempt is used up); its `rollback = [...]`
  runs (e.g. reinstall the last good version) and the release it leaves is canaried in turn, or,
  with `stable_command`, that command is canaried and runs the handoffs while the new release stays
  held. One `watchd.release.failed` event names the old and new release and what the rollback did;
  the built-in watch `watchd-release-failed` alerts every alert target with it, once per failed
  release (a restart with the same release does not alert again).

`watchd release promote AGENT` takes the held release as good by hand; `watchd release rollback
AGENT` rolls back by hand (also a release that passed its canary but misbehaves). Both reach this
module through the daemon's listener (release_api.py). Records are kept in `meta` (see `Record`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from watchd.agents.command import CommandRunner
from watchd.agents.release import Held, Record, Release, fingerprint, meta_key, read_records
from watchd.config import Agent, CommandAgent, Loaded
from watchd.cron.proc import run_in_group
from watchd.cron.schedule import parse_duration
from watchd.dispatch import Retry, Target
from watchd.errors import WatchdError
from watchd.jobs.canary import probe_targets
from watchd.model import iso
from watchd.store import Store
from watchd.store.outbox import release_waiting

log = logging.getLogger("watchd.jobs.release")

HELD_PREFIX = "release_failed:"
RECHECK_S = 600.0  # how long a held handoff waits before it is looked at again (a promote wakes it at once)
ROLLBACK_TAIL = 300

Emit = Callable[[str, dict[str, Any]], Awaitable[None]]


class UnknownAgent(WatchdError):
    pass


class ReleaseControl:
    """The daemon's agents' releases: the dispatcher's gate (`paused`, `route`), the checks, and the
    hand controls. One change of a record at a time (`_lock`)."""

    def __init__(
        self,
        *,
        store: Store,
        clock: Callable[[], float],
        emit: Emit,
        loaded: Callable[[], Loaded],
        targets: Callable[[], dict[str, Target]],
        wake: Callable[[], None],
        spawn: Callable[[str, Callable[[], Awaitable[None]]], None],
    ) -> None:
        self.store = store
        self.clock = clock
        self.emit = emit
        self.loaded = loaded
        self.targets = targets
        self.wake = wake
        self.spawn = spawn  # the daemon's: a task it stops with itself
        self.records: dict[str, Record] = {}
        self.checking: set[str] = set()
        self.stable: dict[str, Target] = {}  # the stable_command runners of held agents it serves
        self._lock = asyncio.Lock()

    # ---- the dispatcher's gate ----

    def paused(self, target: str) -> bool:
        return target in self.checking

    def route(self, target: str) -> Target | Retry | None:
        rec = self.records.get(target)
        if rec is None or rec.held is None:
            return None
        stable = self.stable.get(target)
        if stable is not None:
            return stable
        return Retry(
            f"{HELD_PREFIX} {target}'s release {rec.held.new.named()} failed its canary; held until "
            f"`watchd release promote {target}` or `watchd release rollback {target}`",
            retry_after_s=RECHECK_S,
            wait=True,
        )

    # ---- checks ----

    def hold_for_check(self, targets: list[str] | None = None) -> None:
        """Claim nothing for these agents (all, by default) until `check` has looked at them: called
        before the dispatcher starts, so no handoff reaches a release that was not checked."""
        self.checking |= set(targets if targets is not None else self._agents())

    async def check(self, trigger: str = "start") -> None:
        """Fingerprint every agent; canary what changed (holding it meanwhile), and act on the outcome.

        Each agent is let go as soon as its own check ends. A check that waits for another (a reload
        during the start's) reads the config as it is then, and leaves paused what it has not checked
        yet: never an agent that a later reload paused again."""
        async with self._lock:
            agents = self._agents()
            self.checking = set(agents)  # (an agent a reload removed has nothing left to check)
            try:
                if not self.records:
                    self.records = await self.store.call(read_records)
            except Exception:  # the records cannot be read: deliver as before rather than hold everything
                self.checking.clear()
                self.wake()
                raise
            for target, cfg in agents.items():
                try:
                    await self._check_one(target, cfg, trigger)
                except Exception:  # one agent's trouble never leaves it, or the others, paused
                    log.exception("%s: the release check failed", target)
                finally:
                    self.checking.discard(target)
                    self.wake()

    async def _check_one(self, target: str, cfg: Agent, trigger: str) -> None:
        base = self.loaded().base_dir
        new = await fingerprint(cfg, base)
        if new is None:
            return
        rec = self.records.get(target) or Record(agent=target)
        now = self._now()
        rec.checked_at = now
        on_stable = rec.held is not None and rec.current is not None and rec.current.channel == "stable"
        if on_stable:  # after a restart or reload: the stable command (as configured now) serves as before
            self._serve_stable(target, cfg)
        seen = rec.held.new if on_stable and rec.held is not None else rec.current
        if seen is not None and seen.digest == new.digest:
            await self._save(rec)
            return
        if rec.current is None:
            rec.current = new
            rec.note(now, "seen", f"first seen: {new.named()}")
            await self._save(rec)
            # nothing to hold back for (no release before it to go back to): canaried meanwhile
            self.spawn(f"release-canary-{target}", lambda: self._first_canary(target, new))
            return
        old = rec.last_good or rec.current
        rec.current = new
        rec.note(now, "changed", f"{old.named()} → {new.named()} ({trigger})")
        ok, detail = await self._canary(target, self.targets().get(target))
        if ok:
            await self._good(rec, new, f"canary passed: {detail}", what="canary_passed")
            log.info("%s: release %s passed its canary", target, new.named())
            await self.emit("watchd.release.passed", {"agent": target, "old": old.named(), "new": new.named()})
            return
        await self._failed(rec, cfg, old, new, detail)

    async def _first_canary(self, target: str, release: Release) -> None:
        ok, detail = await self._canary(target, self.targets().get(target))
        async with self._lock:
            rec = self.records.get(target)
            if rec is None or rec.current is None or rec.current.digest != release.digest or rec.held is not None:
                return
            if ok:
                rec.last_good = release
                rec.note(self._now(), "canary_passed", detail)
            else:  # no release before it to go back to: reported, not held
                log.warning("%s: release %s failed its canary: %s", target, release.named(), detail)
                rec.note(self._now(), "canary_failed", detail)
            await self._save(rec)

    async def _failed(self, rec: Record, cfg: Agent, old: Release, new: Release, detail: str) -> None:
        target = rec.agent
        now = self._now()
        rec.held = Held(since=now, reason=detail, new=new, old=old)
        rec.note(now, "canary_failed", detail)
        await self._save(rec)
        log.error("%s: release %s failed its canary (%s); its handoffs are held", target, new.named(), detail)
        rolled = await self._roll_back(rec, cfg, "automatic")
        summary = f"{target}: release {new.named()} failed its canary ({detail}); the last good was {old.named()}. " + (
            rolled or f"Its handoffs are held: `watchd release promote|rollback {target}`"
        )
        await self.emit(
            "watchd.release.failed",
            {
                "agent": target,
                "old": old.named(),
                "new": new.named(),
                "reason": detail,
                "rollback": rolled,
                "held": rec.held is not None and target not in self.stable,
                "summary": summary,
            },
        )

    # ---- rollback ----

    async def _roll_back(self, rec: Record, cfg: Agent, by: str) -> str | None:
        """Run the agent's rollback (or switch to its stable command) and canary the result; what
        happened, in words (None: it has neither)."""
        target = rec.agent
        now = self._now()
        if cfg.rollback:
            ran = await self._run_rollback(cfg)
            if ran is not None:
                return await self._rollback_failed(rec, f"rollback {cfg.rollback[0]} {ran}")
            after = await fingerprint(cfg, self.loaded().base_dir)
            if after is None:
                return await self._rollback_failed(rec, "after the rollback the release cannot be fingerprinted")
            rec.current = after
            ok, detail = await self._canary(target, self.targets().get(target))
            if not ok:
                failed = f"rolled back to {after.named()}, whose canary failed: {detail}"
                return await self._rollback_failed(rec, failed)
            text = f"Rolled back ({by}) to {after.named()}: canary passed; held handoffs released."
            await self._good(rec, after, text, what="rolled_back")
            await self.emit("watchd.release.rolled_back", {"agent": target, "to": after.named(), "by": by})
            return text
        if isinstance(cfg, CommandAgent) and cfg.stable_command:
            stable = await fingerprint(cfg, self.loaded().base_dir, stable=True)
            runner = self._stable_runner(target, cfg)
            ok, detail = await self._canary(target, runner)
            if not ok or stable is None:
                return await self._rollback_failed(rec, f"the stable command's canary failed: {detail}")
            rec.current = stable
            self.stable[target] = runner
            if rec.held is not None:
                rec.held.rollback = f"serving with stable_command {stable.named()} ({by})"
            rec.note(now, "rolled_back", f"stable_command {stable.named()} serves the handoffs ({by})")
            await self._save(rec)
            await self._release_handoffs(target, f"{target}: served by its stable_command")
            await self.emit("watchd.release.rolled_back", {"agent": target, "to": stable.named(), "by": by})
            return (
                f"Its stable_command {stable.named()} passed its canary and runs the handoffs ({by}) until "
                f"`watchd release promote {target}` or a new release passes."
            )
        return None

    async def _run_rollback(self, cfg: Agent) -> str | None:
        """Run `rollback`; None when it succeeded, else how it failed."""
        assert cfg.rollback
        argv = list(cfg.rollback)
        base = self.loaded().base_dir
        if "/" in argv[0] and not argv[0].startswith("/"):
            argv[0] = str(base / argv[0])
        try:
            done = await run_in_group(argv, timeout_s=parse_duration(cfg.timeout), kill_grace_s=2.0)
        except OSError as exc:
            return f"could not start: {exc.strerror or type(exc).__name__}"
        if done.code == 0:
            return None
        tail = done.tail.strip().splitlines()[-1][:ROLLBACK_TAIL] if done.tail.strip() else "(no output)"
        return f"timed out after {cfg.timeout}" if done.code is None else f"failed with exit {done.code}: {tail}"

    async def _rollback_failed(self, rec: Record, detail: str) -> str:
        now = self._now()
        if rec.held is not None:
            rec.held.rollback = detail
        rec.note(now, "rollback_failed", detail)
        await self._save(rec)
        log.error("%s: %s; its handoffs stay held", rec.agent, detail)
        return f"The rollback did not help: {detail}. Its handoffs stay held: `watchd release promote {rec.agent}`."

    def _stable_runner(self, target: str, cfg: CommandAgent) -> CommandRunner:
        loaded = self.loaded()
        stable_cfg = msgspec.structs.replace(cfg, command=list(cfg.stable_command or []), probe=None)
        return CommandRunner(
            stable_cfg, name=target, base_dir=loaded.base_dir, store=self.store, state_dir=loaded.state_dir
        )

    def _serve_stable(self, target: str, cfg: Agent) -> None:
        if isinstance(cfg, CommandAgent) and cfg.stable_command:
            self.stable[target] = self._stable_runner(target, cfg)
        else:  # its stable_command was taken out of the config: the handoffs wait, held
            self.stable.pop(target, None)

    # ---- by hand ----

    async def promote(self, agent: str, by: str) -> Record:
        """Take the agent's current (or held) release as good, without a canary; release its handoffs."""
        target, _ = self._agent(agent)
        async with self._lock:
            rec = self.records.get(target)
            if rec is None or rec.current is None:
                raise WatchdError(f"{target} has no release recorded yet", hint="watchd records it at start")
            release = rec.held.new if rec.held is not None else rec.current
            self.stable.pop(target, None)
            await self._good(rec, release, f"promoted by {by}", what="promoted")
        await self.emit("watchd.release.promoted", {"agent": target, "release": release.named(), "by": by})
        return rec

    async def rollback(self, agent: str, by: str) -> tuple[Record, str]:
        """Roll the agent back by hand (held or not): its rollback or stable command, canaried."""
        target, cfg = self._agent(agent)
        if not cfg.rollback and not (isinstance(cfg, CommandAgent) and cfg.stable_command):
            raise WatchdError(
                f"{target} has neither `rollback` nor `stable_command`",
                hint=f'set one in [{target}], e.g. rollback = ["pipx", "install", "my-agent==1.4.2"]',
            )
        async with self._lock:
            rec = self.records.get(target)
            if rec is None or rec.current is None:
                raise WatchdError(f"{target} has no release recorded yet", hint="watchd records it at start")
            if rec.held is None:
                now = self._now()
                rec.held = Held(since=now, reason=f"rolled back by {by}", new=rec.current, old=rec.last_good)
                rec.note(now, "held", f"rolled back by {by}")
                await self._save(rec)
            text = await self._roll_back(rec, cfg, by) or ""
        return rec, text

    # ---- shared ----

    async def _canary(self, target: str, runner: Target | None) -> tuple[bool, str]:
        if runner is None:
            return False, f"no target {target} to probe"
        (probe,) = await probe_targets({target: runner})
        detail = str(probe["detail"])
        return bool(probe["ok"]), detail.removeprefix(f"{target}: ")

    async def _good(self, rec: Record, release: Release, detail: str, *, what: str) -> None:
        now = self._now()
        rec.current = release
        rec.last_good = release
        rec.held = None
        self.stable.pop(rec.agent, None)
        rec.note(now, what, detail)
        await self._save(rec)
        await self._release_handoffs(rec.agent, f"{rec.agent}: {detail}")

    async def _release_handoffs(self, target: str, detail: str) -> None:
        n = await self.store.call(release_waiting, target, HELD_PREFIX, self.clock(), detail)
        if n:
            log.info("%s: %d held handoffs released", target, n)
        self.wake()

    async def _save(self, rec: Record) -> None:
        self.records[rec.agent] = rec
        await self.store.run(self.store.set_meta, meta_key(rec.agent), msgspec.json.encode(rec).decode())

    def _now(self) -> str:
        return iso(self.clock()) or ""

    def _agents(self) -> dict[str, Agent]:
        return {f"agent.{name}": a for name, a in self.loaded().config.agent.items()}

    def _agent(self, agent: str) -> tuple[str, Agent]:
        target = agent if agent.startswith("agent.") else f"agent.{agent}"
        cfg = self._agents().get(target)
        if cfg is None:
            known = ", ".join(sorted(self._agents())) or "none"
            raise UnknownAgent(f"no agent {target} in the config", hint=f"agents: {known}")
        return target, cfg
