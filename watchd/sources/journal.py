"""The journal source: follows the systemd journal through `journalctl -f -o json` (a subprocess,
so no compiled binding), one event per entry, and `systemd.unit.failed` when a unit fails.

Position: the cursor of the last entry JetStream stored. It is persisted only after the ack (of
that entry and every one before it; while entries keep coming, at most every SAVE_EVERY_S), and a
restart resumes there (`--cursor`, dropping that entry itself), so kill -9 loses no entry, and an entry read again is
re-sent with its cursor as id and stored once. The first start has no cursor: it takes the
journal's newest entry as its starting point (and persists it), so entries written from then on
are announced, older ones are not, and an entry written while watchd is down is not lost.

Filters go to journalctl: `units` as `--unit` (a system unit's own processes, and PID 1 speaking
about it) and as `--user-unit` (a user unit of the user watchd runs as, and that user's service
manager speaking about it: journalctl matches only the caller's uid there), `priority` and `match`
as FIELD=VALUE terms. systemd's "Unit failed" entry (catalog id d9b373ed…, logged by PID 1 with
`UNIT=`, or by a user manager with `USER_UNIT=`, and `UNIT_RESULT=`) is let through whatever `priority`
and `match` say (journalctl's `+` adds it as an alternative), so a failure of a watched unit is
always announced; it becomes a journal event only when it passes them too.

`--merge` follows every journal file: without it `-f` implies the current boot only, and entries
after the cursor written before a reboot would be skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import msgspec

from watchd.errors import WatchdError
from watchd.limits import MAX_ID_CHARS
from watchd.sources.base import Emit, Source, SourceContext
from watchd.sources.settings import JournalSettings, SourceSettings, subject_of

PRIORITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
UNIT_FAILED_ID = "d9b373ed55a64feb8242e02dbe79a49c"  # systemd.catalog: "Unit failed"
FAILED_SUBJECT = "systemd.unit.failed"
TEMPLATE_FIELDS = ("unit", "identifier", "priority", "host")
_FIELD = re.compile(r"\{([^{}]*)\}")
_NOT_SUBJECT = re.compile(r"[^A-Za-z0-9_.-]+")
_READ_CHUNK = 1 << 20  # a backlog is read in large batches
_MAX_BATCH = 512  # entries published together
IN_FLIGHT = 4  # batches sent and not yet all acknowledged, while the next ones are read
SAVE_EVERY_S = 0.25  # while entries keep coming, the cursor is saved at most this often...
QUIET_S = 0.05  # ...and whenever journalctl has printed nothing for this long
_STDERR_TAIL = 400
SUBJECTS_KEPT = 4096  # rendered subjects remembered by the values they were made of


class JournalError(WatchdError):
    pass


def template_problem(template: str) -> str | None:
    """Why a subject template cannot be used, or None (for `validate`)."""
    for name in _FIELD.findall(template):
        if name not in TEMPLATE_FIELDS:
            fields = ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
            return f"unknown field {{{name}}} in the subject: a journal subject may use {fields}"
    if template.count("{") != template.count("}"):
        return "unbalanced { } in the subject"
    return None


def _token(value: str) -> str:
    """A value as subject tokens: dots kept (`journal.nginx.service`), other odd characters `_`."""
    cleaned = _NOT_SUBJECT.sub("_", value).strip(".")
    return re.sub(r"\.{2,}", ".", cleaned) or "unknown"


def _text(value: Any) -> str | None:
    """journalctl's JSON value as text: a string; a byte array (binary or non-UTF-8 data) decoded;
    the first of several values of one field; None for a value too large to show."""
    if type(value) is str:  # nearly always: first, and exactly (decoded JSON makes no subclasses)
        return value
    if isinstance(value, list) and value:
        if all(isinstance(b, int) for b in value):
            return bytes(b & 0xFF for b in value).decode("utf-8", errors="replace")
        return _text(value[0])
    return None


def unit_of(entry: dict[str, Any]) -> str | None:
    """The unit an entry is about: the one systemd speaks of (UNIT, USER_UNIT), else the sender's."""
    for key in ("UNIT", "USER_UNIT") if _from_systemd(entry) else ():
        if unit := _text(entry.get(key)):
            return unit
    return _text(entry.get("_SYSTEMD_USER_UNIT")) or _text(entry.get("_SYSTEMD_UNIT"))


