"""A recorded-output `journalctl` for machines without a systemd journal (put first on PATH as
`journalctl`; see support/journal.py).

It reads the journal from `<-D dir>/entries.jsonl` (one `journalctl -o json` line per entry, as
recorded from a real journal) and answers the subset of journalctl a source uses, with the same
meaning: `-o json`, `-n N`, `--no-tail`, `-f` (follows the file as it grows), `--cursor`, `--after-cursor`,
`-m`, `-u UNIT` (as journalctl: the unit's own processes, or PID 1 speaking about it),
`--user-unit UNIT` (the caller's user unit: its processes, or its user manager about it), `-p PRIO`
(that and more severe), and `FIELD=VALUE` matches (same field OR, different fields AND, `+` OR).
Like journalctl, it exits in follow mode once its reader has gone.

With `<dir>/generate.json` (`{"rate": 5000, "start": <unix time>, "unit": "bench.service"}`, and
optionally `"total": N`) the journal is instead a synthetic one in which entry i was written at start + i / rate: a
reader that restarts from a cursor continues the same sequence, and one that is slow falls behind.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import select
import sys
import time
from collections.abc import Iterator
from typing import Any

PRIORITIES = {"emerg": 0, "alert": 1, "crit": 2, "err": 3, "warning": 4, "notice": 5, "info": 6, "debug": 7}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="journalctl", add_help=False)
    p.add_argument("-o", "--output", default="short")
    p.add_argument("-n", "--lines", type=int, default=None)
    p.add_argument("--no-tail", action="store_true")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("--after-cursor")
    p.add_argument("-c", "--cursor")
    p.add_argument("-m", "--merge", action="store_true")
    p.add_argument("-a", "--all", action="store_true")
    p.add_argument("--no-pager", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("-D", "--directory")
    p.add_argument("-u", "--unit", action="append", default=[])
    p.add_argument("--user-unit", action="append", default=[])
    p.add_argument("-p", "--priority")
    p.add_argument("matches", nargs="*")
    return p.parse_args(argv)


def unit_name(name: str) -> str:
    return name if "." in name or "*" in name else name + ".service"


def matcher(args: argparse.Namespace) -> Any:
    units = [unit_name(u) for u in args.unit]
    user_units = [unit_name(u) for u in args.user_unit]
    uid = str(os.getuid())
    # FIELD=VALUE terms: the same field OR, different fields AND; "+" between groups is OR.
    groups: list[dict[str, set[str]]] = [{}]
    for m in args.matches:
        if m == "+":
            groups.append({})
            continue
        if "=" not in m:
            sys.exit(f'"{m}" is not a valid match')
        k, v = m.split("=", 1)
        groups[-1].setdefault(k, set()).add(v)
    prio: set[str] | None = None
    if args.priority:
        spec = args.priority
        lo, _, hi = spec.partition("..")
        top = PRIORITIES.get(lo) if not lo.isdigit() else int(lo)
        if top is None:
            sys.exit(f"Unknown log level {spec}")
        if hi:
            bottom = PRIORITIES.get(hi) if not hi.isdigit() else int(hi)
            prio = {str(i) for i in range(min(top, bottom or 0), max(top, bottom or 0) + 1)}
        else:
            prio = {str(i) for i in range(top + 1)}

    def ok(e: dict[str, Any]) -> bool:
        if units or user_units:
            own = any(fnmatch.fnmatch(str(e.get("_SYSTEMD_UNIT", "")), u) for u in units)
            pid1 = e.get("_PID") == "1" and any(fnmatch.fnmatch(str(e.get("UNIT", "")), u) for u in units)
            # --user-unit: the caller's own user units, or their manager speaking about one.
            mine = e.get("_UID") == uid
            user_own = mine and any(fnmatch.fnmatch(str(e.get("_SYSTEMD_USER_UNIT", "")), u) for u in user_units)
            manager = mine and any(fnmatch.fnmatch(str(e.get("USER_UNIT", "")), u) for u in user_units)
            if not (own or pid1 or user_own or manager):
                return False
        if prio is not None and e.get("PRIORITY") not in prio:
            return False
        return any(all(e.get(k) in vs for k, vs in g.items()) for g in groups)

    return ok


def recorded(path: str, follow: bool) -> Iterator[dict[str, Any]]:
    pos = 0
    buf = b""
    while True:
        try:
            with open(path, "rb") as f:
                f.seek(pos)
                chunk = f.read()
        except FileNotFoundError:
            chunk = b""
        pos += len(chunk)
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if line.strip():
                yield json.loads(line)
        if not follow:
            return
        yield {}  # a pause: the caller flushes
        time.sleep(0.02)


def generated(spec: dict[str, Any], first: int, follow: bool) -> Iterator[dict[str, Any]]:
    rate, start = float(spec["rate"]), float(spec["start"])
    unit = spec.get("unit", "bench.service")
    i = first
    total = int(spec.get("total", 0)) or None
    while True:
        if total is not None and i >= total:  # the journal stops growing
            if not follow:
                return
            yield {}
            time.sleep(0.05)
            continue
        due = start + i / rate
        now = time.time()
        if due > now:
            if not follow:
                return
            yield {}
            time.sleep(min(due - now, 0.05))
            continue
        usec = int(due * 1e6)
        yield {
            "__CURSOR": f"s=standin;i={i:x};b=standinboot;m={i:x};t={usec:x};x={i:x}",
            "__REALTIME_TIMESTAMP": str(usec),
            "_BOOT_ID": "standinboot",
            "_HOSTNAME": "standin",
            "_TRANSPORT": "stdout",
            "_SYSTEMD_UNIT": unit,
            "SYSLOG_IDENTIFIER": unit.split(".")[0],
            "PRIORITY": "6",
            "_PID": "4242",
            "MESSAGE": f"line {i}",
        }
        i += 1


def reader_gone() -> bool:
    """The pipe's reading end closed (journalctl polls stdout for it, so it ends with its reader)."""
    p = select.poll()
    p.register(sys.stdout.fileno(), 0)
    return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in p.poll(0))


