"""The poll source: fetch a URL or run a command every `every`, and announce what changed.

What is compared is the whole body, or what `select` (CEL over the JSON body), `css` (over the
HTML) or `regex` (over the text) picks out of it. With `emit = "change"` (the default) an event
goes out when that value differs from the last one seen, with `previous` and `current`; the first
poll ever only records the value (as changedetection.io does), so starting watchd does not
announce every page it polls. `emit = "always"` announces every poll. A poll that fails (an error
status, a timeout, a command's non-zero exit, a body the setting cannot read) is an event on
`<subject>.failed`, so a watch can catch an outage.

The position holds the last value (its hash, and the value as shown), the number of changes, the
validators a server offered (ETag, Last-Modified: the next request is conditional), and the
instant the next poll is due. Event ids are deterministic (SPEC 8): a change is
hash(source, change number, value), and an `always` or `failed` event hash(source, the poll's due
instant), so a poll re-done after a crash re-sends the same ids and the stream keeps one of each.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import msgspec

from watchd.errors import WatchdError
from watchd.model import iso, stable_hash
from watchd.sources.base import Emit, Position, Source, SourceContext
from watchd.sources.extract import ExtractError, extract
from watchd.sources.settings import PollSettings

MAX_BODY_BYTES = 10 * 1024 * 1024  # a page bigger than this is cut here (and says so)
MAX_SHOWN_CHARS = 4096  # `previous` and `current` are cut here in events and the position
MAX_STDERR_CHARS = 300
USER_AGENT = "watchd-poll/0.1"


@dataclass
class Fetched:
    body: bytes
    status: int | None  # HTTP status; None for a command
    exit_code: int | None  # a command's; None for a URL
    not_modified: bool = False
    etag: str | None = None
    last_modified: str | None = None


class PollFailed(Exception):
    """A poll that produced no value: the message says why, without the URL or a secret."""

    def __init__(self, message: str, status: int | None = None, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.exit_code = exit_code


def shown(value: Any) -> tuple[Any, bool]:
    """A value as an event carries it: text cut at MAX_SHOWN_CHARS (and whether it was cut)."""
    if isinstance(value, str) and len(value) > MAX_SHOWN_CHARS:
        return value[:MAX_SHOWN_CHARS], True
    if not isinstance(value, str):
        text = msgspec.json.encode(value)
        if len(text) > MAX_SHOWN_CHARS:
            return text[:MAX_SHOWN_CHARS].decode("utf-8", "ignore"), True
    return value, False


def value_hash(value: Any) -> str:
    raw = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else msgspec.json.encode(value)
    return hashlib.sha256(raw).hexdigest()


class PollSource(Source):
    type_name: ClassVar[str] = "poll"
    settings: PollSettings

    def __init__(self, name: str, settings: Any) -> None:
        assert isinstance(settings, PollSettings)
        super().__init__(name, settings)
        from watchd.cron.schedule import parse_duration

        self.every_s = parse_duration(settings.every)
        self.timeout_s = parse_duration(settings.timeout)
        self.subject = settings.subject or f"{name}.changed"
        self._session: Any = None
        self._url: str | None = None
        self._headers: dict[str, str] = {}

    # ---- the loop ----

    async def run(self, ctx: SourceContext) -> None:
        try:
            while not ctx.stop.is_set():
                due = float(ctx.position.get("next_at") or ctx.clock())
                if await ctx.sleep_until(due):
                    return
                await self.poll(ctx, due)
        finally:
            await self.close()

    async def once(self, ctx: SourceContext) -> None:
        try:
            await self.poll(ctx, ctx.clock())
        finally:
            await self.close()

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def poll(self, ctx: SourceContext, due: float) -> None:
        """One poll for the slot due at `due`; its events published, then the position saved."""
        position = dict(ctx.position)
        now = ctx.clock()
        # The next slot after now: a daemon that was down skips what it missed (one poll, not a burst).
        position["next_at"] = due + self.every_s * max(1, int((now - due) // self.every_s) + 1)
        started = time.monotonic()
        try:
            fetched = await self.fetch(position)
            latency_ms = round((time.monotonic() - started) * 1000, 1)
            value = None if fetched.not_modified else self.extract(fetched.body)
        except PollFailed as exc:
            latency_ms = round((time.monotonic() - started) * 1000, 1)
            await self.failed(ctx, position, due, exc, latency_ms)
            return
        position.pop("failures", None)
        if fetched.etag or fetched.last_modified:
            position["etag"], position["last_modified"] = fetched.etag, fetched.last_modified
        base: dict[str, Any] = {**self.target(), "status": fetched.status, "latency_ms": latency_ms}
        if fetched.exit_code is not None:
            base["exit_code"] = fetched.exit_code
        if fetched.not_modified:
            emits = self.always(position, base, due, changed=False) if self.settings.emit == "always" else []
            await ctx.emit(emits, position)
            return
        digest = value_hash(value)
        previous = position.get("value") if "hash" in position else None
        changed = "hash" in position and position["hash"] != digest
        first = "hash" not in position
        current, cut = shown(value)
        emits = []
        if changed:
            position["changes"] = int(position.get("changes", 0)) + 1
        position["hash"], position["value"] = digest, current
        if self.settings.emit == "always":
            emits = self.always(position, base, due, changed=changed, previous=previous, first=first)
        elif changed:
            data = {**base, "previous": previous, "current": current}
            if cut:
                data["truncated"] = True
            # SPEC 8's id, hash(source, selected value), with the change's number: the stream keeps
            # an id for two days, so a value that comes back (1 → 2 → 1 → 2) would otherwise be
            # dropped as a duplicate. A re-send after a crash has the same number: stored once.
            emits = [Emit(self.subject, data, stable_hash("poll", self.name, position["changes"], digest))]
        elif first:
            ctx.log.info("source %s: first poll, value recorded (changes from here are announced)", self.name)
        await ctx.emit(emits, position)

    def always(
        self,
        position: Position,
        base: dict[str, Any],
        due: float,
        *,
        changed: bool,
        previous: Any = None,
        first: bool = False,
    ) -> list[Emit]:
        data = {**base, "changed": changed, "previous": previous if not first else None, "current": position["value"]}
        return [Emit(self.subject, data, stable_hash("poll", self.name, "always", repr(due)))]

    async def failed(self, ctx: SourceContext, position: Position, due: float, exc: PollFailed, ms: float) -> None:
        position["failures"] = int(position.get("failures", 0)) + 1
        ctx.health.failed(exc.message, ctx.clock())
        ctx.log.warning("source %s: poll failed: %s", self.name, exc.message)
        data: dict[str, Any] = {**self.target(), "error": exc.message, "failures": position["failures"]}
        data["latency_ms"] = ms
        if exc.status is not None:
            data["status"] = exc.status
        if exc.exit_code is not None:
            data["exit_code"] = exc.exit_code
        data["due"] = iso(due)
        event_id = stable_hash("poll", self.name, "failed", repr(due))
        await ctx.emit([Emit(self.subject + ".failed", data, event_id)], position)

    def target(self) -> dict[str, Any]:
        """What was polled, as events show it: the URL's host and path (never its query or
        credentials, which may be secrets), or the command's program."""
        if self.settings.command is not None:
            return {"command": self.settings.command[0]}
        from yarl import URL

        try:
            u = URL(self._url or "")
            return {"url": str(u.with_user(None).with_query(None).with_fragment(None))}
        except (ValueError, TypeError):
            return {"url": "?"}

    def extract(self, body: bytes) -> Any:
        s = self.settings
        try:
            return extract(body, select=s.select, css=s.css, regex=s.regex)
        except ExtractError as exc:
            raise PollFailed(str(exc)) from None

    # ---- fetching ----

    async def fetch(self, position: Position) -> Fetched:
        if self.settings.command is not None:
            return await self.run_command()
        return await self.get(position)

    def _prepare(self) -> None:
        from watchd.config import resolve_secret

        if self._url is None:
            try:
                self._url = resolve_secret(self.settings.url) or ""
                self._headers = {k: resolve_secret(v) or "" for k, v in self.settings.headers.items()}
            except WatchdError as exc:
                raise WatchdError(f"source {self.name}: {exc.message}", hint=exc.hint) from None

    async def get(self, position: Position) -> Fetched:
        import aiohttp

        self._prepare()
        assert self._url is not None
        if self._session is None:
            self._session = aiohttp.ClientSession(headers={"User-Agent": USER_AGENT}, trust_env=True)
        headers = dict(self._headers)
        # Conditional request: the server answers 304 without a body when nothing changed.
        if position.get("etag"):
            headers["If-None-Match"] = position["etag"]
        if position.get("last_modified"):
            headers["If-Modified-Since"] = position["last_modified"]
        host = self.target()["url"]
        try:
            async with self._session.request(
                self.settings.method, self._url, headers=headers, timeout=aiohttp.ClientTimeout(total=self.timeout_s)
            ) as resp:
                body = await resp.content.read(MAX_BODY_BYTES)
                status = resp.status
                etag, modified = resp.headers.get("ETag"), resp.headers.get("Last-Modified")
        except TimeoutError:
            raise PollFailed(f"{host} did not answer within {self.timeout_s:g}s") from None
        except aiohttp.ClientConnectorError as exc:
            raise PollFailed(f"cannot connect to {host} ({type(exc.os_error).__name__})") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            # The exception's text may hold the URL (and a token in it): only its type is shown.
            raise PollFailed(f"request to {host} failed ({type(exc).__name__})") from None
        if status == 304:
            return Fetched(b"", status, None, not_modified=True, etag=etag, last_modified=modified)
        if status >= 400:
            raise PollFailed(f"{host} answered HTTP {status}", status=status)
        return Fetched(body, status, None, etag=etag, last_modified=modified)

    async def run_command(self) -> Fetched:
        argv = list(self.settings.command or [])
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # a timeout kills it, not our terminal's process group
            )
        except OSError as exc:
            raise PollFailed(f"cannot run {argv[0]!r}: {exc.strerror}") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise PollFailed(f"{argv[0]} did not finish within {self.timeout_s:g}s") from None
        code = proc.returncode if proc.returncode is not None else -1
        if code != 0:
            tail = err.decode("utf-8", "replace").strip()[-MAX_STDERR_CHARS:]
            raise PollFailed(f"{argv[0]} exited {code}" + (f": {tail}" if tail else ""), exit_code=code)
        return Fetched(out[:MAX_BODY_BYTES], None, 0)