def _from_systemd(entry: dict[str, Any]) -> bool:
    # PID 1 (the system manager) or a user manager; anyone else may write UNIT= into the journal.
    return _text(entry.get("_PID")) == "1" or (
        _text(entry.get("_COMM")) == "systemd" and bool(_text(entry.get("USER_UNIT")))
    )


def event_id(cursor: str) -> str:
    """The cursor, which names the entry; hashed when longer than an event id may be."""
    if len(cursor) <= MAX_ID_CHARS:
        return cursor
    return "journal-" + hashlib.sha256(cursor.encode()).hexdigest()


class JournalSource(Source):
    type_name: ClassVar[str] = "journal"

    def __init__(self, name: str, settings: SourceSettings) -> None:
        super().__init__(name, settings)
        assert isinstance(settings, JournalSettings)
        self.cfg = settings
        self.subject = subject_of(settings) or "journal.{unit}"
        problem = template_problem(self.subject)
        if problem:
            raise WatchdError(f"source {name}: {problem}")
        self.max_priority = PRIORITIES.index(settings.priority) if settings.priority else None
        self._used = tuple(_FIELD.findall(self.subject))  # the fields the subject is made of
        self._subjects: dict[tuple[str, ...], str] = {}  # their values -> the subject (few: units, hosts)
        self.directory = settings.directory  # resolved against the config's folder when run

    # -- the journalctl command line --

    def base_args(self) -> list[str]:
        args = ["journalctl", "--output=json", "--all", "--no-pager", "--quiet", "--merge"]
        if self.directory:
            args.append(f"--directory={self.directory}")
        return args

    def filter_args(self) -> list[str]:
        args = [f"--unit={u}" for u in self.cfg.units] + [f"--user-unit={u}" for u in self.cfg.units]
        terms = [f"PRIORITY={p}" for p in range(self.max_priority + 1)] if self.max_priority is not None else []
        terms += [f"{k}={v}" for k, v in self.cfg.match.items()]
        if terms:
            args += [*terms, "+", f"MESSAGE_ID={UNIT_FAILED_ID}"]
        return args

    def follow_args(self, cursor: str | None) -> list[str]:
        # --cursor, not --after-cursor: with matches, journalctl 252's --after-cursor skips two
        # entries from the cursor, so when the cursor's entry does not match (the filters changed,
        # or the first start's cursor), the first matching entry after it is lost. From the cursor
        # itself, its entry is printed when it matches, and `run` drops it.
        start = [f"--cursor={cursor}"] if cursor else []
        return [*self.base_args(), "--follow", "--no-tail", *start, *self.filter_args()]

    # -- entries to events --

    def passes(self, entry: dict[str, Any]) -> bool:
        """Does the entry pass `priority` and `match` (journalctl let a failure through regardless)?"""
        if self.max_priority is not None:
            prio = _text(entry.get("PRIORITY"))
            if prio is None or not prio.isdigit() or int(prio) > self.max_priority:
                return False
        return all(_text(entry.get(k)) == v for k, v in self.cfg.match.items())

    def render_subject(self, entry: dict[str, Any], unit: str | None) -> str:
        key = tuple(self._value(name, entry, unit) for name in self._used)
        subject = self._subjects.get(key)
        if subject is None:
            values = dict(zip(self._used, key, strict=True))
            subject = _FIELD.sub(lambda m: _token(values[m.group(1)]), self.subject)
            if len(self._subjects) >= SUBJECTS_KEPT:
                self._subjects.clear()
            self._subjects[key] = subject
        return subject

    def _value(self, name: str, entry: dict[str, Any], unit: str | None) -> str:
        if name == "unit":
            return unit or "unknown"
        if name == "identifier":
            return _text(entry.get("SYSLOG_IDENTIFIER")) or "unknown"
        if name == "priority":
            return self._priority_name(entry)
        return _text(entry.get("_HOSTNAME")) or "unknown"

    @staticmethod
    def _priority_name(entry: dict[str, Any]) -> str:
        prio = _text(entry.get("PRIORITY"))
        return PRIORITIES[int(prio)] if prio and prio.isdigit() and int(prio) < len(PRIORITIES) else "unknown"

    def emits_for(self, entry: dict[str, Any]) -> list[Emit]:
        cursor = _text(entry.get("__CURSOR"))
        if not cursor:
            return []
        unit = unit_of(entry)
        usec = _text(entry.get("__REALTIME_TIMESTAMP"))
        time_s = int(usec) / 1e6 if usec and usec.isdigit() else None
        prio = _text(entry.get("PRIORITY"))
        pid = _text(entry.get("_PID"))
        base = {
            "message": _text(entry.get("MESSAGE")),
            "unit": unit,
            "host": _text(entry.get("_HOSTNAME")),
            "cursor": cursor,
        }
        out: list[Emit] = []
        if self.passes(entry):
            data = {
                **base,
                "priority": int(prio) if prio and prio.isdigit() else None,
                "identifier": _text(entry.get("SYSLOG_IDENTIFIER")),
                "pid": int(pid) if pid and pid.isdigit() else None,
                "boot_id": _text(entry.get("_BOOT_ID")),
                # Every field but the journal's own addresses (__CURSOR, timestamps), for `where`.
                "fields": {k: v if type(v) is str else _text(v) for k, v in entry.items() if k[:2] != "__"},
            }
            out.append(Emit(self.render_subject(entry, unit), data, event_id(cursor), time_s, flat=True))
        if _text(entry.get("MESSAGE_ID")) == UNIT_FAILED_ID and _from_systemd(entry) and unit:
            failed = {
                **base,
                "result": _text(entry.get("UNIT_RESULT")),
                "invocation_id": _text(entry.get("INVOCATION_ID")),
                "user_unit": not _text(entry.get("UNIT")),
            }
            out.append(Emit(FAILED_SUBJECT, failed, event_id("failed:" + cursor), time_s, flat=True))
        return out

    def parse(
        self, lines: Sequence[bytes], ctx: SourceContext, skip: str | None = None
    ) -> tuple[list[Emit], str | None]:
        """The events of some journalctl output lines, and the cursor of the last entry among them;
        the entry whose cursor is `skip` (the one resumed from) was published before."""
        emits: list[Emit] = []
        cursor: str | None = None
        for line in lines:
            if not line.strip():
                continue
            try:
                entry = msgspec.json.decode(line)
            except msgspec.DecodeError:
                ctx.health.rejected("json", "journalctl printed a line that is not JSON", ctx.clock())
                continue
            if not isinstance(entry, dict):
                continue
            if skip is not None and _text(entry.get("__CURSOR")) == skip:
                continue
            emits += self.emits_for(entry)
            cursor = _text(entry.get("__CURSOR")) or cursor
        return emits, cursor

    # -- running --

    async def _spawn(self, args: list[str]) -> asyncio.subprocess.Process:
        try:
            return await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except FileNotFoundError:
            raise JournalError(
                f"source {self.name}: journalctl is not installed or not on PATH",
                hint="the journal source runs systemd's journalctl; install systemd or run the source "
                "on a machine that has it (watchd source run NAME --nats URL)",
            ) from None

    async def newest_cursor(self) -> str | None:
        """The cursor of the journal's newest entry (any unit), where a first start begins."""
        proc = await self._spawn([*self.base_args(), "--lines=1"])
        out, err = await proc.communicate()
        if proc.returncode:
            raise self._failure(proc.returncode, err)
        cursor: str | None = None
        for line in out.splitlines():
            with contextlib.suppress(msgspec.DecodeError):
                entry = msgspec.json.decode(line)
                if isinstance(entry, dict):
                    cursor = _text(entry.get("__CURSOR")) or cursor
        return cursor

    def _failure(self, code: int, stderr: bytes) -> JournalError:
        said = stderr.decode(errors="replace").strip().splitlines()
        last = said[-1][:_STDERR_TAIL] if said else "no message"
        where = f" in {self.directory}" if self.directory else ""
        return JournalError(
            f"source {self.name}: journalctl{where} exited with {code}: {last}",
            hint="run the same journalctl yourself to see why (permissions: add the user to the systemd-journal group)",
        )

    async def once(self, ctx: SourceContext) -> None:
        """`watchd source test`: the entries since the saved cursor (or the newest few), no follow."""
        self._resolve_directory(ctx)
        cursor = ctx.position.get("cursor")
        start = [f"--cursor={cursor}"] if isinstance(cursor, str) and cursor else ["--lines=10"]
        proc = await self._spawn([*self.base_args(), *start, *self.filter_args()])
        out, err = await proc.communicate()
        if proc.returncode:
            raise self._failure(proc.returncode, err)
        emits, last = self.parse(out.splitlines(), ctx, skip=cursor if isinstance(cursor, str) else None)
        await ctx.emit(emits, {"cursor": last} if last else None)

    def _resolve_directory(self, ctx: SourceContext) -> None:
        if self.cfg.directory:
            self.directory = str(ctx.base_dir / Path(self.cfg.directory).expanduser())

    async def run(self, ctx: SourceContext) -> None:
        self._resolve_directory(ctx)
        cursor = ctx.position.get("cursor")
        if not isinstance(cursor, str) or not cursor:
            cursor = await self.newest_cursor()
            if cursor:
                await ctx.save({"cursor": cursor})
        resumed = cursor
        proc = await self._spawn(self.follow_args(cursor))
        assert proc.stdout is not None and proc.stderr is not None
        stderr_task = asyncio.create_task(proc.stderr.read())
        stop_task = asyncio.create_task(ctx.stop.wait())
        stored = InFlight(ctx)
        read: asyncio.Task[bytes] | None = None
        rest = b""
        try:
            while True:
                read = asyncio.create_task(proc.stdout.read(_READ_CHUNK))
                waiting: set[asyncio.Future[Any]] = {read, stop_task}
                done: set[asyncio.Future[Any]] = set()
                if stored.unfinished():
                    done, _ = await asyncio.wait(waiting, timeout=QUIET_S, return_when=asyncio.FIRST_COMPLETED)
                    if not done:  # journalctl went quiet: finish storing, save the cursor
                        await stored.finish()
                if not done:
                    done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if read not in done:
                    await stored.finish()  # what was read is stored and its cursor saved
                    return
                chunk = read.result()
                if not chunk:
                    break
                *lines, rest = (rest + chunk).split(b"\n")
                for start in range(0, len(lines), _MAX_BATCH):
                    emits, last = self.parse(lines[start : start + _MAX_BATCH], ctx, skip=cursor)
                    if last is not None:
                        await stored.add(emits, last)
                        cursor = None  # only the first entry can be the one resumed from
            await stored.finish()
            code = await proc.wait()
            err = await stderr_task
            if resumed and b"seek to cursor" in err:
                # A cursor journalctl cannot parse (a valid one always seeks, to the nearest entry
                # if its own is gone): following it would fail forever, so start again at the newest.
                await ctx.save({})
                raise JournalError(
                    f"source {self.name}: journalctl cannot use the saved cursor; starting again at the newest entry",
                    hint=f"the position file of source {self.name} was damaged or written by hand",
                )
            raise self._failure(code, err)
        finally:
            stop_task.cancel()
            if read is not None:
                read.cancel()
            await stored.abandon()
            await _end(proc)
            stderr_task.cancel()


