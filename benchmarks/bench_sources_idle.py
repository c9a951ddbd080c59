"""Idle cost of sources: CPU seconds per minute that sources of every type add to `watchd run`
while nothing happens.

Two daemons run side by side on the same machine for the same window (so load from elsewhere
falls on both): one without sources, one with a poll source (a URL on a local HTTP server, every
10 minutes), a file source (a folder and a glob under it), a journal source (the machine's
journalctl on a private journald where it can run one, else the recorded-output stand-in), a
telegram source (long polling a local Bot API) and a slack source (a Socket Mode WebSocket to a
local server). After a warm-up (first poll, first scan), the CPU time of each watchd process (not
its nats-server) is read over the window, and that of the journalctl it runs.

Prints CPU-s per minute of each and the difference (target: < 0.1 CPU-s/min added).

Usage: python benchmarks/bench_sources_idle.py [--idle-s 40]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_pipeline import free_port, proc_cpu_s
from support.fake_telegram import FakeTelegram
from support.journal import make_journal, real_journal_missing
from support.slack_socket import FakeSlackSocket


def children(pid: int, comm: str) -> list[int]:
    """The child processes of pid named comm (its nats-server is a child too)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return [c for c in found if Path(f"/proc/{c}/comm").read_text().strip() == comm]


def start(root: Path, extra: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], int]:
    root.mkdir(parents=True, exist_ok=True)
    http = free_port()
    (root / "config.toml").write_text(
        f'state_dir = "state"\n[nats]\nlisten = "127.0.0.1:{free_port()}"\n[http]\nlisten = "127.0.0.1:{http}"\n{extra}'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "watchd", "run", "--config", str(root / "config.toml")],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=open(root / "stderr", "wb"),  # noqa: SIM115 - the child keeps it
        env={**os.environ, **(env or {})},
    )
    return proc, http


def ready(http: int) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/healthz", timeout=2) as r:
            health: dict[str, object] = json.loads(r.read())
            return health if health.get("ok") else None
    except OSError:
        return None


def main(idle_s: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        site = root / "site"
        site.mkdir()
        (site / "page.html").write_text("<b>42</b>")
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(site)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        watched = root / "with" / "inbox"
        sources = (
            f'[source.page]\ntype = "poll"\nurl = "http://127.0.0.1:{port}/page.html"\nevery = "10m"\n'
            'css = "b"\nsubject = "site.page"\n'
            f'[source.inbox]\ntype = "file"\npaths = ["{watched}", "{root}/with/scans/**/*.pdf"]\n'
            'subject = "files.inbox"\n'
        )
        journal = make_journal("standin" if real_journal_missing() else "real", root / "journal")
        journal.write(MESSAGE="the journal's last entry before the window")
        tg = FakeTelegram(token="1:idle")
        slack = FakeSlackSocket(app_token="xapp-idle")
        tg_ctx, slack_ctx = tg.threaded(), slack.threaded()
        tg_ctx.__enter__()
        slack_ctx.__enter__()
        sources += (
            f'[source.units]\ntype = "journal"\ndirectory = "{journal.directory}"\n'
            f'[source.tg]\ntype = "telegram"\ntoken = "1:idle"\napi_base = "{tg.url}"\nchats = ["1"]\n'
            f'[source.sl]\ntype = "slack"\napp_token = "xapp-idle"\napi_base = "{slack.url}/api"\n'
        )
        plain, plain_http = start(root / "without", "")
        (root / "with" / "scans").mkdir(parents=True)
        watched.mkdir(parents=True)
        busy, busy_http = start(root / "with", sources, journal.env)
        try:
            deadline = time.time() + 60
            while not (ready(plain_http) and ready(busy_http)):
                if time.time() > deadline:
                    raise TimeoutError("daemons did not become ready")
                time.sleep(0.2)
            state = root / "with" / "state" / "sources"
            while not ((state / "page.json").exists() and (state / "inbox.json").exists()):
                time.sleep(0.2)
            while not ((state / "units.json").exists() and slack.live is not None and tg.polls):
                time.sleep(0.2)
            time.sleep(5)  # warm-up: the canary, the first heartbeat, imports
            helpers = children(busy.pid, "journalctl")
            cpu0 = proc_cpu_s(plain.pid), proc_cpu_s(busy.pid), sum(proc_cpu_s(p) for p in helpers)
            time.sleep(idle_s)
            cpu1 = proc_cpu_s(plain.pid), proc_cpu_s(busy.pid), sum(proc_cpu_s(p) for p in helpers)
            per_min = [(b - a) * 60 / idle_s for a, b in zip(cpu0, cpu1, strict=True)]
            print(f"idle window: {idle_s:.0f}s; journal: {journal.name}")
            print(f"watchd without sources: {per_min[0]:.3f} CPU-s/min")
            print(f"watchd with poll, file, journal, telegram and slack sources: {per_min[1]:.3f} CPU-s/min")
            print(f"  its children (journalctl): {per_min[2]:.3f} CPU-s/min")
            added = per_min[1] + per_min[2] - per_min[0]
            print(f"added by the sources: {added:+.3f} CPU-s/min (target < 0.1)")
            print(f"telegram long polls in the window and warm-up: {tg.polls}; slack sockets: {len(slack.connections)}")
        finally:
            for p in (plain, busy, server):
                p.terminate()
            for p in (plain, busy, server):
                p.wait(15)
            tg_ctx.__exit__(None, None, None)
            slack_ctx.__exit__(None, None, None)
            journal.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle-s", type=float, default=40)
    main(parser.parse_args().idle_s)