def index_of(cursor: str) -> int:
    for part in cursor.split(";"):
        if part.startswith("i="):
            return int(part[2:], 16)
    return -1


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.output != "json":
        sys.exit("this journalctl stand-in speaks -o json only")
    directory = args.directory or os.environ.get("JOURNAL_STANDIN_DIR", "")
    if not directory or not os.path.isdir(directory):
        sys.exit("No journal files were found.")
    ok = matcher(args)
    gen_path = os.path.join(directory, "generate.json")
    generating = os.path.exists(gen_path)
    out = sys.stdout
    if generating:
        with open(gen_path) as f:
            spec = json.load(f)
        first = index_of(args.after_cursor) + 1 if args.after_cursor else 0
        first = index_of(args.cursor) if args.cursor else first
        if not (args.after_cursor or args.cursor) and args.lines is not None and not args.no_tail:
            first = max(0, int((time.time() - float(spec["start"])) * float(spec["rate"])) - args.lines)
        source = generated(spec, first, args.follow)
    else:
        source = recorded(os.path.join(directory, "entries.jsonl"), args.follow)
    if not generating and (args.after_cursor or args.cursor or (args.lines is not None and not args.no_tail)):
        # Position first over what is already there, as journalctl seeks before it follows.
        existing = list(recorded(os.path.join(directory, "entries.jsonl"), False))
        cursors = [e.get("__CURSOR") for e in existing]
        if args.after_cursor:
            skip = cursors.index(args.after_cursor) + 1 if args.after_cursor in cursors else 0
        elif args.cursor:
            skip = cursors.index(args.cursor) if args.cursor in cursors else 0
        else:
            shown = [i for i, e in enumerate(existing) if ok(e)]
            n = args.lines or 0
            skip = shown[-n] if 0 < n <= len(shown) else (len(existing) if n == 0 else 0)
        source = recorded(os.path.join(directory, "entries.jsonl"), args.follow)
        for _ in range(skip):
            next(source)
    try:
        for entry in source:
            if not entry:
                out.flush()
                if reader_gone():
                    return 0
                continue
            if ok(entry):
                out.write(json.dumps(entry, separators=(",", ":")) + "\n")
        out.flush()
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