class InFlight:
    """The journal's batches being stored, oldest first: the next ones are read and sent while
    earlier ones await their acks. A cursor is saved only once its batch and every one before it
    were stored, at most every SAVE_EVERY_S while entries keep coming (an fsynced file each time:
    per batch it cost as much as the batch), and on `finish`. A crash re-sends what was stored
    after the saved cursor; the entries' ids make the stream keep one copy."""

    def __init__(self, ctx: SourceContext) -> None:
        self.ctx = ctx
        self.batches: deque[tuple[asyncio.Task[None], str]] = deque()
        self.acked: str | None = None  # the cursor of the newest batch stored with all before it
        self.saved: str | None = None
        self.saved_at = time.monotonic()

    def unfinished(self) -> bool:
        return bool(self.batches) or self.acked != self.saved

    async def add(self, emits: list[Emit], cursor: str) -> None:
        self.batches.append((asyncio.create_task(self.ctx.emit(emits)), cursor))
        await self._settle(IN_FLIGHT)
        if self.acked != self.saved and time.monotonic() - self.saved_at >= SAVE_EVERY_S:
            await self._save()

    async def finish(self) -> None:
        """Wait until every batch is stored; save the newest cursor. Raises what a publish raised."""
        await self._settle(0)
        if self.acked != self.saved:
            await self._save()

    async def abandon(self) -> None:
        """Stop waiting for batches (the run ends with an error): their cursors are not saved."""
        for task, _cursor in self.batches:
            task.cancel()
        await asyncio.gather(*(task for task, _cursor in self.batches), return_exceptions=True)
        self.batches.clear()

    async def _settle(self, keep: int) -> None:
        """Take the stored batches off the front, waiting while more than `keep` are unstored."""
        while self.batches and (len(self.batches) > keep or self.batches[0][0].done()):
            task, cursor = self.batches[0]
            await task  # NatsUnavailable: nothing after the last stored cursor is saved
            self.batches.popleft()
            self.acked = cursor

    async def _save(self) -> None:
        assert self.acked is not None
        await self.ctx.save({"cursor": self.acked})
        self.saved, self.saved_at = self.acked, time.monotonic()


async def _end(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), 5)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
