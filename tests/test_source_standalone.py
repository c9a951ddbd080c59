"""`watchd source run NAME` on its own (as on another machine), publishing with the `publish`
role's URL into a running daemon's NATS; a second runner on the same state is refused."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from support.inprocess import InProcessDaemon
from support.project import stream_events
from support.waiting import until

from watchd import credentials


async def test_a_standalone_source_publishes_into_the_daemon(
    daemon_factory: Callable[..., InProcessDaemon], tmp_path: Path
) -> None:
    d = daemon_factory()
    await d.start()
    creds = credentials.load(d.state_dir)
    assert creds is not None
    url = creds.url(f"nats://127.0.0.1:{d.nats_port}", "publish")
    nas = tmp_path / "nas"
    (nas / "drop").mkdir(parents=True)
    (nas / "config.toml").write_text(
        '[source.drop]\ntype = "file"\npaths = ["drop/*.txt"]\nsubject = "nas.drop"\ndebounce = "50ms"\n'
    )
    argv = [sys.executable, "-m", "watchd", "source", "run", "drop", "--config", str(nas / "config.toml")]
    env = {k: v for k, v in os.environ.items() if k != "WATCHD_CONFIG"} | {"WATCHD_NATS_URL": url}
    runner = await asyncio.create_subprocess_exec(
        *argv, "--state", str(nas / "state"), env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        await until(lambda: (nas / "state" / "drop.json").exists(), what="the runner's first scan")
        second = await asyncio.create_subprocess_exec(
            *argv, "--state", str(nas / "state"), env=env, stderr=asyncio.subprocess.PIPE
        )
        _, err = await asyncio.wait_for(second.communicate(), 30)
        assert second.returncode == 1
        assert "source drop is already running on this state" in err.decode()
        (nas / "drop" / "report.txt").write_text("done")

        async def arrived() -> bool:
            return any(e["subject"] == "nas.drop" for e in await stream_events(d.nats_url))

        await until(arrived, what="the file's event in the daemon's stream")
        event = next(e for e in await stream_events(d.nats_url) if e["subject"] == "nas.drop")
        assert event["source"] == "drop" and event["data"]["path"] == str(nas / "drop" / "report.txt")
    finally:
        runner.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(runner.communicate(), 30)
    assert runner.returncode == 0, err.decode()
    assert "source drop stopped: 1 events published" in err.decode()
    assert url.split("@")[0] not in err.decode()  # the URL's credentials are never printed
